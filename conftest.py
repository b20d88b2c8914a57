"""Registers Throughline's pytest plugins for the journeys and the framework's own tests."""

# plugin_parallel first: the others import from it, and pytest rewrites a plugin only if it imports it first.
pytest_plugins = [
    "harness.plugin_parallel",
    "harness.plugin_coverage",
    "harness.plugin",
    "harness.plugin_browser",
    "harness.plugin_target",
]
