"""The configuration contract: SGLang's names and defaults, strict parsing, one clear error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ray_dit.config import (
    SEED_DEFAULTS,
    CacheDitSettings,
    ConfigError,
    DBCacheKnobs,
    cache_dit_from_env,
    load_settings,
    storage_from_env,
)

SEED_DOC = Path(__file__).resolve().parents[2] / "shared" / "seed" / "sglang-diffusion-env-vars.md"


def seed_table() -> dict[str, str]:
    """Variable -> default, parsed from the seed document itself."""
    rows = {}
    for line in SEED_DOC.read_text().splitlines():
        match = re.match(r"\|\s*`(SGLANG_[A-Z0-9_]+)`\s*\|\s*([^|]+?)\s*\|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_seed_document_lists_what_we_implement():
    if not SEED_DOC.exists():
        pytest.skip(f"seed document not found at {SEED_DOC}")
    table = seed_table()
    assert len(table) == 18
    for name, default in table.items():
        expected = "" if default == "not set" else default
        assert SEED_DEFAULTS[name] == expected, name
    assert set(SEED_DEFAULTS) == set(table)


def test_defaults_equal_the_seed_table():
    settings = load_settings({})
    cache = settings.cache_dit
    assert cache.enabled is False
    assert cache.primary == DBCacheKnobs(fn=1, bn=0, warmup=4, rdt=0.24, mc=3, taylorseer=False, ts_order=1)
    assert cache.secondary == cache.primary
    assert (cache.scm_preset, cache.scm_policy) == ("none", "dynamic")
    assert cache.scm_compute_bins is None and cache.scm_cache_bins is None
    storage = settings.storage
    assert storage.storage_type is None and storage.bucket is None and storage.endpoint_url is None
    assert storage.region == "us-east-1"
    assert storage.access_key_id is None and storage.secret_access_key is None


def test_defaults_written_out_parse_to_the_same_settings():
    """serve_config.yaml lists every seed variable with its default; that must equal no env."""
    assert load_settings(dict(SEED_DEFAULTS)) == load_settings({})


def test_every_seed_variable_takes_effect():
    env = {
        "SGLANG_CACHE_DIT_ENABLED": "YES",
        "SGLANG_CACHE_DIT_FN": "2",
        "SGLANG_CACHE_DIT_BN": "1",
        "SGLANG_CACHE_DIT_WARMUP": "0",
        "SGLANG_CACHE_DIT_RDT": "0.5",
        "SGLANG_CACHE_DIT_MC": "-1",
        "SGLANG_CACHE_DIT_TAYLORSEER": "True",
        "SGLANG_CACHE_DIT_TS_ORDER": "2",
        "SGLANG_CACHE_DIT_SCM_PRESET": "Fast",
        "SGLANG_CACHE_DIT_SCM_POLICY": "static",
        "SGLANG_CACHE_DIT_SCM_COMPUTE_BINS": "8, 3,3",
        "SGLANG_CACHE_DIT_SCM_CACHE_BINS": "1,2",
        "SGLANG_CLOUD_STORAGE_TYPE": "S3",
        "SGLANG_S3_BUCKET_NAME": "outputs",
        "SGLANG_S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
        "SGLANG_S3_REGION_NAME": "eu-west-1",
        "SGLANG_S3_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "SGLANG_S3_SECRET_ACCESS_KEY": "s3cr3t/value",
    }
    s = load_settings(env)
    assert s.cache_dit == CacheDitSettings(
        enabled=True,
        primary=DBCacheKnobs(fn=2, bn=1, warmup=0, rdt=0.5, mc=-1, taylorseer=True, ts_order=2),
        secondary=DBCacheKnobs(fn=2, bn=1, warmup=0, rdt=0.5, mc=-1, taylorseer=True, ts_order=2),
        scm_preset="fast",
        scm_policy="static",
        scm_compute_bins=(8, 3, 3),
        scm_cache_bins=(1, 2),
    )
    st = s.storage
    assert st.s3_enabled and st.bucket == "outputs" and st.region == "eu-west-1"
    assert st.endpoint_url == "http://127.0.0.1:9000"
    assert st.access_key_id == "AKIDEXAMPLE" and st.secret_access_key == "s3cr3t/value"


def test_secondary_twins_override_only_what_they_set():
    s = cache_dit_from_env(
        {
            "SGLANG_CACHE_DIT_RDT": "0.3",
            "SGLANG_CACHE_DIT_SECONDARY_WARMUP": "1",
            "SGLANG_CACHE_DIT_SECONDARY_TAYLORSEER": "1",
        }
    )
    assert s.primary.rdt == 0.3 and s.primary.warmup == 4 and not s.primary.taylorseer
    assert s.secondary.rdt == 0.3 and s.secondary.warmup == 1 and s.secondary.taylorseer


@pytest.mark.parametrize("word", ["true", "TRUE", "1", "yes", "Yes", "false", "0", "no", "NO"])
def test_boolean_words(word):
    expected = word.lower() in ("true", "1", "yes")
    assert cache_dit_from_env({"SGLANG_CACHE_DIT_ENABLED": word}).enabled is expected


INVALID = [
    ("SGLANG_CACHE_DIT_ENABLED", "on", "true/false/1/0/yes/no"),
    ("SGLANG_CACHE_DIT_ENABLED", "2", "true/false/1/0/yes/no"),
    ("SGLANG_CACHE_DIT_TAYLORSEER", "enabled", "true/false/1/0/yes/no"),
    ("SGLANG_CACHE_DIT_FN", "-1", ">= 0"),
    ("SGLANG_CACHE_DIT_FN", "one", ">= 0"),
    ("SGLANG_CACHE_DIT_BN", "1.5", ">= 0"),
    ("SGLANG_CACHE_DIT_WARMUP", "-3", ">= 0"),
    ("SGLANG_CACHE_DIT_RDT", "0", "> 0"),
    ("SGLANG_CACHE_DIT_RDT", "-0.1", "> 0"),
    ("SGLANG_CACHE_DIT_RDT", "nan", "> 0"),
    ("SGLANG_CACHE_DIT_RDT", "abc", "> 0"),
    ("SGLANG_CACHE_DIT_MC", "-2", ">= -1"),
    ("SGLANG_CACHE_DIT_MC", "x", ">= -1"),
    ("SGLANG_CACHE_DIT_TS_ORDER", "3", "1 or 2"),
    ("SGLANG_CACHE_DIT_TS_ORDER", "0", "1 or 2"),
    ("SGLANG_CACHE_DIT_SCM_PRESET", "turbo", "none/slow/medium/fast/ultra"),
    ("SGLANG_CACHE_DIT_SCM_POLICY", "fast", "dynamic/static"),
    ("SGLANG_CACHE_DIT_SECONDARY_FN", "-1", ">= 0"),
    ("SGLANG_CACHE_DIT_SECONDARY_RDT", "0", "> 0"),
    ("SGLANG_CACHE_DIT_SECONDARY_TS_ORDER", "5", "1 or 2"),
    ("SGLANG_CLOUD_STORAGE_TYPE", "gcs", "s3"),
    ("SGLANG_S3_ENDPOINT_URL", "minio:9000", "http://"),
    ("SGLANG_S3_BUCKET_NAME", "Bad_Bucket", "bucket name"),
    ("RAY_DIT_SINK_NICE", "20", "0 (normal priority) to 19"),
    ("RAY_DIT_SINK_NICE", "-5", "0 (normal priority) to 19"),
    ("RAY_DIT_SINK_NICE", "low", "0 (normal priority) to 19"),
    ("RAY_DIT_PNG_COMPRESS_LEVEL", "10", "0 (no compression, fastest) to 9"),
    ("RAY_DIT_PNG_COMPRESS_LEVEL", "1.5", "0 (no compression, fastest) to 9"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), INVALID)
def test_each_invalid_value_names_variable_value_and_allowed(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_settings(
            {name: value, "SGLANG_S3_BUCKET_NAME": "b-1"} if "BUCKET" not in name else {name: value}
        )
    message = str(err.value)
    assert name in message
    assert repr(value) in message
    assert allowed in message


@pytest.mark.parametrize(
    ("compute", "cache"),
    [("8,3,x", "1,2"), ("8,0", "1,2"), ("8,3", "-1"), ("8;3", "1"), (",", "1")],
)
def test_bins_must_be_positive_int_lists(compute, cache):
    env = {"SGLANG_CACHE_DIT_SCM_COMPUTE_BINS": compute, "SGLANG_CACHE_DIT_SCM_CACHE_BINS": cache}
    with pytest.raises(ConfigError, match="comma-separated positive integers"):
        cache_dit_from_env(env)


@pytest.mark.parametrize("name", ["SGLANG_CACHE_DIT_SCM_COMPUTE_BINS", "SGLANG_CACHE_DIT_SCM_CACHE_BINS"])
def test_bins_come_in_pairs(name):
    with pytest.raises(ConfigError, match="must be set together"):
        cache_dit_from_env({name: "4,2"})


def test_all_problems_are_reported_together():
    env = {
        "SGLANG_CACHE_DIT_ENABLED": "maybe",
        "SGLANG_CACHE_DIT_FN": "-5",
        "SGLANG_CACHE_DIT_TS_ORDER": "9",
        "SGLANG_CLOUD_STORAGE_TYPE": "s3",
    }
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    names = [
        "SGLANG_CACHE_DIT_ENABLED",
        "SGLANG_CACHE_DIT_FN",
        "SGLANG_CACHE_DIT_TS_ORDER",
        "SGLANG_S3_BUCKET_NAME",
    ]
    assert len(err.value.problems) == 4
    for name in names:
        assert name in str(err.value)


def test_s3_without_bucket_is_an_error_not_a_silent_fallback():
    with pytest.raises(ConfigError, match="SGLANG_S3_BUCKET_NAME is not set"):
        storage_from_env({"SGLANG_CLOUD_STORAGE_TYPE": "s3"})


def test_secret_never_appears_in_repr_or_errors():
    secret, key_id = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET", "AKIAIOSFODNN7SECRETID"
    settings = storage_from_env(
        {
            "SGLANG_CLOUD_STORAGE_TYPE": "s3",
            "SGLANG_S3_BUCKET_NAME": "outputs",
            "SGLANG_S3_ACCESS_KEY_ID": key_id,
            "SGLANG_S3_SECRET_ACCESS_KEY": secret,
        }
    )
    for text in (repr(settings), str(settings), repr(load_settings({}))):
        assert secret not in text and key_id not in text
    with pytest.raises(ConfigError) as err:
        storage_from_env({"SGLANG_S3_SECRET_ACCESS_KEY": secret, "SGLANG_CLOUD_STORAGE_TYPE": "s3"})
    assert secret not in str(err.value)


# -- per-request overrides (SGLang's cache_dit_params key names) -----------------------------


def test_request_overrides_beat_env_and_flow_to_secondary():
    env = cache_dit_from_env({"SGLANG_CACHE_DIT_SECONDARY_WARMUP": "1"})
    s = env.with_overrides(
        True,
        {
            "residual_diff_threshold": 0.12,
            "Fn_compute_blocks": 2,
            "scm_preset": "fast",
            "secondary": {"max_warmup_steps": 2},
        },
    )
    assert s.enabled and s.primary.rdt == 0.12 and s.primary.fn == 2
    assert s.secondary.rdt == 0.12 and s.secondary.fn == 2 and s.secondary.warmup == 2
    assert s.scm_preset == "fast"
    assert env.with_overrides(None, None) == env
    assert env.with_overrides(False, None).enabled is False


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"residual_diff_thresh": 0.1}, "unknown keys ['residual_diff_thresh']"),
        ({"residual_diff_threshold": -1}, "residual_diff_threshold=-1: must be a number > 0"),
        ({"taylorseer_order": 3}, "taylorseer_order=3: must be 1 or 2"),
        ({"scm_preset": "turbo"}, "scm_preset='turbo'"),
        ({"scm_compute_bins": [4, 2]}, "must be given together"),
        ({"scm_compute_bins": [4, 0], "scm_cache_bins": [1]}, "scm_compute_bins"),
        ({"secondary": {"scm_preset": "fast"}}, "secondary has unknown keys"),
        ({"secondary": 3}, "secondary must be an object"),
        ({"enable_taylorseer": "sometimes"}, "enable_taylorseer='sometimes'"),
    ],
)
def test_bad_request_overrides_name_the_key(params, fragment):
    with pytest.raises(ConfigError) as err:
        CacheDitSettings().with_overrides(True, params)
    assert fragment in str(err.value)


def test_describe_is_stable_and_informative():
    s = CacheDitSettings(enabled=True, scm_preset="fast", scm_policy="static")
    assert s.describe() == "DBCache_F1B0_W4MC3_R0.24_SCM-fast-static"
    assert CacheDitSettings().describe() == "NONE"
