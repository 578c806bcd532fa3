"""The Kubernetes deployment (k8s/): CRD schemas, the embedded Serve config, secrets, versions.

Fast and offline: no cluster, no Ray instance. The CRD checks need KubeRay's CRDs, which live
beside the repository in ../shared/kuberay/crds; only they are skipped when that folder is
missing. Everything else runs everywhere.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRDS = REPO.parent / "shared" / "kuberay" / "crds"
MANIFEST = K8S / "rayservice.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
DOCKERFILE = K8S / "Dockerfile"

# YAML files under k8s/ that are not Kubernetes objects, and why.
NOT_MANIFESTS = {"gpu-overrides.yaml": "input of k8s/render.py (Serve config overrides)"}
# kind -> CRD file for the custom resources.
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
# Environment variables that carry credentials: never in serveConfigV2.
CREDENTIAL_KEYS = (
    "SGLANG_S3_ACCESS_KEY_ID",
    "SGLANG_S3_SECRET_ACCESS_KEY",
    "RAY_DIT_API_KEY",
    "HF_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
# A credential-like variable name: one of these words between underscores (HF_TOKEN, not
# TOKENIZERS_PARALLELISM).
CREDENTIAL_NAME = re.compile(
    r"(^|_)(SECRET|PASSWORD|TOKEN|API_KEY|ACCESS_KEY|CREDENTIALS?)(_|$)", re.IGNORECASE
)


def _load_render():
    spec = importlib.util.spec_from_file_location("ray_dit_k8s_render", K8S / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _load_render()


# ---------------------------------------------------------------------------------------------
# Loading


def _yaml_load(text: str) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(label, document) for every Kubernetes object under k8s/."""
    docs = []
    for path in yaml_files():
        if path.name in NOT_MANIFESTS:
            continue
        for number, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc is not None:
                docs.append((f"{path.relative_to(REPO)}#{number}", doc))
    return docs


@cache
def rayservice() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def serve_config_text() -> str:
    return rayservice()["spec"]["serveConfigV2"]


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(serve_config_text())


def secret_example() -> dict[str, Any]:
    return yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))


def the_app() -> dict[str, Any]:
    apps = serve_config()["applications"]
    assert len(apps) == 1, "k8s/rayservice.yaml is expected to run one application"
    return apps[0]


def deployment(name: str) -> dict[str, Any]:
    for item in the_app().get("deployments", []):
        if item["name"] == name:
            return item
    return {}


def cluster() -> dict[str, Any]:
    return rayservice()["spec"]["rayClusterConfig"]


def worker_group(name: str) -> dict[str, Any]:
    groups = {g["groupName"]: g for g in cluster()["workerGroupSpecs"]}
    assert name in groups, f"no worker group {name!r}; groups: {sorted(groups)}"
    return groups[name]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def all_groups() -> list[tuple[str, dict[str, Any]]]:
    groups = [("head", cluster()["headGroupSpec"])]
    return groups + [(g["groupName"], g) for g in cluster()["workerGroupSpecs"]]


