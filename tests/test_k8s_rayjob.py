"""The offline job on KubeRay (k8s/rayjob-batch.yaml): its parts agree with each other and with the
service. The schema check itself is tests/test_k8s.py's (every manifest against its schema); this
file shows that check can fail on a RayJob, and checks what no schema knows: the entrypoint is a
valid ``ray-dit batch`` command, its engines fit the GPUs, the cache settings are the service's.
Fast and offline: no cluster.
"""

from __future__ import annotations

import copy
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_k8s import CRDS, CREDENTIAL_NAME, K8S, quantity, rayservice, schema_errors, the_app

JOB = K8S / "rayjob-batch.yaml"


@pytest.fixture(scope="module")
def crd_dir() -> Path:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}: the schema checks cannot run")
    return CRDS


@cache
def rayjob() -> dict[str, Any]:
    return yaml.safe_load(JOB.read_text(encoding="utf-8"))


def _group(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == name)


def _container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def _batch_args() -> Any:
    from ray_dit.cli import _build_parser

    argv = shlex.split(rayjob()["spec"]["entrypoint"])
    assert argv[:2] == ["ray-dit", "batch"], argv
    return _build_parser().parse_args(argv[1:])  # argparse exits (SystemExit) on a bad argument


def _env_vars() -> dict[str, Any]:
    return yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"])["env_vars"]


def _misspelled_entrypoint(doc: dict[str, Any]) -> None:
    doc["spec"]["entryPoint"] = doc["spec"].pop("entrypoint")


def _word_backoff(doc: dict[str, Any]) -> None:
    doc["spec"]["backoffLimit"] = "two"


def _no_group_name(doc: dict[str, Any]) -> None:
    del doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]


def _unknown_mode(doc: dict[str, Any]) -> None:
    doc["spec"]["submissionMode"] = "KubernetesJob"


def _int_start_param(doc: dict[str, Any]) -> None:
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (_misspelled_entrypoint, "'entryPoint' was unexpected"),
        (_word_backoff, "backoffLimit: 'two' is not of type 'integer'"),
        (_no_group_name, "'groupName' is a required property"),
        (_unknown_mode, "submissionMode: 'KubernetesJob' is not one of"),
        (_int_start_param, "rayStartParams/num-cpus: 0 is not of type 'string'"),
    ],
)
def test_schema_rejects_a_broken_rayjob(crd_dir: Path, break_it: Any, expected: str) -> None:
    doc = copy.deepcopy(rayjob())
    assert schema_errors(crd_dir, doc) == []
    break_it(doc)
    errors = schema_errors(crd_dir, doc)
    assert any(expected in e for e in errors), f"{break_it.__name__}: {errors or 'accepted'}"


def test_the_entrypoint_is_a_valid_batch_command_from_s3_to_s3() -> None:
    args = _batch_args()
    assert args.command == "batch"
    assert args.input.startswith("s3://") and args.output.startswith("s3://")
    assert args.device == "cuda" and args.dtype == "bfloat16"
    assert min(args.engines, args.writers, args.max_batch_size, args.batch_size) >= 1


def test_one_engine_per_gpu_and_the_writers_fit_the_cpu_pods() -> None:
    args = _batch_args()
    gpu, cpu = _group(rayjob(), "gpu-group"), _group(rayjob(), "cpu-group")
    gpus_per_pod = quantity(_container(gpu)["resources"]["limits"]["nvidia.com/gpu"])
    assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"]  # a job's GPUs do not scale away
    assert args.engines == gpu["replicas"] * gpus_per_pod
    # Engines ask for a GPU and no CPU; GPU pods and the head offer no CPU, so readers, row checks
    # and writers (1 CPU each) all land on the CPU pods, which must hold the writers with room left.
    assert gpu["rayStartParams"]["num-cpus"] == "0"
    assert rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    cpus = cpu["replicas"] * quantity(_container(cpu)["resources"]["limits"]["cpu"])
    assert args.writers < cpus


def test_the_job_caches_as_the_service_does_and_carries_no_credential() -> None:
    from ray_dit.config import load_settings

    env = _env_vars()
    assert all(isinstance(v, str) for v in env.values()), env
    assert not [name for name in env if CREDENTIAL_NAME.search(name)]
    service = the_app()["runtime_env"]["env_vars"]
    cache_names = {n for n in service if n.startswith("SGLANG_CACHE_DIT_") and service[n] != ""}
    assert cache_names and {n: env.get(n) for n in cache_names} == {n: service[n] for n in cache_names}
    assert load_settings(env).cache_dit.enabled  # the settings load as the engine loads them


def test_the_cluster_runs_the_services_image_and_ray() -> None:
    job, service = rayjob()["spec"]["rayClusterSpec"], rayservice()["spec"]["rayClusterConfig"]
    assert job["rayVersion"] == service["rayVersion"]
    images = {_container(g)["image"] for g in [job["headGroupSpec"], *job["workerGroupSpecs"]]}
    assert images == {_container(service["headGroupSpec"])["image"]}


def test_only_the_driver_and_the_engines_see_the_secret() -> None:
    def secrets(group: dict[str, Any]) -> list[str]:
        return [e["secretRef"]["name"] for e in _container(group).get("envFrom", []) if "secretRef" in e]

    job = rayjob()
    assert secrets(job["spec"]["rayClusterSpec"]["headGroupSpec"]) == ["ray-dit-secrets"]  # S3 keys
    assert secrets(_group(job, "gpu-group")) == ["ray-dit-secrets"]  # HF_TOKEN for gated weights
    assert secrets(_group(job, "cpu-group")) == []
