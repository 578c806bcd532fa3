"""Cost-aware admission and autoscaling (``serve/cost.py``, ``admission.Backlog``,
``serve/autoscaling.py``).

The policy's unit tests build Ray's own ``AutoscalingContext``. Through Serve: a big request
counts as several in the ingress's queue limit (over HTTP, with the openai client for the refusal),
its cost is released however it ends, and an app deployed from a config with the application-level
policy scales its DiT from the queued cost the ingress reports (Serve's default policy would not).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingConfig, AutoscalingContext
from serve_helpers import RAY_ENV

from ray_dit.serve.autoscaling import QUEUED_COST, RUNNING_COST, CostPolicy, cost_policy

# -- the policy, with Ray's real context type ---------------------------------------------------


def _ctx(
    name: str,
    *,
    requests: float = 0,
    queued: float = 0,
    target: float = 1,
    low: int = 1,
    high: int = 16,
    **metrics: float,
) -> tuple[DeploymentID, AutoscalingContext]:
    dep = DeploymentID(name=name, app_name="app")
    replicas = [ReplicaID(f"{name}-0", dep)]
    return dep, AutoscalingContext(
        deployment_id=dep,
        deployment_name=name,
        app_name="app",
        current_num_replicas=1,
        target_num_replicas=1,
        running_replicas=replicas,
        total_num_requests=requests,
        total_queued_requests=queued,
        aggregated_metrics={key: {replicas[0]: value} for key, value in metrics.items()},
        raw_metrics={},
        capacity_adjusted_min_replicas=low,
        capacity_adjusted_max_replicas=high,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=time.time(),
        config=AutoscalingConfig(
            min_replicas=low, max_replicas=high, target_ongoing_requests=target, upscale_delay_s=0
        ),
    )


def _dit_decision(queued_cost: float | None, policy: Callable = cost_policy, **dit: Any) -> float:
    ingress = _ctx(
        "Ingress", **({QUEUED_COST: queued_cost, RUNNING_COST: 1.0} if queued_cost is not None else {})
    )
    dit_id, dit_ctx = _ctx("DiT", **dit)
    decisions, states = policy(dict([ingress, (dit_id, dit_ctx)]))
    assert set(decisions) == {ingress[0], dit_id} and isinstance(states, dict)
    return decisions[dit_id]


def _serve_default(**dit: Any) -> float:
    return replica_queue_length_autoscaling_policy(_ctx("DiT", **dit)[1])[0]


def test_for_default_requests_the_policy_decides_what_serves_default_does() -> None:
    # 1 running + 3 queued default requests (3.0 of queued cost): 4 replicas at target 1.
    assert _dit_decision(3.0, requests=4, queued=3) == 4 == _serve_default(requests=4, queued=3)
    assert (
        _dit_decision(3.0, requests=4, queued=3, target=2)
        == 2
        == _serve_default(requests=4, queued=3, target=2)
    )


def test_the_queue_counts_its_cost_and_a_replica_per_request_is_the_most_it_asks() -> None:
    # ten quarter-size requests queued behind one running: 1 + 2.5, not 11
    assert _dit_decision(2.5, requests=11, queued=10) == 3.5 < _serve_default(requests=11, queued=10)
    # two 4x requests queued behind one running, target 2: (1 + 8) / 2 = 4.5, capped at 3 requests;
    # Serve's default would give them 1.5 replicas
    assert (
        _dit_decision(8.0, requests=3, queued=2, target=2)
        == 3
        > _serve_default(requests=3, queued=2, target=2)
    )
    # one huge request running alone: one replica, whatever it costs
    assert _dit_decision(0.0, requests=1) == 1


def test_min_and_max_replicas_hold_and_the_other_deployments_keep_serves_default() -> None:
    assert _dit_decision(0.0, low=2) == 2  # idle: min_replicas
    assert _dit_decision(500.0, requests=100, queued=99, high=4) == 4  # flooded: max_replicas
    # No cost reported yet (or no autoscaling_config on the ingress): Serve's default for the DiT.
    assert _dit_decision(None, requests=5, queued=4) == 5 == _serve_default(requests=5, queued=4)
    ingress_id, ingress = _ctx("Ingress", requests=6, target=2, **{QUEUED_COST: 1.0})
    decisions, _ = cost_policy({ingress_id: ingress})
    assert decisions[ingress_id] == 3 == replica_queue_length_autoscaling_policy(ingress)[0]


def test_policy_kwargs_name_the_deployments_and_the_target() -> None:
    policy = CostPolicy(dit="DiT", ingress="Ingress", target_cost_per_replica=4)
    assert _dit_decision(8.0, policy=policy, requests=6, queued=5) == 2.25  # (1 + 8) / 4
    other = CostPolicy(ingress="Edge")  # the ingress is named otherwise: no cost reaches the DiT
    assert _dit_decision(8.0, policy=other, requests=6, queued=5) == 6
    with pytest.raises(ValueError, match="target_cost_per_replica=0"):
        CostPolicy(target_cost_per_replica=0)


# -- through Serve ---------------------------------------------------------------------------------

APP, PREFIX = "cost", "/cost"
# demo:flux-tiny's default request, 128x128 and 8 steps, costs 1.0.
LONG = {"size": "768x768", "num_inference_steps": 200}  # 36 x 25 = 900: minutes, cancelled early
BIG = {"size": "128x128", "num_inference_steps": 32}  # 4.0
SMALL = {"size": "128x128", "num_inference_steps": 8}  # 1.0
OVER = {"size": "256x256", "num_inference_steps": 16}  # 8.0 > the limit of 6


async def _until(
    what: str,
    probe: Callable[[], Awaitable[dict[str, float]]],
    ok: Callable[[dict], bool],
    wait_s: float = 60,
) -> dict[str, float]:
    """Poll ``probe`` until ``ok`` (liveness only: the limit is generous, no speed is asserted)."""
    deadline = time.monotonic() + wait_s
    while True:
        seen = await probe()
        if ok(seen):
            return seen
        assert time.monotonic() < deadline, f"{what}: still {seen} after {wait_s}s"
        await asyncio.sleep(0.05)


def _body(fields: dict[str, Any], seed: int = 1) -> dict[str, Any]:
    return {"prompt": "a red circle", "response_format": "b64_json", "seed": seed, **fields}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_big_request_counts_as_several_and_every_ending_releases_its_cost(ray_serve) -> None:
    from openai import APIStatusError, OpenAI
    from ray import serve

    from ray_dit.serve.app import compose, parse_args

    app = compose(
        parse_args({"model": "demo:flux-tiny", "device": "cpu"}), ingress_env={"RAY_DIT_MAX_QUEUED_COST": "6"}
    )
    serve.run(app, name=APP, route_prefix=PREFIX)
    handle = serve.get_app_handle(APP)
    base = ray_serve.url + PREFIX
    openai = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)

    async def stats() -> dict[str, float]:
        return await handle.record_autoscaling_stats.remote()

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=300) as http:

            async def post(fields: dict[str, Any], seed: int = 1) -> httpx.Response:
                return await http.post("/v1/images/generations", json=_body(fields, seed))

            assert (await post(SMALL)).status_code == 200  # the model is described, a unit measured
            # A request 150x the limit is admitted: nothing is queued. It runs (minutes, if let).
            long = asyncio.ensure_future(post(LONG))
            await _until(
                "the long request runs", stats, lambda s: s[RUNNING_COST] > 100 and not s[QUEUED_COST]
            )
            big = asyncio.ensure_future(post(BIG, seed=2))
            await _until("a big request waits", stats, lambda s: s[QUEUED_COST] == 4)
            # A second big one would make 8 > 6 queued: refused at once, with Retry-After.
            with pytest.raises(APIStatusError) as refused:
                await asyncio.to_thread(
                    openai.images.generate, prompt="a red circle", response_format="b64_json", extra_body=BIG
                )
            err = refused.value
            assert err.status_code == 503 and err.code == "queue_full", err.body
            assert float(err.response.headers["retry-after-ms"]) > 0
            small = asyncio.ensure_future(post(SMALL, seed=3))  # 4 + 1 fit
            await _until("a small request joins the queue", stats, lambda s: s[QUEUED_COST] == 5)
            assert not long.done()  # all of the above happened while the long request ran
            long.cancel()  # the client goes away: the denoise stops, its cost is released
            with contextlib.suppress(asyncio.CancelledError):
                await long
            assert [(await task).status_code for task in (big, small)] == [200, 200]
            await _until("no cost is left", stats, lambda s: s == {QUEUED_COST: 0, RUNNING_COST: 0})
            over = await post(OVER)  # over the limit alone: only taken because nothing leaked
            assert over.status_code == 200, over.text

    try:
        asyncio.run(scenario())
    finally:
        serve.delete(APP)


SCALE_APP, SCALE_PREFIX = "costscale", "/costscale"
FAST_METRICS = {"metrics_interval_s": 0.2, "look_back_period_s": 0.5}


def _scaling_config(spool_dir: str) -> Any:
    """The app as a RayService's ``serveConfigV2`` would declare it: the application-level policy,
    an ``autoscaling_config`` on the ingress (so its metrics reach the policy) and on the DiT."""
    from ray.serve.schema import ServeDeploySchema

    dit = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0}
    return ServeDeploySchema.model_validate(
        {
            "applications": [
                {
                    "name": SCALE_APP,
                    "route_prefix": SCALE_PREFIX,
                    "import_path": "ray_dit.serve.app:build_app",
                    "args": {"model": "demo:flux-tiny", "device": "cpu"},
                    "runtime_env": {"env_vars": {**RAY_ENV, "RAY_DIT_SPOOL_DIR": spool_dir}},
                    "autoscaling_policy": {"policy_function": "ray_dit.serve.autoscaling:cost_policy"},
                    "deployments": [
                        {"name": "DiT", "autoscaling_config": {**dit, **FAST_METRICS}},
                        {
                            "name": "Ingress",
                            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, **FAST_METRICS},
                        },
                    ],
                }
            ]
        }
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_app_deployed_with_the_policy_scales_the_dit_from_the_queued_cost(ray_serve) -> None:
    """One request running and one 4x request queued, at target_ongoing_requests 2: Serve's
    default policy keeps one DiT replica (2 requests / 2); the cost policy asks for two
    (min(2 requests, (1 running + 4 queued cost) / 2)). So the DiT scaling up shows that the
    ingress's queued cost reached the policy, through Serve's own custom-metric path."""
    from ray import serve
    from ray.serve.context import _get_global_client

    # What `serve deploy` and KubeRay do: apply a declarative config (app-level policies exist
    # only there; serve.run takes none).
    _get_global_client().deploy_apps(_scaling_config(str(ray_serve.spool_dir)), _blocking=True)
    handle = serve.get_app_handle(SCALE_APP)
    base = ray_serve.url + SCALE_PREFIX

    async def stats() -> dict[str, float]:
        return await handle.record_autoscaling_stats.remote()

    async def dit_status() -> dict[str, float]:
        dit = serve.status().applications[SCALE_APP].deployments["DiT"]
        return {
            "upscaling": float(dit.status == "UPSCALING"),
            **{k: float(v) for k, v in dit.replica_states.items()},
        }

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=300) as http:

            async def post(fields: dict[str, Any], seed: int = 1) -> httpx.Response:
                return await http.post("/v1/images/generations", json=_body(fields, seed))

            assert (await post(SMALL)).status_code == 200
            assert (await dit_status()).get("RUNNING") == 1
            running = [asyncio.ensure_future(post(LONG))]
            await _until("the long request runs", stats, lambda s: s[RUNNING_COST] > 100)
            running.append(asyncio.ensure_future(post(BIG, seed=2)))
            await _until("a big request waits", stats, lambda s: s[QUEUED_COST] == 4)
            seen = await _until(
                "the DiT scales up", dit_status, lambda s: s["upscaling"] or s.get("RUNNING", 0) > 1
            )
            assert not running[0].done(), seen  # the long request was still holding its replica
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        serve.delete(SCALE_APP)
