"""External mode: URLs from THROUGHLINE_* variables, nothing started, fault journeys skip with a reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.process import ServiceStartError
from harness.stack import ENV_NAMES, ServiceNotControllable, Stack

pytest_plugins = ["pytester"]


def test_should_refuse_external_mode_without_every_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THROUGHLINE_TARGET", "external")
    for name in ENV_NAMES.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("THROUGHLINE_AUTH_URL", "http://auth.internal")
    with pytest.raises(ServiceStartError, match="THROUGHLINE_BACKEND_DSN"):
        Stack.from_environment()


def test_should_start_nothing_in_external_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THROUGHLINE_TARGET", "external")
    for key, name in ENV_NAMES.items():
        monkeypatch.setenv(name, f"http://{key}.example.internal")
    world = Stack.from_environment().start()
    assert world.external and not world.services
    assert world.env()["THROUGHLINE_FRONTEND_URL"] == "http://frontend_url.example.internal"
    with pytest.raises(ServiceNotControllable, match="THROUGHLINE_TARGET=external"):
        world.service("backend")


def test_fault_journey_should_skip_with_reason_in_external_mode(pytester: pytest.Pytester) -> None:
    root = Path(__file__).resolve().parent.parent
    pytester.makeconftest('pytest_plugins = ["harness.plugin"]')
    pytester.makepyfile(
        test_fault=textwrap.dedent(
            """
            def test_backend_restart(stack):
                stack.service("backend").restart()
            """
        )
    )
    env_lines = {name: f"http://{key}.example.internal" for key, name in ENV_NAMES.items()}
    for name, value in {**env_lines, "THROUGHLINE_TARGET": "external", "PYTHONPATH": str(root)}.items():
        pytester._monkeypatch.setenv(name, value)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*cannot be stopped or restarted: THROUGHLINE_TARGET=external*"])


def test_a_real_clickhouse_server_by_url_should_replace_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """THROUGHLINE_CLICKHOUSE_SERVER_URL: the local stack uses that server and starts no chdb one."""
    with Stack(only=("clickhouse",)) as other:
        monkeypatch.setenv("THROUGHLINE_CLICKHOUSE_SERVER_URL", other.urls["clickhouse_url"])
        with Stack(only=("redis", "clickhouse")) as world:
            assert "clickhouse" not in world.services
            assert world.urls["clickhouse_url"] == other.urls["clickhouse_url"]
