"""`serve run serve_config.yaml` as a real subprocess: ready, answers (with auth on), stops on SIGTERM."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from serve_helpers import RAY_ENV, assert_a_disconnect_frees_the_dit, free_port

from ray_dit.demo.judge import judge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-0123456789"
PROMPT = "a yellow triangle on a purple background"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_commands(sid: int) -> dict[int, str]:
    """pid -> executable name of every process in session ``sid``. Ray puts its workers (and
    the HAProxy they start) in process groups of their own, but they stay in the session."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                found[int(entry.name)] = (entry / "comm").read_text().strip()
    return found


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve run exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"serve run not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def test_serve_run_config_answers_with_auth_and_stops_on_sigterm(tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    env_vars = config["applications"][0]["runtime_env"]["env_vars"]
    env_vars["RAY_DIT_SPOOL_DIR"] = str(tmp_path / "spool")
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "serve.log"
    # Ray's high-throughput mode, as k8s/rayservice.yaml runs it: HAProxy on the HTTP port
    # forwarding to the ingress replica's own HTTP server, and handles that default to by-value
    # gRPC calls (the app must still pass frames DiT -> sink by reference). The other serve tests
    # run in Serve's default mode.
    env = {
        **os.environ,
        **RAY_ENV,
        "RAY_DIT_API_KEY": API_KEY,
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # As k8s/ sets it: HAProxy without Ray's splice options, which lose some disconnects.
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(Path(sys.executable).with_name("ray-dit-haproxy")),
    }
    env.pop("RAY_ADDRESS", None)
    serve_bin = Path(sys.executable).with_name("serve")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(serve_bin), "run", "--address", "local", str(path)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: nothing else gets our signals
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log)
        assert "haproxy" in _session_commands(proc.pid).values(), "HAProxy is not running"
        with httpx.Client(base_url=url, timeout=60) as http:
            # The embedded default is the trained demo:shapes: the picture must follow the prompt.
            body = {"prompt": PROMPT, "response_format": "b64_json", "seed": 3}
            assert http.get("/health").status_code == 200  # open without a key
            missing = http.post("/v1/images/generations", json=body)
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
            wrong = http.post("/v1/images/generations", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "nope" not in wrong.text and API_KEY not in wrong.text
            assert http.get("/v1/models", headers={"Authorization": "Basic " + API_KEY}).status_code == 401
            ok = http.post(
                "/v1/images/generations", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
            )
            assert ok.status_code == 200, ok.text
            png = base64.b64decode(ok.json()["data"][0]["b64_json"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            verdict = judge(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), PROMPT)
            assert verdict.all_ok, f"{PROMPT!r} was drawn as {verdict.reading}"

            # Behind HAProxy the ingress's own HTTP server holds the connection: a client that goes
            # away must still stop its denoise. With Ray's splice options about half of these
            # rounds ran their abandoned denoise to its end (docs/serving.md).
            auth = {"Authorization": f"Bearer {API_KEY}"}
            assert_a_disconnect_frees_the_dit(http, "384x384", auth, steps=100, rounds=3)

        from openai import OpenAI

        client = OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        assert client.models.list().data[0].id == "demo:shapes"
        assert API_KEY not in log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            pytest.fail("serve run did not stop within 90 s of SIGTERM")
    deadline = time.monotonic() + 30
    while (_group_alive(proc.pid) or _session_commands(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = _session_commands(proc.pid)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in leftover:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not leftover, f"serve run left processes running after SIGTERM: {sorted(leftover.values())}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/health", timeout=2)