_QUANTITY = re.compile(r"^(?P<number>[0-9.]+)(?P<suffix>[KMGTPE]i?|m)?$")
_FACTORS = {None: 1, "m": 1e-3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_FACTORS.update({f"{p}i": 1024 ** (i + 1) for i, p in enumerate("KMGTPE")})


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity ('20Gi', '500m', 4) as a number."""
    match = _QUANTITY.match(str(value))
    assert match, f"not a resource quantity: {value!r}"
    return float(match.group("number")) * _FACTORS[match.group("suffix")]


def volume(group: dict[str, Any], mount_path: str) -> dict[str, Any]:
    """The volume mounted at ``mount_path`` in the group's Ray container."""
    mounts = {m["mountPath"]: m["name"] for m in ray_container(group).get("volumeMounts", [])}
    assert mount_path in mounts, f"nothing is mounted at {mount_path}; mounts: {sorted(mounts)}"
    volumes = {v["name"]: v for v in group["template"]["spec"].get("volumes", [])}
    return volumes[mounts[mount_path]]


# ---------------------------------------------------------------------------------------------
# CRD OpenAPI v3 -> JSON Schema


def to_json_schema(node: Any) -> Any:
    """Turn a CRD's structural OpenAPI v3 schema into a JSON Schema the apiserver would agree with.

    * ``x-kubernetes-int-or-string``: an integer or a string (``type`` is dropped);
    * ``nullable: true``: null is allowed too;
    * an object with ``properties`` is closed (``additionalProperties: false``) unless it says
      otherwise or has ``x-kubernetes-preserve-unknown-fields``: the apiserver prunes unknown
      fields and ``kubectl apply`` (strict field validation) rejects them, so a misspelled
      field would otherwise vanish without a word;
    * ``x-kubernetes-embedded-resource``: apiVersion, kind and metadata are allowed.

    CEL rules (``x-kubernetes-validations``) and list-type semantics are not evaluated.
    """
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key == "description" or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": DNS_LABEL},
        "namespace": {"type": "string", "pattern": DNS_LABEL},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
SECRET_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "v1"},
        "kind": {"const": "Secret"},
        "metadata": METADATA_SCHEMA,
        "type": {"type": "string"},
        "immutable": {"type": "boolean"},
        "data": {
            "type": "object",
            "propertyNames": {"pattern": r"^[-._a-zA-Z0-9]+$"},
            "additionalProperties": {"type": "string"},
        },
        "stringData": {
            "type": "object",
            "propertyNames": {"pattern": r"^[-._a-zA-Z0-9]+$"},
            "additionalProperties": {"type": "string"},
        },
    },
}

#: KubeRay's RayJob CRD is not among ../shared's CRDs. Its ``spec.rayClusterSpec`` is the RayCluster
#: CRD's ``spec`` (identical but for descriptions in KubeRay feeaf72, the commit those CRDs come
#: from), so that part is validated against the RayCluster CRD; the RayJob's own fields are typed
#: here as that commit's ray.io_rayjobs.yaml types them.
RAYJOB_FIELDS: dict[str, Any] = {
    "activeDeadlineSeconds": {"type": "integer"},
    "backoffLimit": {"type": "integer"},
    "clusterSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "deletionStrategy": {"type": "object"},
    "entrypoint": {"type": "string"},
    "entrypointNumCpus": {"type": "number"},
    "entrypointNumGpus": {"type": "number"},
    "entrypointResources": {"type": "string"},
    "jobId": {"type": "string"},
    "managedBy": {"type": "string"},
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "preRunningDeadlineSeconds": {"type": "integer"},
    "runtimeEnvYAML": {"type": "string"},
    "shutdownAfterJobFinishes": {"type": "boolean"},
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "submitterConfig": {"type": "object"},
    "submitterPodTemplate": {"type": "object"},
    "suspend": {"type": "boolean"},
    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
}


@pytest.fixture(scope="module")
def crds() -> Path:
    if not CRDS.is_dir():
        pytest.skip(
            f"KubeRay CRDs not found at {CRDS} (expected ../shared/kuberay/crds beside the "
            "repository): the CRD schema checks cannot run"
        )
    return CRDS


@cache
def crd_validator(crd_dir: Path, kind: str) -> jsonschema.protocols.Validator:
    crd = _yaml_load((crd_dir / CRD_FILES[kind]).read_text(encoding="utf-8"))
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version.get("served", True), f"{kind} v1 is not served by this CRD"
    schema = to_json_schema(version["schema"]["openAPIV3Schema"])
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = METADATA_SCHEMA
    schema["properties"].pop("status", None)  # status belongs to the operator, never to a manifest
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@cache
def rayjob_validator(crd_dir: Path) -> jsonschema.protocols.Validator:
    cluster_spec = crd_validator(crd_dir, "RayCluster").schema["properties"]["spec"]
    schema = {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayJob"},
            "metadata": METADATA_SCHEMA,
            "spec": {
                "type": "object",
                "required": ["entrypoint", "rayClusterSpec"],  # this project's jobs bring their cluster
                "additionalProperties": False,
                "properties": {**RAYJOB_FIELDS, "rayClusterSpec": cluster_spec},
            },
        },
    }
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(crd_dir: Path, doc: dict[str, Any]) -> list[str]:
    kind = doc.get("kind")
    if kind in CRD_FILES:
        validator = crd_validator(crd_dir, kind)
    elif kind == "RayJob":
        validator = rayjob_validator(crd_dir)
    elif kind == "Secret":
        validator = jsonschema.Draft202012Validator(SECRET_SCHEMA)
    else:
        return [f"no schema known for kind {kind!r} (add one to tests/test_k8s.py)"]
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator.iter_errors(doc)
    ]


