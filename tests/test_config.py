"""The configuration contract: SGLang's names and defaults, strict parsing, one clear error."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import SecretStr

from ray_dit.config import (
    SEED_DEFAULTS,
    CacheDitSettings,
    CacheOverrides,
    DBCacheKnobs,
    ServerSettings,
    StorageSettings,
    cache_dit_from_env,
    load_settings,
    parse_overrides,
    server_from_env,
    storage_from_env,
)
from ray_dit.config.storage import parse_bucket, parse_endpoint
from ray_dit.errors import ConfigError, InvalidRequest

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
    assert (
        st.access_key_id.get_secret_value() == "AKIDEXAMPLE"
        and st.secret_access_key.get_secret_value() == "s3cr3t/value"
    )


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
    ("SGLANG_CACHE_DIT_FN", "-1", ">= 1"),
    ("SGLANG_CACHE_DIT_FN", "one", ">= 1"),
    ("SGLANG_CACHE_DIT_FN", "0", ">= 1"),  # cache-dit asserts Fn >= 1 on every cached call
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
    ("SGLANG_CACHE_DIT_SECONDARY_FN", "-1", ">= 1"),
    ("SGLANG_CACHE_DIT_SECONDARY_FN", "0", ">= 1"),
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


SECRET, KEY_ID, API_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET", "AKIAIOSFODNN7SECRETID", "sk-api-0123456789"
SECRET_ENV = {
    "SGLANG_CLOUD_STORAGE_TYPE": "s3",
    "SGLANG_S3_BUCKET_NAME": "outputs",
    "SGLANG_S3_ACCESS_KEY_ID": KEY_ID,
    "SGLANG_S3_SECRET_ACCESS_KEY": SECRET,
    "RAY_DIT_API_KEY": API_KEY,
}


def _renderings(obj: object) -> list[str]:
    """Every way a settings object is commonly turned into text, asdict included."""
    texts = [repr(obj), str(obj), f"{obj}", f"{obj!r}", "%s %r" % (obj, obj)]  # noqa: UP031
    if dataclasses.is_dataclass(obj):
        as_dict = dataclasses.asdict(obj)
        texts += [repr(as_dict), str(as_dict), str(dataclasses.astuple(obj))]
    return texts


@pytest.mark.parametrize(
    "make",
    [
        lambda: storage_from_env(SECRET_ENV),
        lambda: load_settings(SECRET_ENV),
        lambda: server_from_env(SECRET_ENV),
        lambda: StorageSettings(access_key_id=KEY_ID, secret_access_key=SECRET),  # plain str: wrapped
        lambda: ServerSettings(api_key=API_KEY),
        lambda: SecretStr(SECRET),
    ],
    ids=["storage", "load_settings", "server", "storage-from-str", "server-from-str", "secret"],
)
def test_secrets_never_appear_in_repr_str_format_or_asdict(make):
    for text in _renderings(make()):
        for value in (SECRET, KEY_ID, API_KEY):
            assert value not in text, text


def test_secrets_are_revealed_only_on_request_and_survive_pickling():
    storage = pickle.loads(pickle.dumps(storage_from_env(SECRET_ENV)))
    assert (
        storage.access_key_id.get_secret_value() == KEY_ID
        and storage.secret_access_key.get_secret_value() == SECRET
    )
    assert server_from_env(SECRET_ENV).api_key.get_secret_value() == API_KEY
    assert isinstance(StorageSettings(secret_access_key=SECRET).secret_access_key, SecretStr)
    assert storage_from_env({}).access_key_id is None and server_from_env({}).api_key is None
    assert ServerSettings(api_key="k").auth_enabled and not ServerSettings().auth_enabled


def test_secrets_never_appear_in_errors():
    with pytest.raises(ConfigError) as err:
        storage_from_env({"SGLANG_S3_SECRET_ACCESS_KEY": SECRET, "SGLANG_CLOUD_STORAGE_TYPE": "s3"})
    assert SECRET not in str(err.value)
    endpoint = "http://user:pw-" + SECRET + "@minio:9000"  # credentials in a URL are redacted too
    with pytest.raises(ConfigError) as err:
        storage_from_env({"SGLANG_S3_ENDPOINT_URL": endpoint})
    assert "SGLANG_S3_ENDPOINT_URL=<redacted>: must be" in str(err.value) and SECRET not in str(err.value)


# -- per-request overrides (SGLang's cache_dit_params key names) -----------------------------


def test_request_overrides_beat_env_and_flow_to_secondary():
    env = cache_dit_from_env({"SGLANG_CACHE_DIT_SECONDARY_WARMUP": "1"})
    params = {
        "residual_diff_threshold": 0.12,
        "Fn_compute_blocks": 2,
        "scm_preset": "fast",
        "secondary": {"max_warmup_steps": 2},
    }
    overrides = parse_overrides(True, params)
    assert overrides == CacheOverrides(
        enable_cache_dit=True,
        primary={"rdt": 0.12, "fn": 2},
        secondary={"warmup": 2},
        scm={"scm_preset": "fast"},
    )
    s = env.with_overrides(overrides)
    assert s.enabled and s.primary.rdt == 0.12 and s.primary.fn == 2
    assert s.secondary.rdt == 0.12 and s.secondary.fn == 2 and s.secondary.warmup == 2
    assert s.scm_preset == "fast"
    assert parse_overrides(None, None) == CacheOverrides()
    assert env.with_overrides(parse_overrides(None, None)) == env
    assert env.with_overrides(parse_overrides(False, None)).enabled is False
    assert env.with_overrides(parse_overrides("yes", {})).enabled is True


def test_request_overrides_parse_strings_and_bins():
    overrides = parse_overrides(
        None, {"scm_compute_bins": ["4", 2], "scm_cache_bins": "1,3", "max_continuous_cached_steps": None}
    )
    assert overrides.scm == {"scm_compute_bins": (4, 2), "scm_cache_bins": (1, 3)}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"residual_diff_thresh": 0.1}, "unknown keys ['residual_diff_thresh']"),
        ({"residual_diff_threshold": -1}, "residual_diff_threshold=-1: must be a number > 0"),
        ({"taylorseer_order": 3}, "taylorseer_order=3: must be 1 or 2"),
        ({"Fn_compute_blocks": 0}, "Fn_compute_blocks=0: must be an integer >= 1"),
        ({"secondary": {"Fn_compute_blocks": 0}}, "secondary.Fn_compute_blocks=0: must be an integer >= 1"),
        ({"scm_preset": "turbo"}, "scm_preset='turbo'"),
        ({"scm_compute_bins": [4, 2]}, "must be given together"),
        ({"scm_compute_bins": [4, 0], "scm_cache_bins": [1]}, "scm_compute_bins"),
        ({"secondary": {"scm_preset": "fast"}}, "secondary has unknown keys"),
        ({"secondary": 3}, "secondary must be an object"),
        ({"enable_taylorseer": "sometimes"}, "enable_taylorseer='sometimes'"),
        ([1, 2], "cache_dit_params must be an object"),
    ],
)
def test_bad_request_overrides_name_the_key(params, fragment):
    with pytest.raises(InvalidRequest) as err:
        parse_overrides(True, params)
    assert fragment in err.value.message and err.value.param == "cache_dit_params"


def test_step_counts_and_bins_take_any_size_like_sglang():
    """SGLang takes any integer >= 0; the engine bounds them by the request's steps (test_engine)."""
    huge = str(10**30)
    s = cache_dit_from_env(
        {
            "SGLANG_CACHE_DIT_WARMUP": huge,
            "SGLANG_CACHE_DIT_MC": huge,
            "SGLANG_CACHE_DIT_SCM_COMPUTE_BINS": huge,
            "SGLANG_CACHE_DIT_SCM_CACHE_BINS": "1",
        }
    )
    assert s.primary.warmup == s.primary.mc == s.scm_compute_bins[0] == 10**30
    overrides = parse_overrides(
        True, {"max_warmup_steps": 10**30, "scm_compute_bins": [2**40], "scm_cache_bins": [10**30]}
    )
    assert overrides.primary == {"warmup": 10**30}
    assert overrides.scm == {"scm_compute_bins": (2**40,), "scm_cache_bins": (10**30,)}


