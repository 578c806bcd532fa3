"""Object keys and spool names, built by the server only: no client input reaches a key or a
path. Every part is still checked against an allowlist here, so a bug elsewhere cannot turn into
a path traversal or an overwrite of someone else's object."""

from __future__ import annotations

import re
from datetime import datetime, timezone

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}_\d{1,4}")  # {request_id}_{index}: a spool/store file stem
PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
EXTENSIONS = ("png", "jpg", "webp", "mp4")
MAX_INDEX = 9999
MAX_KEY_BYTES = 1024


def check_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
        raise ValueError("request_id: must match [A-Za-z0-9_-]{1,128} (server-generated ids only)")
    return request_id


def check_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index: must be an integer 0-{MAX_INDEX}")
    return index


def check_extension(extension: str) -> str:
    if extension not in EXTENSIONS:
        raise ValueError(f"extension={extension!r}: must be one of {'/'.join(EXTENSIONS)}")
    return extension


def check_prefix(prefix: str) -> str:
    """'a/b/c': segments from the allowlist, no '.', '..', empty segments or leading '/'."""
    parts = prefix.split("/") if isinstance(prefix, str) else [""]
    for part in parts:
        if not PREFIX_SEGMENT_RE.fullmatch(part) or part in (".", ".."):
            raise ValueError(
                "key prefix: must be '/'-separated segments of letters, digits, '.', '_' and '-'"
            )
    return prefix


def entry_name(request_id: str, index: int) -> str:
    """``{request_id}_{index}``: the spool's and the key's file stem for one output."""
    return f"{check_request_id(request_id)}_{check_index(index)}"


def build_key(prefix: str, request_id: str, index: int, extension: str, when: datetime | None = None) -> str:
    """``{prefix}/{yyyy}/{mm}/{dd}/{request_id}_{index}.{ext}`` with the UTC date of ``when`` (now)."""
    moment = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    key = (
        f"{check_prefix(prefix)}/{moment:%Y/%m/%d}/"
        f"{entry_name(request_id, index)}.{check_extension(extension)}"
    )
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"key: longer than {MAX_KEY_BYTES} bytes")
    return key


_KEY_TAIL_RE = re.compile(rf"\d{{4}}/\d{{2}}/\d{{2}}/({NAME_RE.pattern})\.({'|'.join(EXTENSIONS)})")


def split_key(key: str) -> tuple[str, str]:
    """Re-validate a whole output key (e.g. one read back from a spool record) and split it:
    ``{prefix}/{yyyy}/{mm}/{dd}/{request_id}_{index}.{ext}`` -> (``{request_id}_{index}``, ``ext``)."""
    parts = key.split("/") if isinstance(key, str) and len(key.encode()) <= MAX_KEY_BYTES else []
    match = _KEY_TAIL_RE.fullmatch("/".join(parts[-4:])) if len(parts) >= 5 else None
    if match is None:
        raise ValueError(
            "key: must be {prefix}/{yyyy}/{mm}/{dd}/{request_id}_{index}.{ext}, at most 1024 bytes"
        )
    check_prefix("/".join(parts[:-4]))
    return match.group(1), match.group(2)


def own_key(key: str, prefix: str, name: str) -> str:
    """``key`` if it names output ``name`` under this deployment's ``prefix`` and layout, else
    ValueError: a client hands the key back (``?key=``), and two deployments may share a bucket
    under different prefixes, so the file name alone must not let one read the other's outputs."""
    if split_key(key)[0] != name or key.split("/")[:-4] != prefix.split("/"):
        raise ValueError("key: does not belong to this request_id, index and key prefix")
    return key


def check_key(key: str) -> str:
    """``key`` if it is a valid output key, else ValueError."""
    split_key(key)
    return key


def manifest_key(prefix: str, part_name: str) -> str:
    if not re.fullmatch(r"part-[A-Za-z0-9_-]{1,200}\.parquet", part_name):
        raise ValueError(f"part_name={part_name!r}: must be part-<id>.parquet")
    return f"{check_prefix(prefix)}/manifest/{part_name}"
