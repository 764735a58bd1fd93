"""The operator console: static pages served by the admin at ``/console``.

Plain HTML, CSS and small ES modules of our own (``static/``), no build step and no third-party
origin: every figure on the pages comes from the documented admin API, called by the browser with
the operator's token as ``Authorization: Bearer`` (kept in ``sessionStorage``; never in a URL or a
cookie). The files are read once, at import, into memory; only those files are served, each with
a strict Content-Security-Policy (:data:`CSP`: no inline script or style, nothing from another
origin, no framing), ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
See docs/console.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from admin.errors import NotFound
from admin.framework import error_response
from admin.inputs import new_request_id

PREFIX: Final = "/console"

CSP: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'none'",
        "object-src 'none'",
        "frame-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)

SECURITY_HEADERS: Final = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str

    def __repr__(self) -> str:
        return f"<Asset {self.media_type} {len(self.body)} bytes {self.etag}>"


def load_assets() -> dict[str, Asset]:
    """Every file under ``static/`` by its path relative to it (``pages/rollout.js``)."""
    out: dict[str, Asset] = {}
    root = resources.files(__package__).joinpath("static")

    def walk(node: resources.abc.Traversable, rel: str) -> None:
        for child in node.iterdir():
            name = f"{rel}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
                continue
            suffix = child.name[child.name.rfind(".") :]
            if suffix not in _TYPES:
                continue
            body = child.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:16]
            out[name] = Asset(body, _TYPES[suffix], f'"{digest}"')

    walk(root, "")
    return out


ASSETS: Final = load_assets()


def _answer(request: Request, asset: Asset) -> Response:
    headers = {**SECURITY_HEADERS, "etag": asset.etag, "cache-control": "no-cache"}
    if asset.etag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


async def index(request: Request) -> Response:
    return _answer(request, ASSETS["index.html"])


async def redirect(_request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=308, headers=SECURITY_HEADERS)


async def asset(request: Request) -> Response:
    path = request.path_params["path"]
    found = ASSETS.get(path)
    if found is None:
        resp = error_response(NotFound(f"no such console file: {path}"), new_request_id())
        resp.headers.update(SECURITY_HEADERS)
        return resp
    return _answer(request, found)


def routes() -> list[BaseRoute]:
    """The console's routes, for the admin app (GET and HEAD only; no API behind them)."""
    return [
        Route(PREFIX, redirect, methods=["GET", "HEAD"]),
        Route(f"{PREFIX}/", index, methods=["GET", "HEAD"]),
        Route(f"{PREFIX}/{{path:path}}", asset, methods=["GET", "HEAD"]),
    ]
