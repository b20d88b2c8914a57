"""The toy target's seed hook: what a real target does with its admin account, in miniature."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def seed(stack: Any) -> None:
    """Ask service a who it is, as a seed asks a fresh platform for its first account."""
    with urllib.request.urlopen(f"{stack.urls['a_url']}/info", timeout=5) as response:
        stack.seed_data["a_name"] = json.load(response)["name"]


def broken(stack: Any) -> None:
    """A seed that fails: the start must fail naming the hook, and stop what it started."""
    raise RuntimeError("the admin account could not be made")
