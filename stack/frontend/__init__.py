"""Throughline Chat web app (static single-page app served by a small FastAPI process)."""

from stack.frontend.app import create_app

__all__ = ["create_app"]
