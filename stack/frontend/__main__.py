"""`python -m stack.frontend --port P`: serve the web app on 127.0.0.1:P."""

from __future__ import annotations

import argparse

import uvicorn

from stack.frontend.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stack.frontend", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info", access_log=True)


if __name__ == "__main__":
    main()
