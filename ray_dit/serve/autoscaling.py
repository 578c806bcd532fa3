"""Serve autoscaling from cost: size the DiT deployment from the work the ingress replicas queued.

Serve's default policy counts requests: ten queued 256x256 previews and ten queued 129-frame
videos ask for the same replicas. Each ingress replica knows the *cost* of what it queued
(:mod:`ray_dit.serve.cost`, in default requests) and reports it through Serve's custom-metric
hook, ``Ingress.record_autoscaling_stats`` (Ray 2.60). Those metrics reach only the ingress's
own autoscaling context, so the policy that reads them and sizes the DiT is an
*application-level* policy (``autoscaling_policy`` of the application in a serve config or a
RayService's ``serveConfigV2``); it sees every deployment that has an ``autoscaling_config``,
which is why the ingress needs one too (``min_replicas == max_replicas`` keeps its count fixed).

For the DiT the desired replica count is::

    min(requests, (running requests + queued cost) / target)

- a running request holds one replica whatever its size (more replicas do not finish it sooner);
- the queue counts its work: a queue of ten quarter-size requests asks for 2.5 replicas' worth,
  a queue of two 4x videos for 8 default requests' worth;
- ``requests`` (running and queued, Serve's own count) caps it: one request runs on one replica;
- ``target`` is the DiT's ``target_ongoing_requests``, read in default requests, so for default
  requests the policy decides exactly what Serve's default policy decides.

Serve then applies the DiT's ``upscale_delay_s``, ``downscale_delay_s``, scaling factors and
``min_replicas``/``max_replicas`` to the decision (the policy clips to min/max itself too). Every
other deployment with an ``autoscaling_config`` keeps Serve's default policy. Until the ingress
has reported (or without its ``autoscaling_config``) the DiT falls back to the default policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

#: Custom metric names (``Ingress.record_autoscaling_stats``), also the Prometheus gauges' names.
QUEUED_COST = "ray_dit_queued_cost"
RUNNING_COST = "ray_dit_running_cost"

Decisions = dict[Any, float]
States = dict[Any, dict[str, Any]]


class CostPolicy:
    """Application-level policy (``policy_kwargs`` configure it: Serve builds it once and calls it
    every control-loop tick with each autoscaling deployment's context)."""

    def __init__(
        self, dit: str = "DiT", ingress: str = "Ingress", target_cost_per_replica: float | None = None
    ) -> None:
        if target_cost_per_replica is not None and not target_cost_per_replica > 0:
            raise ValueError(
                f"target_cost_per_replica={target_cost_per_replica!r}: must be a number > 0 "
                "(default requests per replica; leave it out to use the DiT's target_ongoing_requests)"
            )
        self.dit = dit
        self.ingress = ingress
        self.target_cost_per_replica = target_cost_per_replica

    def __call__(self, contexts: Mapping[Any, AutoscalingContext]) -> tuple[Decisions, States]:
        queued_cost = self.queued_cost(contexts)
        decisions: Decisions = {}
        states: States = {}
        for deployment, ctx in contexts.items():
            if ctx.deployment_name == self.dit and queued_cost is not None:
                decisions[deployment] = self.dit_replicas(ctx, queued_cost)
                states[deployment] = {QUEUED_COST: queued_cost}
            else:
                decisions[deployment], states[deployment] = replica_queue_length_autoscaling_policy(ctx)
        return decisions, states

    def queued_cost(self, contexts: Mapping[Any, AutoscalingContext]) -> float | None:
        """The queued cost summed over the ingress replicas (each one's value aggregated over the
        look-back window), or None while no ingress replica has reported it."""
        for ctx in contexts.values():
            if ctx.deployment_name != self.ingress:
                continue
            per_replica = (ctx.aggregated_metrics or {}).get(QUEUED_COST)
            if per_replica:
                return math.fsum(per_replica.values())
        return None

    def dit_replicas(self, ctx: AutoscalingContext, queued_cost: float) -> float:
        """The DiT's desired replica count (see the module's docstring), within min/max."""
        target = self.target_cost_per_replica or ctx.config.get_target_ongoing_requests()
        wanted = min(ctx.total_num_requests, (ctx.total_running_requests + queued_cost) / target)
        low, high = ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
        return float(min(max(wanted, low), high))


def cost_policy(contexts: Mapping[Any, AutoscalingContext]) -> tuple[Decisions, States]:
    """:class:`CostPolicy` with its defaults (deployments ``DiT`` and ``Ingress``; the DiT's
    ``target_ongoing_requests`` as the target), for ``policy_function`` without kwargs."""
    return CostPolicy()(contexts)