def test_request_overrides_name_the_knobs_they_set():
    overrides = parse_overrides(True, {"Fn_compute_blocks": 2, "secondary": {"Bn_compute_blocks": 1}})
    assert overrides.knob_key(0, "fn") == overrides.knob_key(1, "fn") == "cache_dit_params.Fn_compute_blocks"
    assert overrides.knob_key(1, "bn") == "cache_dit_params.secondary.Bn_compute_blocks"
    assert overrides.knob_key(0, "bn") is None and overrides.knob_key(0, "warmup") is None


def test_every_bad_override_is_named_at_once():
    with pytest.raises(InvalidRequest) as err:
        parse_overrides("maybe", {"taylorseer_order": 3, "secondary": {"residual_diff_threshold": 0}})
    message = err.value.message
    assert message.count("; ") == 2 and err.value.param == "cache_dit_params"
    for fragment in ("enable_cache_dit='maybe'", "taylorseer_order=3", "secondary.residual_diff_threshold=0"):
        assert fragment in message, message


def test_a_bad_enable_flag_alone_is_blamed_on_enable_cache_dit():
    with pytest.raises(InvalidRequest) as err:
        parse_overrides("on", {"residual_diff_threshold": 0.1})
    assert err.value.param == "enable_cache_dit"
    assert err.value.message == "enable_cache_dit='on': must be one of true/false/1/0/yes/no (any case)"


