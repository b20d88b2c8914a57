"""`python -m stack.backend --port P`: the backend on 127.0.0.1 (uvicorn, websockets)."""

from __future__ import annotations

import argparse

import uvicorn

from .app import create_app
from .log import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stack.backend")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    setup_logging()
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        ws="websockets-sansio",
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    main()
