"""The operator console's static files (admin/console): served at /console with a strict CSP,
nothing inline, nothing from another origin, and shipped in the wheel.

The pages themselves are driven in a real browser by tests/e2e/test_console.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from admin.console import ASSETS, CSP, SECURITY_HEADERS
from tests.test_setup import project as project  # the fixture: a copy of the source tree
from tests.test_setup import run_setup

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "admin" / "console" / "static"


def assert_secure(headers: dict[str, str] | object) -> None:
    h = {k.lower(): v for k, v in dict(headers).items()}  # type: ignore[call-overload]
    for name, value in SECURITY_HEADERS.items():
        assert h.get(name) == value, (name, h.get(name))


def test_csp_is_strict() -> None:
    parts = dict(p.strip().split(" ", 1) for p in CSP.split(";"))
    assert parts["default-src"] == "'self'"
    assert parts["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval', no hosts
    assert parts["style-src"] == "'self'"
    assert parts["object-src"] == "'none'"
    assert parts["frame-ancestors"] == "'none'"
    assert parts["base-uri"] == "'none'"
    assert "unsafe" not in CSP and "http" not in CSP and "*" not in CSP


def test_console_is_served_with_its_security_headers(client: TestClient) -> None:
    r = client.get("/console", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/console/"
    r = client.get("/console/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert_secure(r.headers)
    assert '<script type="module" src="/console/app.js">' in r.text
    for name, asset in ASSETS.items():
        got = client.get(f"/console/{name}")
        assert got.status_code == 200, name
        assert got.content == asset.body and got.headers["content-type"] == asset.media_type
        assert_secure(got.headers)
        again = client.get(f"/console/{name}", headers={"if-none-match": got.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    assert client.head("/console/app.js").status_code == 200


def test_unknown_files_and_other_methods_are_refused(client: TestClient) -> None:
    for path in ("/console/nope.js", "/console/../admin/app.py", "/console/%2e%2e/app.py"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    r = client.get("/console/nope.js")
    assert_secure(r.headers)
    assert client.post("/console/", json={}).status_code == 405


def test_every_static_file_is_served_and_types_are_known() -> None:
    on_disk = {p.name for p in STATIC.iterdir() if p.is_file()}
    assert on_disk == set(ASSETS), "a file under static/ would not be served (unknown type?)"
    assert {"index.html", "app.js", "api.js", "console.css"} <= on_disk


def test_nothing_inline_and_no_other_origin() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        # No absolute URL anywhere but the SVG namespace (an identifier, never fetched).
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path.name, urls)
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{path.name}: inline script"
            assert "<style" not in text and " style=" not in text, f"{path.name}: inline style"
            assert not re.search(r"\son\w+=", text), f"{path.name}: inline event handler"
        if path.suffix == ".js":
            assert "innerHTML" not in text and "eval(" not in text, path.name
            assert "localStorage" not in text and "document.cookie" not in text, path.name
            assert ".style" not in text and '"style"' not in text, f"{path.name}: inline style"


def test_the_console_ships_in_the_package(project: Path, tmp_path: Path) -> None:
    """setuptools' package-data puts every static file into the built package (pure build)."""
    out = tmp_path / "lib"
    done = run_setup(project, "-q", "build_py", "--build-lib", str(out), compile_flag="0")
    assert done.returncode == 0, done.stderr[-3000:]
    shipped = {p.name for p in (out / "admin" / "console" / "static").iterdir()}
    assert shipped == set(ASSETS)
