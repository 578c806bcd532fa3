"""Built-in models answer a real HTTP request through Ray Serve (issue 16): by default one edit and
one image-to-video model; ``RAY_DIT_ZOO=rest`` runs the others (``make test-zoo``, which CI runs after ``make
test``, so every model goes through Serve in every CI run), ``all`` runs both (26 passed, 216 s on
2 cores, 2026-11-30).

Parametrized over the registry, so a new family module is covered without touching this file:
each model is deployed on the CPU as its own app, sent one request with the real ``openai``
client at its default size and 2 steps (an image, an edit of an input image, a text-to-video or
an image-to-video job, by the model's task), and the PNG or MP4 that comes back is checked, with
the response's ``steps`` and ``cache``. The app is deleted right after. The engine-level checks of
each model (cache-dit on and off, CFG branches, skipped blocks) are in ``tests/test_zoo.py``.
"""

from __future__ import annotations

import base64
import io
import re
import time

import pytest
from PIL import Image
from zoo_selection import first_of, select

from ray_dit.engine.registry import ModelSpec, lookup, registered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: demo:flux-large is a benchmark-sized FLUX (demo:flux-tiny is the same family); demo:shapes is
#: served by the other Serve tests.
SKIP = {"demo:flux-large", "demo:shapes"}
_CANDIDATES = [spec for spec in registered() if spec.id not in SKIP]
#: ``make test`` sends the first registered model of the tasks no other Serve test serves (an
#: edit through /v1/images/edits, an image-to-video job); images and videos from text go through
#: Serve in most other Serve tests (demo:shapes, demo:wan-tiny). A new app costs about 17 CPU-s
#: (mostly the DiT replica's torch and diffusers imports), so all models take about 4 minutes on 2
#: cores, too long for ``make test``'s budget: ``make test-zoo`` (``rest``) sends the others. Every
#: model of every family goes through the same Engine in tests/test_zoo.py.
_ONLY_HERE = ("edit", "image-to-video")
FIRST = first_of((s for s in _CANDIDATES if s.task in _ONLY_HERE), key=lambda spec: spec.task)
MODELS = [spec.id for spec in select(_CANDIDATES, FIRST)]
STEPS = 2
PROMPT = "a red circle on a blue background"
VIDEO_WAIT_S = 120
DEPLOY_WAIT_S = 150
#: Apps starting at once. A new app is four fresh replica processes (~11 CPU-s in them: the DiT's
#: torch and diffusers imports ~6, the three small replicas ~1.7 each; ~17 CPU-s on the machine with
#: Ray's own work), so on 2 cores two in flight keep both busy; 3 measured no faster.
WINDOW = 2


def _size(spec: ModelSpec) -> tuple[int, int]:
    d = spec.defaults
    assert d.width and d.height, f"{spec.id}: no default size"
    return d.width, d.height


