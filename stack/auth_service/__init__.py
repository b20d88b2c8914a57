"""The reference platform's auth service (`python -m stack.auth_service --port P`)."""

from .app import create_app

__all__ = ["create_app"]
