"""docs/configuration.md's table "Same input, SGLang vs ray_dit", checked row by row.

Each row is read from the document itself, so the table and the code cannot drift apart: the
ray_dit column against ``load_settings``, the SGLang column against a model of how SGLang reads
each variable. The model follows SGLang's code (``multimodal_gen/envs.py``: ``get_bool_env_var``
with only "true"/"1" true, see sgl-project/sglang#13583, plain ``int()``/``float()``; the SCM
parsing in its denoising stage; ``runtime/entrypoints/openai/storage.py``), and builds the boto3
client SGLang builds, so boto3's own refusals are real ones.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from ray_dit.config import (
    SEED_DEFAULTS,
    CacheDitSettings,
    DBCacheKnobs,
    Settings,
    StorageSettings,
    load_settings,
)
from ray_dit.config.cache_dit import CACHE_PREFIX, SCM_POLICIES, SCM_PRESETS, SECONDARY_PREFIX
from ray_dit.config.parsers import parse_bool
from ray_dit.errors import ConfigError

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
HEADING = "## Same input, SGLang vs ray_dit"
STORAGE_BASE = {"SGLANG_CLOUD_STORAGE_TYPE": "s3", "SGLANG_S3_BUCKET_NAME": "outputs"}
"""What the storage rows assume unless they set it (SGLang reads nothing else without these)."""


@dataclasses.dataclass(frozen=True)
class Row:
    subjects: tuple[str, ...]
    value: str
    context: dict[str, str]
    sglang: str
    ray_dit: str


def _first_code(cell: str) -> str:
    return re.findall(r"`([^`]*)`", cell)[0]


def _normal(token: str) -> str:
    """A JSON token in one spelling (``[8,3]`` == ``[8, 3]``); words (refused, ValueError) as is."""
    try:
        return json.dumps(json.loads(token))
    except ValueError:
        return token


def table_rows() -> list[Row]:
    lines = DOC.read_text().splitlines()
    header = next(i for i in range(lines.index(HEADING), len(lines)) if lines[i].startswith("| variable"))
    end = next(i for i in range(header, len(lines)) if not lines[i].startswith("|"))
    rows = []
    for line in lines[header + 2 : end]:
        variable, value, sglang, ray_dit = (cell.strip() for cell in line.strip("|").split("|"))
        names = re.findall(r"`([^`]*)`", variable)
        context = dict(name.split("=", 1) for name in names if "=" in name)
        subjects = tuple(name for name in names if "=" not in name)
        rows.append(
            Row(subjects, json.loads(_first_code(value)), context, _first_code(sglang), _first_code(ray_dit))
        )
    return rows


ROWS = table_rows()
IDS = [f"{row.subjects[0].removeprefix('SGLANG_')}={row.value!r}" for row in ROWS]


def env_for(row: Row, name: str) -> dict[str, str]:
    base = STORAGE_BASE if name.startswith(("SGLANG_S3_", "SGLANG_CLOUD_")) else {}
    return {**base, **row.context, name: row.value}


# -- ray_dit's reading ------------------------------------------------------------------------


def _getters() -> dict[str, Callable[[Settings], Any]]:
    """Variable name -> the settings field it fills, from the fields' own declarations."""
    found: dict[str, Callable[[Settings], Any]] = {}
    for spec in dataclasses.fields(CacheDitSettings):
        if "env" in spec.metadata:
            found[CACHE_PREFIX + spec.metadata["env"]] = lambda s, n=spec.name: getattr(s.cache_dit, n)
    for prefix, expert in ((CACHE_PREFIX, "primary"), (SECONDARY_PREFIX, "secondary")):
        for spec in dataclasses.fields(DBCacheKnobs):
            found[prefix + spec.metadata["env"]] = lambda s, e=expert, n=spec.name: getattr(
                getattr(s.cache_dit, e), n
            )
    for spec in dataclasses.fields(StorageSettings):
        if "env" in spec.metadata:
            found[spec.metadata["env"]] = lambda s, n=spec.name: getattr(s.storage, n)
    return found


