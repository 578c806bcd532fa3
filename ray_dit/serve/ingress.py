"""The ingress deployment: OpenAI-compatible HTTP routes plus a ``generate`` method for notebooks.

It validates, authenticates and admits; it never touches pixels on the HTTP path. Each accepted
request becomes a :class:`~ray_dit.serve.flow.Flow` (DiT -> sink). Everything a client can get
wrong is answered with a 4xx in OpenAI's error shape; a full queue or spool is a 503 with
Retry-After.
"""

import asyncio
import base64
import contextlib
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError, RequestCancelledError

from ray_dit.config import ServerSettings, server_from_env
from ray_dit.serve.errors import ApiError, InvalidRequest, RequestCancelled
from ray_dit.serve.generation import Generation as Flow
from ray_dit.serve.generation import start_outside_request as detached
from ray_dit.serve.http import app, authorize, read_body, read_json
from ray_dit.serve.schemas import (
    ImageGenerationBody,
    VideoCreateBody,
    form_to_dict,
    image_request,
    parse_body,
    video_request,
)
from ray_dit.serve.types import GenerationOutput, ModelInfo, StoreReply

logger = logging.getLogger("ray.serve")

_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,100}_[0-9a-f]{8,64}$")
_IMAGE_ID_RE = re.compile(r"^(?P<rid>img_[0-9a-f]{8,64})_(?P<index>[0-9]{1,4})$")
POLL_AFTER_MS = "500"
SPOOL_CHECK_S = 0.5
ADMIT_WAIT_S = 0.2
MODEL_INFO_WAIT_S = 5.0
ENGINE_PARAMS = {"width": "size", "height": "size", "output_format": "output_format"}


def _cause(exc: BaseException) -> BaseException:
    """The user-level exception inside a RayTaskError (which Ray may chain)."""
    seen = 0
    while getattr(exc, "cause", None) is not None and seen < 5:
        exc = exc.cause  # type: ignore[attr-defined]
        seen += 1
    return exc


