"""The ingress deployment: OpenAI-compatible HTTP routes plus ``generate`` for notebooks.

It validates (``schemas``), authenticates (the ``/v1`` router's dependency in ``http``), admits
(``admission``), and starts a :class:`~ray_dit.serve.generation.Generation` (DiT -> sink); it
never touches pixels. Every failure becomes an ``ApiError`` in one place
(:func:`~ray_dit.serve.errors.to_api_error`): a 4xx for what a client got wrong, 503 with
Retry-After when the server is full.
"""

# No ``from __future__ import annotations`` here: Serve rebuilds the route signatures in its own
# module, where string annotations such as "Request" would no longer resolve.
import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from ray_dit.api import GenerationRequest
from ray_dit.config import server_from_env
from ray_dit.serve import job_runner, metrics, responses
from ray_dit.serve.admission import Backlog, CostTicket, Reservation, SpoolWatch
from ray_dit.serve.compat import by_reference
from ray_dit.serve.cost import request_cost
from ray_dit.serve.errors import ApiError, as_handle_error, invalid, to_api_error
from ray_dit.serve.generation import Generation, start_outside_request
from ray_dit.serve.http import app, read_json, v1
from ray_dit.serve.readiness import Readiness
from ray_dit.serve.schemas import (
    ImageEditBody,
    ImageGenerationBody,
    VideoCreateBody,
    image_request,
    parse_body,
    video_request,
)
from ray_dit.serve.signing import UrlSigner, image_output
from ray_dit.serve.types import GenerationOutput, ModelInfo, StoreReply
from ray_dit.serve.uploads import read_form

logger = logging.getLogger("ray.serve")

JOB_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,100}_[0-9a-f]{8,64}$")
ADMIT_WAIT_S = 0.2  # a video job waits this long for a DiT slot, so a full queue is still a 503
MODEL_INFO_WAIT_S = 5.0
MAX_PAGE = 100  # jobs per page of GET /v1/videos (OpenAI's limit)


