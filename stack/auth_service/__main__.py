"""`python -m stack.auth_service --port P`: serve create_app() on 127.0.0.1:P."""

from __future__ import annotations

import argparse

import uvicorn

from stack.common.request_id import configure_logging

from .app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stack.auth_service", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    configure_logging("auth")
    # access_log off: RequestIdMiddleware logs each request without its query string (tokens)
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
