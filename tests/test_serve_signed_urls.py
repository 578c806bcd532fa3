"""Signed content URLs: with RAY_DIT_API_KEY set, the ``url`` the API hands out works without the
key (a browser, an <img> tag, ``curl -O``), for a while, for exactly the output it names.

The signer alone, then the HTTP edge as a replica serves it (no cluster), then the app on a real
local Ray cluster with S3 off, fetched by a plain httpx client that sends no Authorization.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ray import cloudpickle
from starlette.testclient import TestClient

from ray_dit.config import ServerSettings, server_from_env
from ray_dit.serve.http import edge_settings
from ray_dit.serve.ingress import app as edge_app

if TYPE_CHECKING:
    from ray_dit.serve.signing import UrlSigner

KEY = "test-key-0123456789"
SIGNING_KEY = "url-signing-secret-9876543210"
RID = "img_0123456789abcdef"

# -- the signer ------------------------------------------------------------------------------------


def _signer(clock: float = 1_000_000.0, ttl_s: int = 60, secret: bytes = b"s" * 32) -> UrlSigner:
    from ray_dit.serve.signing import UrlSigner

    return UrlSigner(secret, ttl_s, clock=lambda: clock)


def _signer_like_the_server(**changes: object) -> UrlSigner:
    """A signer with the secret every replica derives from the API key (``KEY``)."""
    from ray_dit.serve.signing import UrlSigner, derive_secret

    values: dict[str, object] = {"secret": derive_secret(ServerSettings(api_key=KEY)), "ttl_s": 3600}
    return UrlSigner(**{**values, **changes})


def _refused(signer: UrlSigner, output_id: str, index: int, query: dict) -> str:
    from ray_dit.serve.signing import SignatureRefused

    with pytest.raises(SignatureRefused) as refused:
        signer.verify(output_id, index, query)
    assert str(refused.value) == refused.value.message
    return refused.value.code


ids = st.from_regex(r"img_[0-9a-f]{8,64}", fullmatch=True)
indexes = st.integers(0, 9999)
keys = st.one_of(st.none(), st.text(min_size=1, max_size=80))


@given(output_id=ids, index=indexes, key=keys)
def test_a_signed_query_verifies_for_its_output_only(output_id, index, key):
    signer = _signer()
    query = signer.sign(output_id, index, key)
    if key is not None:
        query["key"] = key
    signer.verify(output_id, index, query)  # as given: valid
    assert _refused(signer, output_id + "0", index, query) == "invalid_signature"
    assert _refused(signer, output_id, (index + 1) % 10000, query) == "invalid_signature"
    assert _refused(signer, output_id, index, {**query, "key": (key or "") + "x"}) == "invalid_signature"
    moved = {**query, "expires": str(int(query["expires"]) + 1)}
    assert _refused(signer, output_id, index, moved) == "invalid_signature"
    flipped = query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")
    assert _refused(signer, output_id, index, {**query, "signature": flipped}) == "invalid_signature"
    other = _signer(secret=b"t" * 32)  # another deployment's secret
    assert _refused(other, output_id, index, query) == "invalid_signature"


def test_expiry_and_malformed_queries():
    issued = _signer(clock=1000.0, ttl_s=60).sign(RID, 0)
    assert issued["expires"] == "1060"
    _signer(clock=1060.0).verify(RID, 0, issued)  # valid up to its expiry, inclusive
    assert _refused(_signer(clock=1060.5), RID, 0, issued) == "url_expired"
    signer = _signer()
    for query in (
        {},
        {"expires": issued["expires"]},
        {"signature": issued["signature"]},
        {**issued, "expires": "soon"},
        {**issued, "expires": "-5"},
        {**issued, "expires": "9" * 40},
        {**issued, "signature": "é" * 64},
    ):
        assert _refused(signer, RID, 0, query) == "invalid_signature", query


def test_the_secret_is_shared_by_replicas_and_never_shown():
    from ray_dit.serve.signing import UrlSigner, derive_secret

    env = {"RAY_DIT_API_KEY": KEY}
    first, second = derive_secret(server_from_env(env)), derive_secret(server_from_env(dict(env)))
    assert first == second and first is not None  # every replica with the same env agrees
    assert KEY.encode() not in first  # derived, not the API key itself
    assert derive_secret(server_from_env({"RAY_DIT_API_KEY": KEY + "2"})) != first
    assert derive_secret(server_from_env({})) is None  # auth off: URLs stay unsigned
    explicit = server_from_env({**env, "RAY_DIT_URL_SIGNING_KEY": SIGNING_KEY})
    assert derive_secret(explicit) == SIGNING_KEY.encode()
    settings = server_from_env(
        {**env, "RAY_DIT_URL_SIGNING_KEY": SIGNING_KEY, "RAY_DIT_CONTENT_URL_TTL_S": "5"}
    )
    signer = UrlSigner.from_settings(settings)
    assert signer is not None and signer.ttl_s == 5
    assert UrlSigner.from_settings(ServerSettings(api_key=KEY)).ttl_s == 3600  # S3's presign default
    for text in (repr(signer), str(signer), repr(settings), str(settings), f"{settings}"):
        assert SIGNING_KEY not in text and KEY not in text and first.hex() not in text


# -- the HTTP edge, as a replica serves it ----------------------------------------------------------


@pytest.fixture
def edge(monkeypatch):
    from ray_dit.serve.signing import UrlSigner

    monkeypatch.setenv("RAY_DIT_API_KEY", KEY)
    monkeypatch.setenv("RAY_DIT_CONTENT_URL_TTL_S", "1")
    edge_settings.cache_clear()
    served = cloudpickle.loads(cloudpickle.dumps(edge_app))  # what serve.ingress does with the app
    with TestClient(served, raise_server_exceptions=False) as client:
        yield client, UrlSigner.from_settings(server_from_env())
    edge_settings.cache_clear()


def test_the_edge_lets_signed_content_urls_through_and_refuses_the_rest(edge):
    client, short = edge  # signs as the server does with RAY_DIT_CONTENT_URL_TTL_S=1
    signer = _signer_like_the_server()  # the same secret, a longer life
    image = f"/v1/images/{RID}_0/content?" + urlencode(signer.sign(RID, 0))
    video = "/v1/videos/video_0123456789abcdef/content?" + urlencode(signer.sign("video_0123456789abcdef", 0))
    for path in (image, video):
        # Past the check the route needs its replica, which a bare app has not: anything but 401/403.
        assert client.get(path).status_code not in (401, 403), path
        assert client.get(path.split("?")[0]).status_code == 401  # no signature: the key is needed
    # A signature is no key to any other route, even one made for that route's id.
    signed_models = "/v1/models?" + urlencode(signer.sign(RID, 0))
    assert client.get(signed_models).json()["error"]["code"] == "invalid_api_key"
    bad = client.get(f"/v1/images/{RID}_1/content?" + urlencode(signer.sign(RID, 0)))
    assert bad.status_code == 403, bad.text
    assert bad.json()["error"]["code"] == "invalid_signature"
    assert bad.json()["error"]["type"] == "permission_error"
    query = short.sign(RID, 0)
    time.sleep(max(0.0, int(query["expires"]) - time.time()) + 0.05)  # its one second runs out
    expired = client.get(f"/v1/images/{RID}_0/content?" + urlencode(query))
    assert expired.status_code == 403 and expired.json()["error"]["code"] == "url_expired"
    assert "RAY_DIT_CONTENT_URL_TTL_S" in expired.json()["error"]["message"]


# -- the app on a real cluster, S3 off ----------------------------------------------------------------


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def _with_path(url: str, old: str, new: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.replace(old, new)))


@pytest.fixture(scope="module")
def served(ray_serve):
    from ray import serve

    from ray_dit.serve.app import compose, parse_args

    cfg = parse_args({"model": "demo:flux-tiny", "device": "cpu"})
    serve.run(compose(cfg, ingress_env={"RAY_DIT_API_KEY": KEY}), name="signed", route_prefix="/signed")
    try:
        yield ray_serve.url + "/signed"
    finally:
        serve.delete("signed")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_url_responses_work_without_the_key_and_only_as_given(served):
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "x", "size": "64x64", "num_inference_steps": 2, "n": 2}
    with httpx.Client(base_url=served, timeout=60, headers=auth) as api:
        first, second = (api.post("/v1/images/generations", json=body) for _ in range(2))
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    url, url_1 = (item["url"] for item in first.json()["data"])
    other = second.json()["data"][0]["url"]
    assert url.startswith(served + "/v1/images/"), url

    fetched = httpx.get(url, timeout=30)  # a browser: no Authorization header
    assert fetched.status_code == 200, fetched.text
    assert fetched.content[:8] == b"\x89PNG\r\n\x1a\n" and fetched.headers["content-type"] == "image/png"
    assert httpx.get(url_1, timeout=30).status_code == 200
    assert "signature=" in url and "expires=" in url

    expires = dict(parse_qsl(urlsplit(url).query))["expires"]
    signature = dict(parse_qsl(urlsplit(url).query))["signature"]
    rid, other_rid = first.json()["id"], second.json()["id"]
    tampered = {
        "id": _with_path(url, rid, other_rid),  # an output that exists, but not this URL's
        "index": _with_path(url, f"{rid}_0", f"{rid}_1"),
        "key": _with_query(url, key=f"ray-dit/2026/01/01/{rid}_0.png"),
        "expiry": _with_query(url, expires=str(int(expires) + 3600)),
        "signature": _with_query(url, signature=signature[::-1]),
        "garbage": _with_query(url, expires="tomorrow", signature="\u00e9"),
    }
    for what, bad in tampered.items():
        resp = httpx.get(bad, timeout=30)
        assert resp.status_code == 403, (what, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "invalid_signature" and error["type"] == "permission_error", what
        assert "signature" in error["message"] or "expires" in error["message"], what
        assert KEY not in resp.text

    # A URL correctly signed an hour ago with a one-hour life: expired, and said so.
    past = _signer_like_the_server(clock=lambda: time.time() - 7200)
    old = _with_query(url.split("?")[0], **past.sign(rid, 0))
    resp = httpx.get(old, timeout=30)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "url_expired", resp.text

    bare = url.split("?")[0]
    assert httpx.get(bare, timeout=30).status_code == 401  # no signature, no key: as every /v1 route
    assert httpx.get(bare, headers=auth, timeout=30).content == fetched.content  # the key still works
    assert httpx.get(other, timeout=30).status_code == 200


@pytest.fixture(scope="module")
def served_video(ray_serve):
    from ray import serve

    from ray_dit.serve.app import compose, parse_args

    cfg = parse_args({"model": "demo:wan-tiny", "device": "cpu"})
    serve.run(compose(cfg, ingress_env={"RAY_DIT_API_KEY": KEY}), name="signedvid", route_prefix="/signedvid")
    try:
        yield ray_serve.url + "/signedvid"
    finally:
        serve.delete("signedvid")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_completed_video_job_shows_a_signed_url(served_video):
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "x", "size": "64x64", "num_frames": 5, "num_inference_steps": 2}
    with httpx.Client(base_url=served_video, timeout=60, headers=auth) as api:
        created = api.post("/v1/videos", json=body)
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 60
        job = created.json()
        while job["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = api.get(f"/v1/videos/{job_id}").json()
        assert job["status"] == "completed", job
        listed = {v["id"]: v for v in api.get("/v1/videos").json()["data"]}
        with_key = api.get(f"/v1/videos/{job_id}/content")
    url = job["url"]  # S3 is off: this server's content route, signed
    assert url.startswith(f"{served_video}/v1/videos/{job_id}/content?"), url
    assert listed[job_id]["url"].startswith(f"{served_video}/v1/videos/{job_id}/content?")
    fetched = httpx.get(url, timeout=30)  # no Authorization header
    assert fetched.status_code == 200, fetched.text
    assert fetched.content[4:8] == b"ftyp" and fetched.content == with_key.content
    assert fetched.headers["content-type"] == "video/mp4"
    other = _with_path(url, job_id, "video_" + "0" * 32)
    refused = httpx.get(other, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "invalid_signature"
