"""What the pytester tests share to run Throughline's plugins in a throwaway project on the toy target."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "tests" / "toy_target"
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
addopts = -ra --strict-markers -p no:cacheprovider
"""
CONFTEST = 'pytest_plugins = ["harness.plugin_parallel", "harness.plugin", "harness.plugin_browser", "harness.plugin_target"]\n'