# ---------------------------------------------------------------------------------------------
# Manifests against their schemas


def test_k8s_holds_the_expected_files() -> None:
    names = {p.name for p in yaml_files()}
    assert {"rayservice.yaml", "rayjob-batch.yaml", "secret.example.yaml", *NOT_MANIFESTS} <= names
    for label, doc in manifests():
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), (
            f"{label} has no apiVersion/kind; if it is not a Kubernetes object, list it in NOT_MANIFESTS"
        )


def test_every_manifest_validates_against_its_schema(crds: Path) -> None:
    problems = {label: schema_errors(crds, doc) for label, doc in manifests()}
    assert {label: errs for label, errs in problems.items() if errs} == {}


def _drop_group_name(doc: dict[str, Any]) -> None:
    del doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]


def _replicas_word(doc: dict[str, Any]) -> None:
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "one"


def _misspelled_field(doc: dict[str, Any]) -> None:
    group = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["rayStartParam"] = group.pop("rayStartParams")


def _int_start_param(doc: dict[str, Any]) -> None:
    doc["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _no_head(doc: dict[str, Any]) -> None:
    del doc["spec"]["rayClusterConfig"]["headGroupSpec"]


def _config_as_mapping(doc: dict[str, Any]) -> None:
    doc["spec"]["serveConfigV2"] = yaml.safe_load(doc["spec"]["serveConfigV2"])


def _wrong_api_version(doc: dict[str, Any]) -> None:
    doc["apiVersion"] = "ray.io/v1alpha2"


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (_drop_group_name, "'groupName' is a required property"),
        (_replicas_word, "workerGroupSpecs/0/replicas: 'one' is not of type 'integer'"),
        (_misspelled_field, "'rayStartParam' was unexpected"),
        (_int_start_param, "rayStartParams/num-cpus: 0 is not of type 'string'"),
        (_no_head, "'headGroupSpec' is a required property"),
        (_config_as_mapping, "serveConfigV2: {"),
        (_wrong_api_version, "apiVersion: 'ray.io/v1' was expected"),
    ],
)
def test_schema_rejects_a_broken_rayservice(crds: Path, break_it, expected: str) -> None:
    doc = copy.deepcopy(rayservice())
    assert schema_errors(crds, doc) == []
    break_it(doc)
    errors = schema_errors(crds, doc)
    assert any(expected in e for e in errors), f"{break_it.__name__}: {errors or 'accepted'}"


@pytest.mark.parametrize("cpu", [4, "4", "3500m"])
def test_int_or_string_quantities_accept_both(crds: Path, cpu: Any) -> None:
    doc = copy.deepcopy(rayservice())
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["resources"]["limits"]["cpu"] = cpu
    assert schema_errors(crds, doc) == []


def test_schema_conversion_rules() -> None:
    schema = to_json_schema(
        {
            "type": "object",
            "properties": {
                "quantity": {"x-kubernetes-int-or-string": True},
                "maybe": {"type": "string", "nullable": True},
                "free": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
            },
        }
    )
    check = jsonschema.Draft202012Validator(schema)
    assert check.is_valid({"quantity": 1}) and check.is_valid({"quantity": "1Gi"})
    assert not check.is_valid({"quantity": 1.5}) and not check.is_valid({"quantity": [1]})
    assert check.is_valid({"maybe": None}) and not check.is_valid({"maybe": 3})
    assert check.is_valid({"free": {"a": "x", "anything": 1}})
    assert not check.is_valid({"typo": 1}), "objects with properties are closed"


def test_secret_schema_rejects_broken_secrets() -> None:
    good = secret_example()
    assert schema_errors(CRDS, good) == []
    for broken in ({"stringData": {"SGLANG_S3_ACCESS_KEY_ID": 12345}}, {"strigData": {}}, {"metadata": {}}):
        assert schema_errors(CRDS, {**copy.deepcopy(good), **broken}), broken


# ---------------------------------------------------------------------------------------------
# serveConfigV2 as Ray Serve reads it


