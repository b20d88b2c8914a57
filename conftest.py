"""Registers Throughline's pytest plugins for the journeys and the framework's own tests."""

pytest_plugins = ["harness.plugin", "harness.plugin_browser", "harness.plugin_target"]