class Ingress:
    """Routes, auth and admission; composes the DiT and frame sink deployments."""

    def __init__(
        self,
        dit: DeploymentHandle,
        sink: DeploymentHandle,
        jobs: DeploymentHandle,
        model: str,
        served_model_name: str | None = None,
        limits: dict[str, int] | None = None,
        dit_replicas: int = 1,
        max_queued_cost: float | None = None,
    ) -> None:
        self.dit = by_reference(dit)
        self.sink = by_reference(sink)
        self.jobs = jobs
        self.served_model_name = served_model_name or model
        self.model_names = {model, self.served_model_name}
        self.settings = server_from_env(limit_overrides=limits)
        #: Signs the content URLs handed out while auth is on; the ``/v1`` router's dependency
        #: checks them with a signer built from the same environment (``http.edge_signer``).
        self.signer = UrlSigner.from_settings(self.settings)
        # RAY_DIT_MAX_QUEUED_COST, else the builder's (the DiT's max_queued_requests), else none.
        cost_limit = self.settings.max_queued_cost or max_queued_cost
        self.backlog = Backlog(
            self.settings.retry_after_s, dit_replicas, cost_limit, on_change=metrics.report_cost
        )
        self.spool = SpoolWatch(self.sink, self.backlog.retry_after_s)
        self.readiness = Readiness()
        self.created = int(time.time())
        self._info: ModelInfo | None = None
        self._info_task: asyncio.Task | None = None
        self._running_jobs: set[asyncio.Task] = set()
        logger.info("ingress ready: %r", self.settings)

    # -- shared steps ----------------------------------------------------------------------

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
            self._info_task = start_outside_request(self._fetch_info())
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(self._info_task), MODEL_INFO_WAIT_S)
        return self._info

    async def _fetch_info(self) -> None:
        try:
            self._info = await self.dit.describe.remote()
        except Exception as exc:
            logger.warning("could not read model info from the DiT yet: %s", type(exc).__name__)

    def _generation(self, request: GenerationRequest, **options: Any) -> Generation:
        return Generation(self.dit, self.sink, request, output_format=request.output_format, **options)

    async def _admit(self, req: GenerationRequest) -> tuple[CostTicket, Reservation]:
        """Hold the request's cost in the queue (503 ``queue_full``), then its spool bytes."""
        ticket = self.backlog.admit(request_cost(req, self._info))
        try:
            return ticket, await self.spool.admit(req)
        except BaseException:
            ticket.release()
            raise

    async def _run(self, generation: Generation, ticket: CostTicket) -> StoreReply:
        generation.start()
        ticket.follow(generation)  # released (and its replica time measured) however it ends
        try:
            reply = await generation.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise to_api_error(exc, generation.request.request_id, self.backlog.retry_after_s) from None
        # Acknowledged: from here on the request succeeds, with or without cloud URLs.
        return await generation.add_urls(reply)

    def _base_url(self, request: Request) -> str:
        return self.settings.public_base_url or str(request.base_url).rstrip("/")

    # -- images ----------------------------------------------------------------------------

    @v1.post("/images/generations")
    async def images_generations(self, request: Request) -> JSONResponse:
        body = parse_body(ImageGenerationBody, await read_json(request, self.settings.limits.max_body_bytes))
        self._check_model(body.model)
        req = image_request(body, f"img_{uuid.uuid4().hex}", self.settings.limits, await self._model_info())
        return await self._images(request, body, req)

    @v1.post("/images/edits")
    async def images_edits(self, request: Request) -> JSONResponse:
        """OpenAI's image edit: a multipart form with the input ``image`` file and a prompt, for
        image-conditioned models (``mask``, inpainting, is refused by name)."""
        fields, files = await read_form(request, self.settings.limits)
        body = parse_body(ImageEditBody, fields)
        self._check_model(body.model)
        if body.mask is not None or "mask" in files:
            raise invalid("mask", "mask: inpainting masks are not supported; send the image alone")
        if "image" not in files:
            raise invalid("image", "image: upload the input image as a file (multipart field 'image')")
        info, request_id = await self._model_info(), f"img_{uuid.uuid4().hex}"
        req = image_request(body, request_id, self.settings.limits, info, image=files["image"])
        return await self._images(request, body, req)

    async def _images(
        self, request: Request, body: ImageGenerationBody, req: GenerationRequest
    ) -> JSONResponse:
        ticket, reservation = await self._admit(req)
        b64 = body.response_format == "b64_json"
        started = time.perf_counter()
        generation = self._generation(req, include_data=b64, wait_url=not b64, on_stored=reservation.release)
        reply = await self._run(generation, ticket)
        base = self._base_url(request)
        answer = responses.image_response(
            reply, generation, started, self.served_model_name, base, b64, self.signer
        )
        return JSONResponse(answer)

    @v1.get("/images/{image_id}/content")
    async def image_content(self, image_id: str, key: str | None = None) -> Response:
        output = image_output(image_id)
        if output is None:
            raise ApiError(404, f"no image with id {image_id!r}", param="image_id", code="not_found")
        return await self._content(*output, f"image {image_id!r}", key=key)

    async def _content(
        self, request_id: str, index: int, what: str, fallback_url: str | None = None, key: str | None = None
    ) -> Response:
        try:
            found = await self.sink.content.remote(request_id, index, key)
        except Exception as exc:
            raise to_api_error(exc, request_id, self.backlog.retry_after_s) from None
        if found is None:
            if fallback_url:  # stored in S3 by a sink on another node: send the client there
                return RedirectResponse(fallback_url, status_code=307)
            raise ApiError(404, f"{what} is not stored here (or has expired)", code="not_found")
        data, content_type = found
        return Response(content=data, media_type=content_type)

    # -- videos ----------------------------------------------------------------------------

    async def _video_body(self, request: Request) -> tuple[VideoCreateBody, bytes | None]:
        """The body (JSON, or the openai SDK's form) and its ``input_reference`` file, if any."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            limit = self.settings.limits.max_body_bytes
            return parse_body(VideoCreateBody, await read_json(request, limit)), None
        fields, files = await read_form(request, self.settings.limits)
        unknown = sorted(set(files) - {"input_reference"})
        if unknown:
            raise invalid(unknown[0], f"{unknown[0]}: unknown file field; only input_reference takes a file")
        return parse_body(VideoCreateBody, fields), files.get("input_reference")

    @v1.post("/videos")
    async def videos_create(self, request: Request) -> JSONResponse:
        body, reference = await self._video_body(request)
        self._check_model(body.model)
        info = await self._model_info()
        job_id = f"video_{uuid.uuid4().hex}"
        req = video_request(body, job_id, self.settings.limits, info, image=reference)
        ticket, reservation = await self._admit(req)
        job = job_runner.job_record(job_id, self.served_model_name, req, body.seconds, info)
        try:
            await self.jobs.create.remote(job)
        except BaseException:
            ticket.release()
            reservation.release()
            raise
        generation = self._generation(req, job_id=job_id, wait_url=True, on_stored=reservation.release)
        generation.start()
        ticket.follow(generation)  # released when the job's generation ends, however it ends
        refused = await generation.admitted(ADMIT_WAIT_S)
        if refused is not None:  # a full queue, or input only the engine could refuse
            await self.jobs.delete.remote(job_id)
            raise to_api_error(refused, job_id, self.backlog.retry_after_s)
        run = job_runner.run_to_end(
            generation, self.jobs, job_id, self.settings.job_heartbeat_s, self.backlog
        )
        task = start_outside_request(run)
        self._running_jobs.add(task)
        task.add_done_callback(self._running_jobs.discard)
        return JSONResponse(job, headers={"openai-poll-after-ms": job_runner.POLL_AFTER_MS})

    async def _job(self, video_id: str) -> dict[str, Any]:
        job = await self.jobs.get.remote(video_id) if JOB_ID_RE.match(video_id) else None
        if job is None:
            raise ApiError(404, f"no video with id {video_id!r}", param="video_id", code="not_found")
        return job

    def _shown(self, job: dict[str, Any], request: Request) -> dict[str, Any]:
        """A job as clients see it: a completed one without a cloud URL shows this server's content
        URL, signed at each look (so a poll never returns an expired one)."""
        if job.get("status") != "completed" or job.get("url"):
            return job
        return {**job, "url": responses.video_content_url(self._base_url(request), job["id"], self.signer)}

    @v1.get("/videos/{video_id}")
    async def videos_retrieve(self, video_id: str, request: Request) -> JSONResponse:
        job = self._shown(await self._job(video_id), request)
        return JSONResponse(job, headers={"openai-poll-after-ms": job_runner.POLL_AFTER_MS})

    @v1.get("/videos")
    async def videos_list(
        self, request: Request, limit: int = 20, after: str | None = None, order: str = "desc"
    ) -> JSONResponse:
        if order not in ("asc", "desc"):
            raise invalid("order", f"order={order!r}: must be asc or desc")
        if not 1 <= limit <= MAX_PAGE:
            raise invalid("limit", f"limit={limit}: must be between 1 and {MAX_PAGE}")
        page, has_more = await self.jobs.list.remote(limit, after, order)
        page = [self._shown(job, request) for job in page]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": has_more,
            }
        )

    @v1.get("/videos/{video_id}/content")
    async def videos_content(self, video_id: str, variant: str = "video") -> Response:
        if variant != "video":
            raise invalid("variant", f"variant={variant!r}: only 'video' is available")
        job = await self._job(video_id)
        if job["status"] != "completed":
            raise ApiError(
                409,
                f"video {video_id!r} is {job['status']}, not completed",
                param="video_id",
                code="video_not_ready",
            )
        return await self._content(video_id, 0, f"video {video_id!r}", job.get("url"), job.get("key"))

    @v1.delete("/videos/{video_id}")
    async def videos_delete(self, video_id: str) -> JSONResponse:
        job = await self.jobs.delete.remote(video_id) if JOB_ID_RE.match(video_id) else None
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

    @v1.get("/models")
    async def models(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self._model_object()]})

    @v1.get("/models/{model_id:path}")
    async def model(self, model_id: str) -> JSONResponse:
        self._check_model(model_id)
        return JSONResponse(self._model_object())

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """200 while every deployment runs; 503 naming each one that does not, and why."""
        problems = await self.readiness.problems()
        body = {"status": "unavailable" if problems else "ok", "model": self.served_model_name}
        return JSONResponse({**body, "deployments": problems}, status_code=503 if problems else 200)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom-metric hook: the queued and running cost, read by the autoscaling
        policy (``serve/autoscaling.py``; needs an ``autoscaling_config`` on this deployment)."""
        return self.backlog.stats()

    # -- notebook --------------------------------------------------------------------------

    async def generate(self, prompt: str, **params: Any) -> GenerationOutput:
        """Handle API: ``handle.generate.remote(prompt=..., size="128x128", ...).result()``.

        Takes the HTTP body's fields (images: n, size, output_format, ...; videos: seconds,
        num_frames, fps, ...). Bad input raises ``InvalidRequest`` (a ValueError) naming the
        field; a full queue raises ApiError with status 503.
        """
        try:
            req = await self._handle_request(prompt, params)
            ticket, reservation = await self._admit(req)
        except ApiError as err:
            raise as_handle_error(err) from None
        started = time.perf_counter()
        generation = self._generation(req, wait_url=True, on_stored=reservation.release)
        try:
            reply = await self._run(generation, ticket)
        except ApiError as err:
            raise as_handle_error(err) from None
        return responses.generation_output(reply, generation, started)

    async def _handle_request(self, prompt: str, params: dict[str, Any]) -> GenerationRequest:
        info = await self._model_info()  # None while the DiT is busy: guess from the fields
        video_fields = {"seconds", "num_frames", "fps"} & params.keys()
        kind = info.kind if info else ("video" if video_fields else "image")
        params = {k: v for k, v in {"prompt": prompt, **params}.items() if k != "response_format"}
        if kind == "video":
            body = parse_body(VideoCreateBody, params)
            req = video_request(body, f"video_{uuid.uuid4().hex}", self.settings.limits, info)
        else:
            body = parse_body(ImageGenerationBody, params)
            req = image_request(body, f"img_{uuid.uuid4().hex}", self.settings.limits, info)
        self._check_model(body.model)
        return req


app.include_router(v1)
Ingress = serve.deployment(
    name="Ingress",
    max_ongoing_requests=64,
    max_queued_requests=256,  # the proxy answers 503 beyond this: no unbounded queue anywhere
    ray_actor_options={"num_cpus": 0.1, "num_gpus": 0},
    graceful_shutdown_timeout_s=30,
)(serve.ingress(app)(Ingress))
