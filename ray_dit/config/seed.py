"""The seed table: SGLang's variables with their defaults exactly as its documentation writes them.

It is the contract with SGLang: serve_config.yaml lists every one of these variables, and the
tests check this table against SGLang's document and against the code's own defaults.
"""

SEED_DEFAULTS: dict[str, str] = {  # "" = not set
    "SGLANG_CACHE_DIT_ENABLED": "false",
    "SGLANG_CACHE_DIT_FN": "1",
    "SGLANG_CACHE_DIT_BN": "0",
    "SGLANG_CACHE_DIT_WARMUP": "4",
    "SGLANG_CACHE_DIT_RDT": "0.24",
    "SGLANG_CACHE_DIT_MC": "3",
    "SGLANG_CACHE_DIT_TAYLORSEER": "false",
    "SGLANG_CACHE_DIT_TS_ORDER": "1",
    "SGLANG_CACHE_DIT_SCM_PRESET": "none",
    "SGLANG_CACHE_DIT_SCM_POLICY": "dynamic",
    "SGLANG_CACHE_DIT_SCM_COMPUTE_BINS": "",
    "SGLANG_CACHE_DIT_SCM_CACHE_BINS": "",
    "SGLANG_CLOUD_STORAGE_TYPE": "",
    "SGLANG_S3_BUCKET_NAME": "",
    "SGLANG_S3_ENDPOINT_URL": "",
    "SGLANG_S3_REGION_NAME": "us-east-1",
    "SGLANG_S3_ACCESS_KEY_ID": "",
    "SGLANG_S3_SECRET_ACCESS_KEY": "",
}
