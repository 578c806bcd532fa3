"""One input row -> one checked request, with the HTTP API's validation and error messages.

A row is an image request body (``prompt`` required; every other field of
``POST /v1/images/generations`` optional) plus an optional ``id``. Nulls are dropped first, so a
column that only some rows fill is an unknown field only in those rows. Each row becomes a
``(request_id, body, error)`` triple of plain types, so it travels through Ray Data as columns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ray_dit.api import GenerationRequest
from ray_dit.config import ServeLimits
from ray_dit.serve.errors import ApiError
from ray_dit.serve.schemas import ImageGenerationBody, image_request, parse_body
from ray_dit.serve.types import ModelInfo
from ray_dit.sink.keys import REQUEST_ID_RE

ID_COLUMN = "id"
# Fields the job decides, not the row: where outputs go and how they are returned.
_JOB_FIELDS = ("response_format",)


@dataclass(frozen=True)
class Checked:
    """A checked row: ``body`` is JSON of the request fields; ``error`` is None when usable."""

    request_id: str
    row_id: str
    body: str
    error: str | None


def _plain(value: Any) -> Any:
    """A Parquet/CSV/JSON cell as the JSON value a client would have sent."""
    if hasattr(value, "item") and not isinstance(value, list | dict):
        value = value.item()  # a numpy scalar
    if isinstance(value, float) and value.is_integer():
        # Readers turn an int column with gaps into doubles (2 -> 2.0); 2.5 stays and is refused.
        return int(value)
    return value


def content_id(fields: dict[str, Any]) -> str:
    """A stable id from a row's content: the same row always gets the same outputs' keys."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return "r" + hashlib.sha256(text.encode()).hexdigest()[:31]


def row_fields(row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(the row's ``id`` or None, its non-null request fields)."""
    fields = {k: _plain(v) for k, v in row.items() if v is not None and k != ID_COLUMN}
    params = fields.get("cache_dit_params")
    if isinstance(params, str):
        with contextlib.suppress(json.JSONDecodeError):  # else left as text: the check names it
            fields["cache_dit_params"] = json.loads(params)
    given = row.get(ID_COLUMN)
    return (None if given is None else str(_plain(given))), fields


def _shown(fields: dict[str, Any]) -> str:
    """A bad row's fields for the errors table (whatever their types)."""
    return json.dumps(fields, sort_keys=True, default=str)


def check_row(row: dict[str, Any], limits: ServeLimits, info: ModelInfo | None, model: str) -> Checked:
    """Validate one row as the API validates a body; never raises for bad content."""
    given, fields = row_fields(row)
    request_id = content_id(fields) if given is None else given
    row_id = request_id
    if given is not None and not REQUEST_ID_RE.fullmatch(given):
        error = "id: must match [A-Za-z0-9_-]{1,128}"
        return Checked(content_id({"id": given}), given, _shown(fields), error)
    for name in _JOB_FIELDS:
        fields.pop(name, None)
    try:
        if fields.get("model") not in (None, model):
            raise ApiError(400, f"model={fields['model']!r}: this job runs model {model!r}")
        body = parse_body(ImageGenerationBody, fields)
        image_request(body, request_id, limits, info)
    except ApiError as exc:
        return Checked(request_id, row_id, _shown(fields), exc.message)
    fields.setdefault("seed", row_seed(request_id))
    return Checked(request_id, row_id, json.dumps(fields, sort_keys=True), None)


def row_seed(request_id: str) -> int:
    """The seed of a row that gives none, from its id: a row redone by a re-run (its output lost)
    draws the same image, and a seedless row is reproducible from the manifest's ``input``."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % 2**31


def to_request(request_id: str, body: str, limits: ServeLimits, info: ModelInfo | None) -> GenerationRequest:
    """The engine's request from a checked row (checked again: cheap, and the one code path)."""
    return image_request(parse_body(ImageGenerationBody, json.loads(body)), request_id, limits, info)