def _is(exc: BaseException, kind: type) -> bool:
    return isinstance(exc, kind) or isinstance(_cause(exc), kind)


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=64,
    max_queued_requests=256,  # the proxy answers 503 beyond this: no unbounded queue anywhere
    ray_actor_options={"num_cpus": 0.1, "num_gpus": 0},
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(app)
class Ingress:
    """Routes, auth and admission; composes the DiT and frame sink deployments."""

    def __init__(
        self,
        dit: Any,
        sink: Any,
        jobs: Any,
        model: str,
        served_model_name: str | None = None,
        limits: dict[str, int] | None = None,
    ) -> None:
        # By reference in every Serve mode: with RAY_SERVE_THROUGHPUT_OPTIMIZED handles default to
        # by-value gRPC calls, which would pull every frame through this process and cannot give
        # the object reference a Flow hands from the DiT to the sink.
        self.dit = dit.options(_by_reference=True)
        self.sink = sink.options(_by_reference=True)
        self.jobs = jobs
        self.model = model
        self.model_names = {model, served_model_name or model}
        self.served_model_name = served_model_name or model
        self.settings: ServerSettings = server_from_env(limit_overrides=limits)
        self.created = int(time.time())
        self._info: ModelInfo | None = None
        self._info_task: asyncio.Task | None = None
        self._spool_full = False
        self._spool_checked = 0.0
        self._spool_task: asyncio.Task | None = None
        self._jobs_running: set[asyncio.Task] = set()
        logger.info("ingress ready: %r", self.settings)

    # -- helpers ---------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        authorize(self.settings, request)

    async def _read_json(self, request: Request) -> Any:
        return await read_json(request, self.settings.limits.max_body_bytes)

    async def _read_body(self, request: Request) -> bytes:
        return await read_body(request, self.settings.limits.max_body_bytes)

    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_names:
            raise ApiError(
                404,
                f"model={model!r}: this server serves {self.served_model_name!r} (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    async def _model_info(self) -> ModelInfo | None:
        """The DiT's model facts, fetched once (the first request waits a little for them)."""
        if self._info is not None:
            return self._info
        if self._info_task is None or self._info_task.done():
            self._info_task = detached(self._fetch_info())
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(self._info_task), MODEL_INFO_WAIT_S)
        return self._info

    async def _fetch_info(self) -> None:
        try:
            self._info = await self.dit.describe.remote()
        except Exception as exc:
            logger.warning("could not read model info from the DiT yet: %s", type(exc).__name__)

    def _admit(self) -> None:
        """Refuse work while the sink's spool is full (checked in the background, never waited on)."""
        now = time.monotonic()
        if now - self._spool_checked > SPOOL_CHECK_S and (
            self._spool_task is None or self._spool_task.done()
        ):
            self._spool_checked = now
            self._spool_task = detached(self._check_spool())
        if self._spool_full:
            raise self._busy("the output spool is full; retry later", "spool_full")

    async def _check_spool(self) -> None:
        try:
            self._spool_full = bool(await self.sink.is_full.remote())
        except Exception:
            self._spool_full = False

    def _busy(self, message: str, code: str) -> ApiError:
        return ApiError(503, message, code=code, headers={"Retry-After": str(self.settings.retry_after_s)})

    def _translate(self, exc: BaseException, request_id: str) -> ApiError:
        """Any failure of a flow as an ApiError (4xx for the caller's mistakes, 503 when busy)."""
        if isinstance(exc, ApiError):
            return exc
        if _is(exc, BackPressureError):
            return self._busy("the server is at capacity (queue full); retry later", "queue_full")
        cause = _cause(exc)
        if isinstance(cause, InvalidRequest) or isinstance(exc, InvalidRequest):
            err = cause if isinstance(cause, InvalidRequest) else exc
            param = ENGINE_PARAMS.get(err.param or "", err.param)  # type: ignore[union-attr]
            return ApiError(400, err.message, param=param, code="invalid_value")  # type: ignore[union-attr]
        if _is(exc, RequestCancelled) or _is(exc, RequestCancelledError):
            return ApiError(499, "the request was cancelled", code="cancelled")
        name = type(cause).__name__
        if name in (
            "StorageUnavailable",
            "DeploymentUnavailableError",
            "ActorDiedError",
            "ActorUnavailableError",
        ):
            return self._busy(f"a backend is unavailable ({name}); retry later", "unavailable")
        logger.error("request %s failed: %s: %s", request_id, name, str(cause)[:500])
        return ApiError(500, f"generation failed ({name}); request id {request_id}", code="server_error")

    def _base_url(self, request: Request) -> str:
        return self.settings.public_base_url or str(request.base_url).rstrip("/")

    async def _run(self, flow: Flow) -> StoreReply:
        flow.start()
        try:
            return await flow.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc, flow.request.request_id) from None

    # -- images ----------------------------------------------------------------------------

    @app.post("/v1/images/generations")
    async def images_generations(self, request: Request) -> JSONResponse:
        self._authorize(request)
        body: ImageGenerationBody = parse_body(ImageGenerationBody, await self._read_json(request))
        self._check_model(body.model)
        info = await self._model_info()
        request_id = f"img_{uuid.uuid4().hex}"
        req = image_request(body, request_id, self.settings.limits, info)
        self._admit()
        b64 = body.response_format == "b64_json"
        started = time.perf_counter()
        flow = Flow(
            self.dit, self.sink, req, output_format=req.output_format, include_data=b64, wait_url=not b64
        )
        reply = await self._run(flow)
        base = self._base_url(request)
        data = []
        for out in reply.outputs:
            if b64:
                data.append({"b64_json": base64.b64encode(out.data or b"").decode("ascii")})
            else:
                data.append({"url": out.url or self._content_url(base, out)})
        meta = reply.meta
        timings = {**meta.timings, **reply.timings, "request_s": time.perf_counter() - started}
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": data,
                "id": request_id,
                "model": self.served_model_name,
                "size": f"{meta.width}x{meta.height}",
                "output_format": req.output_format,
                "seed": meta.seed,
                "steps": meta.steps,
                "timings": timings,
                "cache": meta.cache.as_dict(),
            }
        )

    @staticmethod
    def _content_url(base: str, out: Any) -> str:
        """This server's URL for an output; with S3 on it carries the key, so any sink can fetch it."""
        url = f"{base}/v1/images/{out.request_id}_{out.index}/content"
        return url + "?" + urlencode({"key": out.key}) if out.storage == "s3" else url

    @app.get("/v1/images/{image_id}/content")
    async def image_content(self, image_id: str, request: Request, key: str | None = None) -> Response:
        self._authorize(request)
        match = _IMAGE_ID_RE.match(image_id)
        if not match:
            raise ApiError(404, f"no image with id {image_id!r}", param="image_id", code="not_found")
        return await self._content(match["rid"], int(match["index"]), f"image {image_id!r}", key=key)

    async def _content(
        self, request_id: str, index: int, what: str, fallback_url: str | None = None, key: str | None = None
    ) -> Response:
        try:
            found = await self.sink.content.remote(request_id, index, key)
        except Exception as exc:
            raise self._translate(exc, request_id) from None
        if found is None:
            if fallback_url:  # stored in S3 by a sink on another node: send the client there
                return RedirectResponse(fallback_url, status_code=307)
            raise ApiError(404, f"{what} is not stored here (or has expired)", code="not_found")
        data, content_type = found
        return Response(content=data, media_type=content_type)

    # -- videos ----------------------------------------------------------------------------

    async def _video_body(self, request: Request) -> VideoCreateBody:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            await self._read_body(request)
            try:
                form = await request.form()
            except Exception:
                raise ApiError(400, "invalid form body", code="invalid_json") from None
            data = form_to_dict(list(form.multi_items()))
        else:
            data = await self._read_json(request)
        return parse_body(VideoCreateBody, data)

    @app.post("/v1/videos")
    async def videos_create(self, request: Request) -> JSONResponse:
        self._authorize(request)
        body = await self._video_body(request)
        self._check_model(body.model)
        info = await self._model_info()
        job_id = f"video_{uuid.uuid4().hex}"
        req = video_request(body, job_id, self.settings.limits, info)
        self._admit()
        width = req.width or (info.width if info else None)
        height = req.height or (info.height if info else None)
        frames = req.num_frames or (info.num_frames if info else None)
        fps = req.fps or (info.fps if info else None)
        seconds = (
            body.seconds if body.seconds is not None else (f"{frames / fps:g}" if frames and fps else "")
        )
        job = {
            "id": job_id,
            "object": "video",
            "model": self.served_model_name,
            "status": "queued",
            "progress": 0,
            "created_at": int(time.time()),
            "prompt": body.prompt,
            "seconds": str(seconds),
            "size": f"{width}x{height}" if width and height else (body.size or ""),
            "num_frames": frames,
            "fps": fps,
        }
        await self.jobs.create.remote(job)
        flow = Flow(self.dit, self.sink, req, output_format="mp4", job_id=job_id)
        flow.start()
        refused = await flow.admitted(ADMIT_WAIT_S)
        if refused is not None:  # a full queue, or input only the engine could refuse
            await self.jobs.delete.remote(job_id)
            raise self._translate(refused, job_id)
        task = detached(self._finish_job(flow, job_id))
        self._jobs_running.add(task)
        task.add_done_callback(self._jobs_running.discard)
        return JSONResponse(job, headers={"openai-poll-after-ms": POLL_AFTER_MS})

    async def _keep_alive(self, flow: Flow, job_id: str) -> None:
        """Tell the job store this replica still owns ``job_id`` until its flow ends."""
        assert flow.task is not None
        every = self.settings.job_heartbeat_s
        while not flow.task.done():
            await asyncio.wait({flow.task}, timeout=every)
            if not flow.task.done():
                with contextlib.suppress(Exception):
                    await self.jobs.touch.remote(job_id)

    async def _finish_job(self, flow: Flow, job_id: str) -> None:
        assert flow.task is not None
        try:
            await self._keep_alive(flow, job_id)
            reply: StoreReply = await flow.task
        except BaseException as exc:
            err = self._translate(exc, job_id) if isinstance(exc, Exception) else None
            fields = {
                "status": "failed",
                "completed_at": int(time.time()),
                "error": {
                    "code": (err.code if err else "cancelled") or "failed",
                    "message": err.message if err else "cancelled",
                },
            }
        else:
            out = reply.outputs[0] if reply.outputs else None
            fields = {
                "status": "completed",
                "completed_at": int(time.time()),
                "url": out.url if out else None,
                "key": out.key if out else None,
                "seed": reply.meta.seed,
                "steps": reply.meta.steps,
                "timings": {**reply.meta.timings, **reply.timings},
                "cache": reply.meta.cache.as_dict(),
            }
        with contextlib.suppress(Exception):
            await self.jobs.finish.remote(job_id, fields)

    async def _job(self, video_id: str) -> dict[str, Any]:
        job = await self.jobs.get.remote(video_id) if _ID_RE.match(video_id) else None
        if job is None:
            raise ApiError(404, f"no video with id {video_id!r}", param="video_id", code="not_found")
        return job

    @app.get("/v1/videos/{video_id}")
    async def videos_retrieve(self, video_id: str, request: Request) -> JSONResponse:
        self._authorize(request)
        job = await self._job(video_id)
        return JSONResponse(job, headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @app.get("/v1/videos")
    async def videos_list(
        self, request: Request, limit: int = 20, after: str | None = None, order: str = "desc"
    ) -> JSONResponse:
        self._authorize(request)
        if order not in ("asc", "desc"):
            raise ApiError(400, f"order={order!r}: must be asc or desc", param="order", code="invalid_value")
        jobs = await self.jobs.list.remote(limit + 1, after, order)
        page = jobs[: max(1, min(100, limit))]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(jobs) > len(page),
            }
        )

    @app.get("/v1/videos/{video_id}/content")
    async def videos_content(self, video_id: str, request: Request, variant: str = "video") -> Response:
        self._authorize(request)
        if variant != "video":
            raise ApiError(
                400, f"variant={variant!r}: only 'video' is available", param="variant", code="invalid_value"
            )
        job = await self._job(video_id)
        if job["status"] != "completed":
            raise ApiError(
                409,
                f"video {video_id!r} is {job['status']}, not completed",
                param="video_id",
                code="video_not_ready",
            )
        return await self._content(video_id, 0, f"video {video_id!r}", job.get("url"), job.get("key"))

    @app.delete("/v1/videos/{video_id}")
    async def videos_delete(self, video_id: str, request: Request) -> JSONResponse:
        self._authorize(request)
        job = await self.jobs.delete.remote(video_id) if _ID_RE.match(video_id) else None
        if job is None:
            raise ApiError(404, f"no video with id {video_id!r}", param="video_id", code="not_found")
        return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})

    # -- models and health -----------------------------------------------------------------

    def _model_object(self) -> dict[str, Any]:
        return {
            "id": self.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "ray_dit",
        }

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_object()]})

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str, request: Request) -> JSONResponse:
        self._authorize(request)
        self._check_model(model_id)
        return JSONResponse(self._model_object())

    @app.get("/health")
    async def health(self) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.served_model_name})

    # -- notebook --------------------------------------------------------------------------

    async def generate(self, prompt: str, **params: Any) -> GenerationOutput:
        """Handle API: ``handle.generate.remote(prompt=..., size="128x128", ...).result()``.

        Takes the HTTP body's fields (images: n, size, output_format, ...; videos: seconds,
        num_frames, fps, ...). Bad input raises ValueError (InvalidRequest) naming the field; a
        full queue raises ApiError with status 503.
        """
        info = await self._model_info()
        video_fields = {"seconds", "num_frames", "fps"} & params.keys()
        kind = info.kind if info else ("video" if video_fields else "image")  # info: None if the DiT is busy
        params = {"prompt": prompt, **params}
        params.pop("response_format", None)
        try:
            if kind == "video":
                body = parse_body(VideoCreateBody, params)
                request_id = f"video_{uuid.uuid4().hex}"
                req = video_request(body, request_id, self.settings.limits, info)
            else:
                body = parse_body(ImageGenerationBody, params)
                request_id = f"img_{uuid.uuid4().hex}"
                req = image_request(body, request_id, self.settings.limits, info)
            self._check_model(body.model)
            self._admit()
        except ApiError as err:
            if err.status < 500:
                raise InvalidRequest(err.message, err.param) from None
            raise
        flow = Flow(self.dit, self.sink, req, output_format=req.output_format, wait_url=True)
        try:
            reply = await self._run(flow)
        except ApiError as err:
            if err.status == 400:
                raise InvalidRequest(err.message, err.param) from None
            raise
        meta = reply.meta
        return GenerationOutput(
            id=request_id,
            kind=meta.kind,
            seed=meta.seed,
            steps=meta.steps,
            width=meta.width,
            height=meta.height,
            fps=meta.fps,
            timings={**meta.timings, **reply.timings},
            cache=meta.cache,
            urls=[out.url for out in reply.outputs],
            keys=[out.key for out in reply.outputs],
            _frames_ref=flow.frames_ref,
        )
