"""A minimal Turnout tenant runtime (Python standard library only).

It gets its managed deployment token from its environment, pulls its own config from the admin
with it, serves the GREETING from that config, polls the config cheaply with If-None-Match
(304 when nothing changed) and refreshes its token before it expires.

    TURNOUT_ADMIN_URL=http://127.0.0.1:8081 \
    TURNOUT_RUNTIME_TOKEN=tak_dep_... \
    PORT=9101 python3 examples/runtime.py

The token is the `services[].managed_token.token` of the deploy answer (shown once). Deploy
with an upstream pointing here, e.g. `upstreams: ["http://127.0.0.1:9101"]`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ADMIN = os.environ.get("TURNOUT_ADMIN_URL", "http://127.0.0.1:8081").rstrip("/")
POLL_SECONDS = float(os.environ.get("TURNOUT_POLL_SECONDS", "10"))


class Config:
    """The config this runtime serves with, and the token it fetches it with."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.values: dict[str, Any] = {}
        self.etag: str | None = None
        self.token_expires_at: int | None = None  # ms; None: until the deployment is retired
        self.lock = threading.Lock()

    def _call(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        req = urllib.request.Request(ADMIN + path, method=method, headers=headers)
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:  # 304, 401, ...
            return err.code, err.headers, b""

    def pull(self) -> int:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        status, head, body = self._call("GET", "/api/runtime/config", headers)
        if head.get("x-turnout-token-expires-at"):
            self.token_expires_at = int(head["x-turnout-token-expires-at"])
        if status == 200:
            with self.lock:
                self.values, self.etag = json.loads(body), head.get("etag")
        return status

    def refresh_if_due(self) -> None:
        """Swap to a successor token when less than three poll periods are left."""
        if self.token_expires_at is None:
            return
        if self.token_expires_at - time.time() * 1000 > 3 * POLL_SECONDS * 1000:
            return
        status, _, body = self._call("POST", "/api/runtime/token/refresh", {})
        if status == 201:
            doc = json.loads(body)
            self.token, self.token_expires_at = doc["token"], doc["expires_at"]

    def poll_forever(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            try:
                self.refresh_if_due()
                if self.pull() == 401:
                    print("runtime: token revoked or expired; serving the last config")
                    return
            except OSError as exc:  # the admin is down: keep the last config, try again
                print(f"runtime: config poll failed: {exc}")


def main() -> None:
    config = Config(os.environ["TURNOUT_RUNTIME_TOKEN"])
    status = config.pull()
    if status != 200:
        raise SystemExit(f"runtime: GET /api/runtime/config answered {status}")
    threading.Thread(target=config.poll_forever, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with config.lock:
                env = config.values.get("env", {})
                version = config.values.get("version")
            body = json.dumps({"greeting": env.get("GREETING"), "version": version}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = int(os.environ.get("PORT", "9101"))
    print(
        f"runtime: deployment {config.values['deployment_id']} v{config.values['version']} on :{port}"
    )
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
