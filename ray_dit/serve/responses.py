"""What the ingress answers: OpenAI's response bodies plus ray_dit's extras, and notebook outputs.

The timings of a request are finished here, in one place: the replicas filled their own fields
of the :class:`~ray_dit.api.Timings` that travelled with the result, and the ingress adds its
own (its wait in Serve's queue, and the whole request).
"""

from __future__ import annotations

import base64
import dataclasses
import time
from urllib.parse import urlencode

from ray_dit.api import StoredOutput
from ray_dit.serve.generation import Generation
from ray_dit.serve.signing import UrlSigner
from ray_dit.serve.types import GenerationOutput, StoreReply


def final_timings(reply: StoreReply, generation: Generation, started: float) -> dict[str, float]:
    """The request's timings with the ingress's part: ``started`` is its ``perf_counter()``."""
    timings = reply.meta.timings
    return dataclasses.replace(
        timings,
        queue_s=timings.queue_s + generation.routing_wait_s,
        url_wait_s=generation.url_wait_s,
        request_s=time.perf_counter() - started,
    ).as_dict()


def content_url(base: str, out: StoredOutput, signer: UrlSigner | None = None) -> str:
    """This server's URL for an image output. With S3 on it carries the key, so any sink can fetch
    it; with auth on it is signed, so it works without the bearer key (``serve/signing.py``)."""
    query = {"key": out.key} if out.storage == "s3" else {}
    if signer is not None:
        query.update(signer.sign(out.request_id, out.index, query.get("key")))
    url = f"{base}/v1/images/{out.request_id}_{out.index}/content"
    return url + "?" + urlencode(query) if query else url


def video_content_url(base: str, job_id: str, signer: UrlSigner | None = None) -> str:
    """This server's URL for a video job's MP4 (the route finds the key in the job), signed like
    :func:`content_url`."""
    url = f"{base}/v1/videos/{job_id}/content"
    return url + "?" + urlencode(signer.sign(job_id, 0)) if signer is not None else url


def image_response(
    reply: StoreReply,
    generation: Generation,
    started: float,
    model: str,
    base_url: str,
    b64: bool,
    signer: UrlSigner | None = None,
) -> dict:
    """OpenAI's ImagesResponse plus ray_dit's extras (id, seed, steps, timings, cache, batch_size)."""
    if b64:
        data = [{"b64_json": base64.b64encode(out.data or b"").decode("ascii")} for out in reply.outputs]
    else:
        data = [{"url": out.url or content_url(base_url, out, signer)} for out in reply.outputs]
    meta = reply.meta
    return {
        "created": int(time.time()),
        "data": data,
        "id": generation.request.request_id,
        "model": model,
        "size": f"{meta.width}x{meta.height}",
        "output_format": generation.request.output_format,
        "seed": meta.seed,
        "steps": meta.steps,
        "timings": final_timings(reply, generation, started),
        "cache": meta.cache.as_dict(),
        "batch_size": meta.batch_size,
        "warnings": meta.warnings,
    }


def generation_output(reply: StoreReply, generation: Generation, started: float) -> GenerationOutput:
    """What a notebook's handle call returns; pixels stay in the object store until used."""
    meta = reply.meta
    return GenerationOutput(
        id=generation.request.request_id,
        kind=meta.kind,
        seed=meta.seed,
        steps=meta.steps,
        width=meta.width,
        height=meta.height,
        fps=meta.fps,
        timings=final_timings(reply, generation, started),
        cache=meta.cache,
        urls=[out.url for out in reply.outputs],
        keys=[out.key for out in reply.outputs],
        batch_size=meta.batch_size,
        warnings=meta.warnings,
        _frames_ref=generation.frames_ref,
    )
