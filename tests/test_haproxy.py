"""``ray-dit-haproxy``: Ray's HAProxy configuration without the splice options, then the real binary."""

from __future__ import annotations

import pytest

from ray_dit import haproxy

CONFIG = """defaults
    mode http
    option abortonclose
    option splice-request
    option splice-response
    option http-no-delay
backend b
    http-reuse always   # kept
"""


def test_only_the_splice_options_go():
    assert haproxy.without_splicing(CONFIG) == CONFIG.replace(
        "    option splice-request\n    option splice-response\n", ""
    )
    assert haproxy.without_splicing(haproxy.without_splicing(CONFIG)) == haproxy.without_splicing(CONFIG)


def test_the_command_rewrites_the_config_and_becomes_the_real_haproxy(tmp_path, monkeypatch):
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    ran: list[tuple[str, list[str]]] = []
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/this/command")  # what Ray was given
    monkeypatch.delenv("RAY_DIT_HAPROXY_BINARY", raising=False)
    monkeypatch.setattr(haproxy.os, "execv", lambda path, args: ran.append((path, args)))
    haproxy.main(["-db", "-f", str(config), "-sf", "123"])
    assert "splice" not in config.read_text() and "abortonclose" in config.read_text()
    [(binary, args)] = ran
    assert binary.endswith("/bin/haproxy") and binary != "/this/command", "it must not run itself"
    assert args == [binary, "-db", "-f", str(config), "-sf", "123"]


def test_other_invocations_pass_through(monkeypatch):
    ran: list[list[str]] = []
    monkeypatch.setenv("RAY_DIT_HAPROXY_BINARY", "/opt/haproxy")
    monkeypatch.setattr(haproxy.os, "execv", lambda path, args: ran.append(args))
    haproxy.main(["-v"])
    assert ran == [["/opt/haproxy", "-v"]]


@pytest.mark.parametrize("argv", [["-f"], []])
def test_a_dangling_flag_is_left_to_haproxy(monkeypatch, argv):
    monkeypatch.setenv("RAY_DIT_HAPROXY_BINARY", "/opt/haproxy")
    monkeypatch.setattr(haproxy.os, "execv", lambda path, args: None)
    haproxy.main(argv)