def test_describe_is_stable_and_informative():
    s = CacheDitSettings(enabled=True, scm_preset="fast", scm_policy="static")
    assert s.describe() == "DBCache_F1B0_W4MC3_R0.24_SCM-fast-static"
    assert CacheDitSettings().describe() == "NONE"


# -- S3 endpoint ports and bucket names: refused at start, naming the rule (issue 14, item 8) ----


def test_an_endpoint_port_outside_1_to_65535_is_refused():
    for url in ("http://minio:0", "http://minio:65536", "https://minio:00"):
        with pytest.raises(ConfigError) as err:
            storage_from_env({"SGLANG_S3_ENDPOINT_URL": url})
        assert f"SGLANG_S3_ENDPOINT_URL={url!r}: must be" in str(err.value) and "port 1-65535" in str(
            err.value
        )


@given(st.integers(0, 99_999), st.sampled_from(["minio", "127.0.0.1", "[::1]", "s3.example.com"]))
@example(0, "minio")
@example(65_535, "minio")
def test_endpoint_ports_are_exactly_1_to_65535(port, host):
    url = f"http://{host}:{port}"
    if 1 <= port <= 65_535:
        assert parse_endpoint(url) == url
    else:
        with pytest.raises(ValueError, match="1-65535"):
            parse_endpoint(url)


BAD_BUCKETS = [
    ("192.168.1.1", "not formatted as an IP address"),
    ("bucket..name", "no two adjacent periods"),
    ("xn--bucket", "no reserved prefix"),
    ("sthree-bucket", "no reserved prefix"),
    ("amzn-s3-demo-bucket", "no reserved prefix"),
    ("bucket-s3alias", "no reserved suffix"),
    ("bucket--ol-s3", "no reserved suffix"),
    ("bucket.mrap", "no reserved suffix"),
    ("bucket--x-s3", "no reserved suffix"),
    ("bucket--table-s3", "no reserved suffix"),
    ("ab", "3 to 63 characters"),
    ("a" * 64, "3 to 63 characters"),
    ("My-Bucket", "only lowercase letters, digits, '.' and '-'"),
    ("my_bucket", "only lowercase letters, digits, '.' and '-'"),
    ("-bucket", "begin and end with a letter or digit"),
    ("bucket.", "begin and end with a letter or digit"),
]


@pytest.mark.parametrize(("name", "rule"), BAD_BUCKETS, ids=[name[:20] for name, _ in BAD_BUCKETS])
def test_bucket_names_aws_refuses_are_refused_naming_the_rule(name, rule):
    with pytest.raises(ConfigError) as err:
        storage_from_env({"SGLANG_S3_BUCKET_NAME": name})
    assert f"SGLANG_S3_BUCKET_NAME={name!r}: must be a valid S3 bucket name" in str(err.value)
    assert rule in str(err.value)


LOWER_OR_DIGIT = set("abcdefghijklmnopqrstuvwxyz0123456789")


def aws_allows(name: str) -> bool:
    """AWS's documented rules for general purpose bucket names, written out plainly (no regex)."""
    parts = name.split(".")
    return (
        3 <= len(name) <= 63
        and set(name) <= LOWER_OR_DIGIT | {".", "-"}
        and name[0] in LOWER_OR_DIGIT
        and name[-1] in LOWER_OR_DIGIT
        and ".." not in name
        and not (len(parts) == 4 and all(part.isascii() and part.isdigit() for part in parts))
        and not name.startswith(("xn--", "sthree-", "amzn-s3-demo-"))
        and not name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"))
    )


bucket_like = st.builds(
    lambda head, middle, tail: head + middle + tail,
    st.sampled_from(["", "", "xn--", "sthree-", "amzn-s3-demo-", " "]),
    st.one_of(
        st.text(alphabet="ab09.-_B", max_size=66),
        st.lists(st.integers(0, 999).map(str), min_size=3, max_size=5).map(".".join),
    ),
    st.sampled_from(["", "", "-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3", "\n"]),
)


@given(bucket_like)
def test_bucket_names_are_accepted_exactly_when_aws_accepts_them(name):
    try:
        accepted = parse_bucket(name) == name.strip()
    except ValueError as exc:
        accepted = False
        assert "it breaks: " in str(exc)
    assert accepted == aws_allows(name.strip()), name
