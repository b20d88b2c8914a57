"""One service of the toy target: a stdlib HTTP server with /health and /info.

/health answers 200 when this service is up and, if TOY_UPSTREAM names another service, that
one's /health answers 200 as well; 503 otherwise. /info tells the name, pid and TOY_* variables.

usage: python server.py --port PORT --name NAME
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def upstream_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    name = "toy"

    def do_GET(self) -> None:
        if self.path == "/health":
            upstream = os.environ.get("TOY_UPSTREAM")
            healthy = not upstream or upstream_healthy(upstream)
            self.reply(200 if healthy else 503, {"healthy": healthy})
        elif self.path == "/info":
            env = {k: v for k, v in os.environ.items() if k.startswith("TOY_")}
            self.reply(200, {"name": self.name, "pid": os.getpid(), "env": env})
        else:
            self.reply(404, {"error": "not found"})

    def reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.name}: {format % args}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    Handler.name = args.name
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"toy {args.name} listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
