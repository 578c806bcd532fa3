"""Form bodies: multipart (the openai SDK's uploads) and urlencoded, read within a byte limit into
JSON-shaped fields plus the uploaded files.

A multipart body may carry an input image (``POST /v1/images/edits``, ``input_reference`` on
``POST /v1/videos``), so its limit is ``RAY_DIT_MAX_UPLOAD_BYTES``, not the JSON bodies' one.
"""

from __future__ import annotations

import itertools
from typing import Any

from fastapi import Request

from ray_dit.config import ServeLimits
from ray_dit.serve.errors import ApiError, invalid
from ray_dit.serve.http import read_body
from ray_dit.serve.schemas import FormFields


async def read_form(request: Request, limits: ServeLimits) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(fields, files): the form's text fields as :func:`form_to_dict` shapes them, and each
    uploaded file's bytes by field name (``image[]`` is ``image``; one file per field)."""
    await read_body(request, limits.max_upload_bytes, "RAY_DIT_MAX_UPLOAD_BYTES")
    try:
        form = await request.form()
    except Exception:
        raise ApiError(400, "invalid form body", code="invalid_json") from None
    fields: list[tuple[str, Any]] = []
    files: dict[str, bytes] = {}
    for key, value in form.multi_items():
        if not hasattr(value, "filename"):
            fields.append((key, value))
            continue
        name = key.split("[", 1)[0]
        if name in files:
            raise invalid(name, f"{name}: one file only (several input images are not supported)")
        files[name] = await value.read()
    return form_to_dict(fields), files


def form_to_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """A multipart form as the openai SDK flattens it (``a[b]=1``, ``a[]=1``) back into JSON.

    A field given both as a value and as an object or list (``a=1&a[b]=2``) is a 400 naming it.
    """
    data: dict[str, Any] = FormFields()  # its leaves are text: parse_body reads numbers from it
    for key, value in items:
        name = key.split("[", 1)[0]
        parts = key.replace("]", "").split("[")
        node: Any = data
        for part, following in itertools.pairwise(parts):
            node = _form_child(node, part, [] if following == "" else {}, name)
        if isinstance(node, list):
            node.append(value)
        elif isinstance(node.get(parts[-1]), dict | list):
            raise _form_conflict(name)
        else:
            node[parts[-1]] = value
    return data


def _form_child(node: Any, part: str, empty: dict | list, name: str) -> Any:
    child = node.setdefault(part, empty) if isinstance(node, dict) else None  # lists hold values
    if not isinstance(child, type(empty)):
        raise _form_conflict(name)
    return child


def _form_conflict(name: str) -> ApiError:
    return invalid(name, f"{name}: a form field given both as a value and as an object or list")