GETTERS = _getters()


def as_json(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def ray_dit_reads(name: str, env: Mapping[str, str]) -> str:
    """What ray_dit makes of ``env`` for variable ``name``: a JSON value, or ``refused``."""
    try:
        settings = load_settings(env)
    except ConfigError as err:
        assert any(name in problem for problem in err.problems), err.problems  # refused for this one
        return "refused"
    return as_json(GETTERS[name](settings))


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_ray_dit_reads_what_the_table_says(row: Row):
    for name in row.subjects:
        env = env_for(row, name)
        if row.ray_dit == "default":
            unset = {key: value for key, value in env.items() if key != name}
            assert ray_dit_reads(name, env) == ray_dit_reads(name, unset), name
        else:
            assert ray_dit_reads(name, env) == _normal(row.ray_dit), name


# -- SGLang's reading, as its code does it -----------------------------------------------------

SGLANG_NUMBERS = {"FN": (int, "1"), "BN": (int, "0"), "WARMUP": (int, "4"), "MC": (int, "3")}
SGLANG_NUMBERS |= {"TS_ORDER": (int, "1"), "RDT": (float, "0.24")}
CACHE_DIT_MASK_POLICIES = ("slow", "medium", "fast", "ultra")  # cache-dit's steps_mask presets


def sglang_bool(text: str) -> bool:
    """SGLang's ``get_bool_env_var``: lower-cased, not stripped; anything else is false."""
    return text.lower() in ("true", "1")


def _sglang_knob(name: str, env: Mapping[str, str]) -> Any:
    knob = name.removeprefix(SECONDARY_PREFIX).removeprefix(CACHE_PREFIX)
    primary = CACHE_PREFIX + knob
    default = "false" if knob in ("ENABLED", "TAYLORSEER") else SGLANG_NUMBERS[knob][1]
    # A twin that is set (even to "") is read; an unset one reads its primary (envs.py).
    raw = env[name] if name in env else env.get(primary, default) if name != primary else default
    if knob in ("ENABLED", "TAYLORSEER"):
        return sglang_bool(raw)
    return SGLANG_NUMBERS[knob][0](raw)


def _sglang_scm(name: str, env: Mapping[str, str]) -> Any:
    if name.endswith("_PRESET"):
        preset = env.get(name, "none")
        if preset != "none" and preset not in CACHE_DIT_MASK_POLICIES:
            raise ValueError(f"mask_policy {preset} is not valid")  # cache-dit's steps_mask
        return preset
    if name.endswith("_POLICY"):
        return "static" if env.get(name, "dynamic") == "static" else "dynamic"  # cache-dit: == "static"
    compute, cache = env.get(CACHE_PREFIX + "SCM_COMPUTE_BINS"), env.get(CACHE_PREFIX + "SCM_CACHE_BINS")
    if not (compute and cache):
        return None  # one without the other: a warning, and the preset
    try:
        bins = {"COMPUTE": [int(x.strip()) for x in compute.split(",")]}
        bins["CACHE"] = [int(x.strip()) for x in cache.split(",")]
    except ValueError:
        return None  # "Failed to parse SCM bins ... SCM disabled."
    return bins[name.removeprefix(CACHE_PREFIX + "SCM_").removesuffix("_BINS")]


def _sglang_storage(name: str, env: Mapping[str, str]) -> Any:
    if env.get("SGLANG_CLOUD_STORAGE_TYPE", "").lower() != "s3" or not env.get("SGLANG_S3_BUCKET_NAME"):
        return None  # storage off, silently
    region = env.get("SGLANG_S3_REGION_NAME") or None
    read = {
        "SGLANG_CLOUD_STORAGE_TYPE": "s3",
        "SGLANG_S3_BUCKET_NAME": env["SGLANG_S3_BUCKET_NAME"],
        "SGLANG_S3_ENDPOINT_URL": env.get("SGLANG_S3_ENDPOINT_URL") or None,
        "SGLANG_S3_REGION_NAME": region,
        "SGLANG_S3_ACCESS_KEY_ID": env.get("SGLANG_S3_ACCESS_KEY_ID"),
        "SGLANG_S3_SECRET_ACCESS_KEY": env.get("SGLANG_S3_SECRET_ACCESS_KEY"),
    }
    boto3.session.Session().client(  # the client SGLang builds at import; it may refuse here
        "s3",
        aws_access_key_id=read["SGLANG_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=read["SGLANG_S3_SECRET_ACCESS_KEY"],
        endpoint_url=read["SGLANG_S3_ENDPOINT_URL"],
        region_name=region,
    )
    return read[name]


def sglang_reads(name: str, env: Mapping[str, str]) -> str:
    """What SGLang makes of ``env`` for ``name``: a JSON value, or the exception it raises."""
    if name.startswith(CACHE_PREFIX + "SCM_"):
        read: Callable[[str, Mapping[str, str]], Any] = _sglang_scm
    elif name.startswith(CACHE_PREFIX):
        read = _sglang_knob
    else:
        read = _sglang_storage
    try:
        return json.dumps(read(name, env))
    except Exception as exc:
        return type(exc).__name__


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_sglang_reads_what_the_table_says(row: Row):
    for name in row.subjects:
        assert sglang_reads(name, env_for(row, name)) == _normal(row.sglang), name


def test_the_table_covers_every_sglang_variable():
    knobs = [CACHE_PREFIX + spec.metadata["env"] for spec in dataclasses.fields(DBCacheKnobs)]
    everything = set(SEED_DEFAULTS) | {name.replace(CACHE_PREFIX, SECONDARY_PREFIX) for name in knobs}
    covered = {name for row in ROWS for name in row.subjects}
    assert everything - covered == set()
    assert covered <= set(GETTERS)
    assert len(ROWS) >= 30


# -- where SGLang reads a value as meant, ray_dit reads it the same ----------------------------

words = st.sampled_from(["true", "1", "false", "0", "yes", "no", "on", "TRUE", "Yes", "", "2"])
padded = st.tuples(st.sampled_from(["", " ", "\t"]), words, st.sampled_from(["", " ", "\n"]))


@given(st.one_of(padded.map("".join), st.text(max_size=8)))
def test_ray_dit_bools_never_contradict_sglang(text: str):
    try:
        ours = parse_bool(text)
    except ValueError:
        return  # refused at start: nothing is silently read differently
    if sglang_bool(text):
        assert ours is True
    if text.strip().lower() in ("false", "0", "no"):
        assert ours is False


@given(
    st.one_of(st.integers(-5, 300).map(str), st.from_regex(r"\s?[+-]?[0-9_]{1,4}(\.0)?\s?", fullmatch=True))
)
def test_ray_dit_numbers_agree_with_sglang_where_both_read_them(text: str):
    for knob, (convert, _) in SGLANG_NUMBERS.items():
        spec = next(s for s in dataclasses.fields(DBCacheKnobs) if s.metadata["env"] == knob)
        try:
            ours, theirs = spec.metadata["parse"](text), convert(text)
        except ValueError:
            continue
        assert ours == theirs, (knob, text)


@given(st.sampled_from([*SCM_PRESETS, *SCM_POLICIES, "FAST", "Static", " none", "x"]))
def test_ray_dit_reads_every_exact_sglang_word_the_same(word: str):
    for name, choices in (("SCM_PRESET", SCM_PRESETS), ("SCM_POLICY", SCM_POLICIES)):
        if word in choices:  # SGLang's exact spelling
            assert ray_dit_reads(CACHE_PREFIX + name, {CACHE_PREFIX + name: word}) == json.dumps(word)