def _model_of(annotation: Any) -> type | None:
    """The pydantic model inside an annotation (Optional[X], Union[Dict, X], List[X], ...)."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def dropped_keys(value: Any, model: type, where: str = "") -> list[str]:
    """Keys in ``value`` that ``model`` does not declare: Serve would drop them without a word.

    Follows nested models, including fields typed ``Union[Dict, Model]`` (autoscaling_config,
    request_router_config, ...) whose dicts Serve later turns into the model, lists of models
    (applications, deployments), and runtime_env dicts (checked against RuntimeEnv's fields).
    """
    from ray.runtime_env import RuntimeEnv

    problems = []
    if not isinstance(value, dict):
        return problems
    fields = model.model_fields
    aliases = {f.alias: name for name, f in fields.items() if f.alias}
    for key, sub in value.items():
        path = f"{where}.{key}" if where else key
        name = aliases.get(key, key)
        if name not in fields:
            problems.append(f"{path}: not a field of {model.__name__}")
            continue
        if name == "runtime_env" and isinstance(sub, dict):
            problems += [
                f"{path}.{k}: not a runtime_env field" for k in sub if k not in RuntimeEnv.known_fields
            ]
            continue
        if name in ("args", "user_config"):  # free-form by design (the builder checks args)
            continue
        inner = _model_of(fields[name].annotation)
        if inner is None:
            continue
        if isinstance(sub, list):
            for index, item in enumerate(sub):
                label = item.get("name", index) if isinstance(item, dict) else index
                problems += dropped_keys(item, inner, f"{path}[{label}]")
        else:
            problems += dropped_keys(sub, inner, path)
    return problems


def env_var_maps(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every env_vars mapping in a Serve config, with where it is."""
    found = [
        ("controller_options", config.get("controller_options", {}).get("runtime_env", {}).get("env_vars"))
    ]
    for app in config.get("applications", []):
        found.append((f"{app.get('name')}.runtime_env", app.get("runtime_env", {}).get("env_vars")))
        for dep in app.get("deployments", []):
            runtime_env = dep.get("ray_actor_options", {}).get("runtime_env", {})
            found.append((f"{app.get('name')}.{dep.get('name')}", runtime_env.get("env_vars")))
    return [(where, env) for where, env in found if env is not None]


def test_serve_config_v2_is_a_valid_serve_deploy_schema() -> None:
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    config = serve_config()
    ServeDeploySchema.model_validate(config)
    assert dropped_keys(config, ServeDeploySchema) == []
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            if "autoscaling_config" in dep:  # the schema keeps it a dict; Serve parses it at deploy
                AutoscalingConfig(**dep["autoscaling_config"])


def test_dropped_key_check_can_fail() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = copy.deepcopy(serve_config())
    config["http_option"] = {}
    app = config["applications"][0]
    app["runtime_env"]["env_var"] = {}
    dit = next(d for d in app["deployments"] if d["name"] == "DiT")
    dit["max_ongoing_request"] = 1
    dit["autoscaling_config"]["min_replica"] = 1
    dit["ray_actor_options"]["num_gpu"] = 1
    ServeDeploySchema.model_validate(config)  # pydantic takes all of it...
    problems = dropped_keys(config, ServeDeploySchema)  # ...and this finds every one
    assert sorted(problems) == [
        "applications[ray_dit].deployments[DiT].autoscaling_config.min_replica: not a field of AutoscalingConfig",
        "applications[ray_dit].deployments[DiT].max_ongoing_request: not a field of DeploymentSchema",
        "applications[ray_dit].deployments[DiT].ray_actor_options.num_gpu: not a field of RayActorOptionsSchema",
        "applications[ray_dit].runtime_env.env_var: not a runtime_env field",
        "http_option: not a field of ServeDeploySchema",
    ]


def test_env_var_values_are_strings() -> None:
    maps = env_var_maps(serve_config())
    assert maps, "serveConfigV2 sets no env_vars at all"
    bad = [f"{where}: {k}={v!r}" for where, env in maps for k, v in env.items() if not isinstance(v, str)]
    assert bad == [], "Ray refuses non-string env_vars at runtime (TypeError), quote them"
    for _, group in all_groups():
        for container in group["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                assert "valueFrom" in item or isinstance(item.get("value"), str), item


# ---------------------------------------------------------------------------------------------
# Credentials


def test_no_credential_in_serve_config_v2() -> None:
    text = serve_config_text()
    secret = secret_example()
    for name in {*CREDENTIAL_KEYS, *secret.get("stringData", {}), *secret.get("data", {})}:
        assert name not in text, f"{name} appears in serveConfigV2: credentials come from the Secret"
    for value in {*secret.get("stringData", {}).values(), *secret.get("data", {}).values()}:
        assert value and value not in text
    for where, env in env_var_maps(serve_config()):
        assert [k for k in env if CREDENTIAL_NAME.search(k)] == [], where


def test_credentials_reach_the_workers_from_the_secret_only() -> None:
    secret_name = secret_example()["metadata"]["name"]
    for name, group in all_groups():
        for container in group["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                if CREDENTIAL_NAME.search(item["name"]):
                    assert "secretKeyRef" in item.get("valueFrom", {}), f"{name}: literal {item['name']}"
            if name != "head":
                refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
                assert refs == [secret_name], f"{name} does not get the {secret_name} Secret"


def test_secret_example_holds_placeholders_only() -> None:
    secret = secret_example()
    assert "data" not in secret, "use stringData placeholders, never encoded values"
    assert set(secret["stringData"]) == {
        "SGLANG_S3_ACCESS_KEY_ID",
        "SGLANG_S3_SECRET_ACCESS_KEY",
        "RAY_DIT_API_KEY",
        "HF_TOKEN",
    }
    for key, value in secret["stringData"].items():
        assert re.fullmatch(r"<[a-z0-9-]+>", value), f"{key} is not a <placeholder>"


# ---------------------------------------------------------------------------------------------
# One source of truth: serveConfigV2 = render(serve_config.yaml + gpu-overrides.yaml)


def test_committed_serve_config_v2_is_the_rendered_one() -> None:
    current = MANIFEST.read_text(encoding="utf-8")
    assert render.render_manifest(current) == current, (
        "k8s/rayservice.yaml's serveConfigV2 is stale: run `python k8s/render.py`"
    )


def test_application_differs_from_serve_config_only_by_the_overrides() -> None:
    base = yaml.safe_load((REPO / "serve_config.yaml").read_text(encoding="utf-8"))
    overrides = yaml.safe_load((K8S / "gpu-overrides.yaml").read_text(encoding="utf-8"))
    assert serve_config() == render.merge(base, overrides)
    base_app = base["applications"][0]
    for key in ("name", "import_path", "route_prefix"):
        assert the_app().get(key) == base_app.get(key), key


def test_merge_rules() -> None:
    base = {
        "a": {"x": 1, "y": 2},
        "keep": [1, 2],
        "applications": [
            {"name": "app", "args": {"m": "tiny", "n": 1}, "deployments": [{"name": "D", "k": 1}]}
        ],
    }
    over = {
        "a": {"y": None, "z": 3},
        "keep": [3],
        "applications": [
            {
                "name": "app",
                "args": {"m": "big"},
                "deployments": [{"name": "D", "k": None}, {"name": "E", "j": None}],
            }
        ],
    }
    assert render.merge(base, over) == {
        "a": {"x": 1, "z": 3},
        "keep": [3],
        "applications": [
            {"name": "app", "args": {"m": "big", "n": 1}, "deployments": [{"name": "D"}, {"name": "E"}]}
        ],
    }
    with pytest.raises(render.RenderError, match="'other'"):
        render.merge(base, {"applications": [{"name": "other"}]})


def test_render_replaces_only_the_block() -> None:
    manifest = "a: 1\nspec:\n  serveConfigV2: |\n    old: 1\n\n    more: 2\n\n  rayClusterConfig: {}\n# end\n"
    out = render.replace_block(manifest, "# c\nnew: 1\n")
    assert out == "a: 1\nspec:\n  serveConfigV2: |\n    # c\n    new: 1\n\n  rayClusterConfig: {}\n# end\n"
    with pytest.raises(render.RenderError):
        render.replace_block("spec: {}\n", "x: 1\n")


# ---------------------------------------------------------------------------------------------
# The GPU application and the cluster agree


def test_dit_runs_a_real_model_on_one_gpu_per_replica() -> None:
    args = the_app()["args"]
    dit = deployment("DiT")
    assert "/" in args["model"] and not args["model"].startswith("demo:"), args["model"]
    assert args["device"].startswith("cuda") and args["dtype"] == "bfloat16"
    assert dit["ray_actor_options"]["num_gpus"] == 1 == args["num_gpus"]
    assert dit["ray_actor_options"]["num_cpus"] == args["dit_num_cpus"]
    scaling = dit["autoscaling_config"]
    assert scaling["min_replicas"] >= 1, "a GPU model takes minutes to load: keep one replica"
    assert "num_replicas" not in dit and "dit_replicas" not in args, "autoscaling decides the count"
    max_ongoing = dit.get("max_ongoing_requests", args.get("max_ongoing_requests", 5))
    assert scaling.get("target_ongoing_requests", 2) <= max_ongoing, "Serve would never scale up"


def test_head_hosts_no_replicas() -> None:
    params = cluster()["headGroupSpec"]["rayStartParams"]
    assert params["num-cpus"] == "0" and params.get("num-gpus", "0") == "0"


def test_gpu_group() -> None:
    group = worker_group("gpu-group")
    spec = group["template"]["spec"]
    container = ray_container(group)
    limits = container["resources"]["limits"]
    assert quantity(limits["nvidia.com/gpu"]) == 1
    assert quantity(container["resources"]["requests"].get("nvidia.com/gpu", limits["nvidia.com/gpu"])) == 1
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    assert spec["nodeSelector"], "the GPU pods need a node selector"
    shm = volume(group, "/dev/shm")["emptyDir"]
    assert shm["medium"] == "Memory" and quantity(shm["sizeLimit"]) >= 8 * 1024**3
    # GPU pods offer Ray no CPUs: only the DiT replicas (0 CPUs, 1 GPU) fit there.
    assert group["rayStartParams"]["num-cpus"] == "0"
    dit = deployment("DiT")
    assert dit["ray_actor_options"]["num_cpus"] == 0
    scaling = dit["autoscaling_config"]
    assert group["maxReplicas"] * quantity(limits["nvidia.com/gpu"]) >= scaling["max_replicas"]
    assert group["minReplicas"] <= scaling["min_replicas"] <= group["maxReplicas"]
    graceful = dit.get("graceful_shutdown_timeout_s", 60)
    assert spec["terminationGracePeriodSeconds"] >= graceful


def test_cpu_group_hosts_one_frame_sink_per_pod() -> None:
    group = worker_group("cpu-group")
    container = ray_container(group)
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    sink = deployment("FrameSink")
    assert sink["max_replicas_per_node"] == 1
    replicas = the_app()["args"]["sink_replicas"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == replicas, (
        "one sink per CPU pod: sink_replicas and the cpu-group size move together"
    )
    assert sink["ray_actor_options"]["num_cpus"] * 1 <= quantity(container["resources"]["limits"]["cpu"])


def test_spool_is_on_a_pod_volume_that_survives_container_restarts() -> None:
    env = the_app()["runtime_env"]["env_vars"]
    spool_dir = env["RAY_DIT_SPOOL_DIR"]
    group = worker_group("cpu-group")
    spool = volume(group, spool_dir)
    kinds = {"emptyDir", "hostPath", "persistentVolumeClaim", "ephemeral"} & set(spool)
    assert kinds, f"the spool volume must be a disk volume, not {sorted(spool)}"
    if "emptyDir" in spool:
        assert spool["emptyDir"].get("medium", "") != "Memory", "a memory spool dies with the pod's memory"
        assert int(env["RAY_DIT_SPOOL_MAX_BYTES"]) < quantity(spool["emptyDir"]["sizeLimit"]), (
            "past sizeLimit the kubelet evicts the pod, spool and all"
        )
    spec = group["template"]["spec"]
    pre_stop = " ".join(ray_container(group)["lifecycle"]["preStop"]["exec"]["command"])
    assert f"{spool_dir}/pending/" in pre_stop
    drain = int(re.search(r"timeout (\d+)", pre_stop).group(1))
    assert drain < spec["terminationGracePeriodSeconds"]


def test_object_store_fits_in_shm() -> None:
    for name, group in all_groups():
        store = group["rayStartParams"].get("object-store-memory")
        assert store, f"{name}: set object-store-memory explicitly"
        shm = volume(group, "/dev/shm")["emptyDir"]
        assert shm["medium"] == "Memory"
        assert int(store) < quantity(shm["sizeLimit"]), name


def test_containers_share_the_image_and_declare_ports_and_resources() -> None:
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    port = serve_config()["http_options"]["port"]
    images = set()
    for name, group in all_groups():
        container = ray_container(group)
        images.add(container["image"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("serve") == port, f"{name}: KubeRay finds the Serve proxy by the port name 'serve'"
        for kind in ("limits", "requests"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} {kind}"
    head_ports = {p["name"]: p["containerPort"] for p in ray_container(cluster()["headGroupSpec"])["ports"]}
    assert head_ports["gcs-server"] == 6379 and head_ports["dashboard"] == 8265
    assert len(images) == 1, f"head and workers must run one image: {images}"
    assert images.pop().endswith(f":{version}"), "tag the image with the package version"


def test_every_ray_container_runs_serve_in_high_throughput_mode() -> None:
    # Serve reads these once per process, so every node must agree: a worker without them
    # would run Serve's Python proxy on its `serve` port while the others run HAProxy.
    wanted = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # The console script the image's `pip install` puts there (k8s/Dockerfile checks it).
        "RAY_SERVE_HAPROXY_BINARY_PATH": "/home/ray/anaconda3/bin/ray-dit-haproxy",
    }
    for name, group in all_groups():
        env = {e["name"]: e.get("value") for e in ray_container(group).get("env", [])}
        assert {key: env.get(key) for key in wanted} == wanted, name


def test_serve_config_matches_the_app_it_builds() -> None:
    """The deployments named in serveConfigV2 exist in the app that its args build, and every one
    of them (after the config's overrides) needs a CPU or a GPU, so none can land on the head."""
    from ray.serve._private.build_app import build_app as serve_build

    from ray_dit.serve.app import build_app

    app = the_app()
    built = {d.name: d for d in serve_build(build_app(app["args"]), name=app["name"]).deployments}
    configured = {d["name"]: d for d in app.get("deployments", [])}
    assert set(configured) <= set(built), f"unknown deployments: {set(configured) - set(built)}"
    for name, dep in built.items():
        override = configured.get(name, {})
        options = override.get("ray_actor_options", dep._replica_config.ray_actor_options or {})
        assert options.get("num_cpus", 1) > 0 or options.get("num_gpus", 0) > 0, (
            f"{name} asks for no CPU and no GPU: it could be placed on the head"
        )
        if "autoscaling_config" in override:
            pinned = dep._deployment_config.user_configured_option_names
            assert "num_replicas" not in pinned, f"{name}: the builder pins num_replicas"


# ---------------------------------------------------------------------------------------------
# Image versions


def test_dockerfile_base_image_matches_the_pins() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert len(froms) == 1, froms
    match = re.fullmatch(
        r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3)(?P<minor>\d+)-(?P<cuda>gpu|cu\d+)", froms[0]
    )
    assert match, f"base image {froms[0]} is not a rayproject/ray GPU image with explicit versions"
    ray_version, python = match["ray"], f"{match['py']}.{match['minor']}"

    ray_pin = re.search(r'"ray\[serve,data\]([^"]+)"', pyproject).group(1)
    assert SpecifierSet(ray_pin).contains(ray_version), f"image Ray {ray_version} vs pin {ray_pin}"
    assert cluster()["rayVersion"] == ray_version
    assert f"ray.__version__ == '{ray_version}'" in dockerfile
    assert f'"ray[serve,data]=={ray_version}"' in dockerfile

    requires = re.search(r'^requires-python = "([^"]+)"', pyproject, re.M).group(1)
    assert SpecifierSet(requires).contains(python), f"image Python {python} vs requires-python {requires}"
    assert f"sys.version_info[:2] == ({match['py']}, {match['minor']})" in dockerfile

    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    torch_ci = re.search(r"^TORCH_SPEC \?= torch==(\S+)", makefile, re.M).group(1)
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(torch_ci)}$", dockerfile, re.M), "torch differs from CI"
    if match["cuda"] != "gpu":
        index = re.search(r"^ARG TORCH_INDEX_URL=(\S+)$", dockerfile, re.M).group(1)
        assert index.rstrip("/").endswith(match["cuda"]), "torch's CUDA build differs from the image's CUDA"