def _png(width: int, height: int) -> bytes:
    """An input image (edits, image-to-video): a two-color picture of the output's size."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _check_extras(extras: dict, model: str) -> None:
    assert extras.get("steps") == STEPS, (model, extras.get("steps"))
    cache = extras.get("cache")
    assert isinstance(cache, dict) and cache.get("total_steps") == STEPS, (model, cache)


def _image(client, spec: ModelSpec) -> None:
    width, height = _size(spec)
    kwargs = {
        "model": spec.id,
        "prompt": PROMPT,
        "size": f"{width}x{height}",
        "response_format": "b64_json",
        "extra_body": {"num_inference_steps": STEPS},
    }
    if spec.task == "edit":
        resp = client.images.edit(image=("in.png", _png(width, height), "image/png"), **kwargs)
    else:
        resp = client.images.generate(**kwargs)
    assert len(resp.data) == 1
    image = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json)))
    assert image.format == "PNG" and image.size == (width, height), (image.format, image.size)
    image.load()  # decodes every pixel: a truncated PNG fails here
    _check_extras(resp.model_extra or {}, spec.id)


def _video(client, spec: ModelSpec) -> None:
    width, height = _size(spec)
    kwargs = {
        "model": spec.id,
        "prompt": PROMPT,
        "size": f"{width}x{height}",
        "extra_body": {"num_inference_steps": STEPS},
    }
    if spec.task == "image-to-video":
        kwargs["input_reference"] = ("in.png", _png(width, height), "image/png")
    job = client.videos.create(**kwargs)
    assert job.id.startswith("video_") and job.status in ("queued", "in_progress", "completed")
    deadline = time.monotonic() + VIDEO_WAIT_S
    while job.status not in ("completed", "failed"):
        assert time.monotonic() < deadline, f"{spec.id}: job {job.id} still {job.status}"
        time.sleep(0.1)
        job = client.videos.retrieve(job.id)
    assert job.status == "completed", (spec.id, job.error)
    assert job.size == f"{width}x{height}"
    _check_extras(job.model_extra or {}, spec.id)
    data = client.videos.download_content(job.id).read()
    assert len(data) > 8 and data[4:8] == b"ftyp", data[:16]  # an MP4 container


def _name(model: str) -> str:
    return "zoo-" + re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")


class _Zoo:
    """Deploys each model as its own app, ``WINDOW`` apps ahead of the tests that use them: the
    next app's replicas start while this one answers. Each test waits for its own app, sends its
    request and deletes the app without waiting for it to go (a blocking ``serve.delete`` takes
    ~3 s). Reusing one app name is no faster: Serve replaces every replica of the app anyway."""

    def __init__(self, order: list[str]) -> None:
        self.order = order  # the models this session runs, in the order it runs them
        self.started: dict[str, float] = {}
        self.names: set[str] = set()

    def _start(self, model: str) -> None:
        from ray import serve

        from ray_dit.serve import build_app

        name = _name(model)
        self.started[model] = time.monotonic()
        self.names.add(name)
        app = build_app({"model": model, "device": "cpu"})
        serve.run_many(
            [serve.RunTarget(app, name=name, route_prefix="/" + name)],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )

    def ready(self, model: str) -> float:
        """Start this model's app and the next ones, wait until it runs; seconds since its start."""
        from ray import serve
        from ray.serve.schema import ApplicationStatus

        at = self.order.index(model) if model in self.order else len(self.order)
        for ahead in [model, *self.order[at + 1 : at + WINDOW]]:
            if ahead not in self.started:
                self._start(ahead)
        name, deadline = _name(model), time.monotonic() + DEPLOY_WAIT_S
        while True:
            app = serve.status().applications.get(name)
            status = app.status if app else None
            if status == ApplicationStatus.RUNNING:
                return time.monotonic() - self.started[model]
            if status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
                # Serve's own message is only "Failed to update the deployments ['DiT']": the
                # deployment's message carries the replica's traceback.
                why = {d: s.message for d, s in app.deployments.items() if s.message}
                raise AssertionError(f"{model}: app {status.value}: {app.message}\n{why}")
            assert time.monotonic() < deadline, f"{model}: app still {status} after {DEPLOY_WAIT_S}s"
            time.sleep(0.2)

    def delete(self, model: str) -> None:
        from ray import serve

        if _name(model) in self.names:
            serve.delete(_name(model), _blocking=False)

    def delete_all(self) -> None:
        """Delete every app this module started (those a stopped session never reached, too) and
        wait until they are gone."""
        from ray import serve

        for name in sorted(self.names):
            serve.delete(name, _blocking=False)
        deadline = time.monotonic() + 60
        while (left := self.names & set(serve.status().applications)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"apps not deleted after 60 s: {sorted(left)}"


@pytest.fixture(scope="module")
def zoo(ray_serve, request):
    params = [
        getattr(item, "callspec", None) for item in request.session.items if item.module is request.module
    ]
    order = [p.params["model"] for p in params if p is not None and "model" in p.params]
    deployer = _Zoo(order)
    try:
        yield deployer
    finally:
        deployer.delete_all()


@pytest.mark.parametrize("model", MODELS)
def test_every_model_answers_one_request_over_http(ray_serve, zoo, model: str) -> None:
    from openai import OpenAI

    spec = lookup(model)
    assert spec is not None
    name = _name(model)
    began = time.monotonic()
    try:
        deploy_s = zoo.ready(model)
        sent = time.monotonic()
        client = OpenAI(base_url=f"{ray_serve.url}/{name}/v1", api_key="unused", max_retries=0, timeout=120)
        (_video if spec.task in ("video", "image-to-video") else _image)(client, spec)
        print(
            f"\n[zoo] {model}: deployed in {deploy_s:.1f}s (this test waited {sent - began:.1f}s), "
            f"request {time.monotonic() - sent:.1f}s"
        )
    finally:
        zoo.delete(model)
