"""The operator console in a real browser: headless Chromium (Debian's ``chromium`` with its
matching ``chromium-driver``, driven by Selenium) against a real ``turnout admin`` and
``turnout gateway`` on loopback, with real upstreams and a private Redis.

One process set and one browser serve the module; the tests run in order and build on each
other (log in → space → service → rollout → viewer → pods → audit). Every page is checked for
the CSP at work (no inline script or style, nothing fetched from another origin, no CSP report
in the browser's log), keyboard reachability of every control and labels on every input, and a
screenshot of each is written to ``build/test-artifacts/console/``.

A missing browser or driver fails these tests (``scripts/test`` installs both as root, as it
does redis-server); it never skips them.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from admin.billing.meters import METERS
from admin.console import CSP
from tests.support.admin_proc import AdminProcess, ApiResponse
from tests.support.gateway_proc import GatewayProcess
from tests.support.net import free_port
from tests.support.redis_server import RedisServer
from tests.support.upstream import started_upstreams

# One browser and one process set per worker that runs tests of this module (the suite is
# distributed with plain `-n`: see scripts/test for why not --dist loadgroup).
pytestmark = [pytest.mark.e2e]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "test-artifacts" / "console"
PREFIX = "tcons"
BASE = "turnout.localhost"
WAIT = 20.0  # seconds: the longest any single wait in this module may take
_LAUNCH = "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))"


# ---------------------------------------------------------------------- processes


@dataclass
class Stack:
    admin: AdminProcess
    gw: GatewayProcess
    v1: str
    v2: str
    space: str
    facts: dict[str, Any] = field(default_factory=dict)  # what one test leaves for the next

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        resp: ApiResponse = self.admin.call(method, path, json_body=body, headers=headers)
        assert 200 <= resp.status < 300, resp
        return resp.json()

    def deploy(self, app: str, upstream: str, rollout: dict[str, Any]) -> Any:
        doc = {
            "apiVersion": "turnout/v1",
            "kind": "App",
            "metadata": {"name": app},
            "spec": {
                "services": {
                    app: {"type": "http", "upstreams": [upstream], "env": {"GREETING": "hi"}}
                },
                "routes": [{"service": app}],
                "rollout": rollout,
            },
        }
        return self.api("POST", f"/api/spaces/{self.space}/app-deployments", doc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("console")
    with (
        RedisServer(workdir=work / "redis") as redis,
        started_upstreams(work, "v1", "v2") as (v1, v2),
    ):
        gw = GatewayProcess(
            redis.url, work / "gw", prefix=PREFIX, extra_args=["--trusted-proxy", "127.0.0.0/8"]
        )
        admin = AdminProcess(
            work / "admin.db",
            redis.url,
            work / "admin",
            prefix=PREFIX,
            extra_env={"TURNOUT_ROLLOUT_INTERVAL": "1", "TURNOUT_USAGE_INTERVAL": "1"},
        )
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(gw.start), pool.submit(admin.start)]
        try:
            for future in started:
                future.result()
            resp = admin.call("POST", "/api/spaces", json_body={"name": "console"})
            assert resp.status == 201, resp
            yield Stack(admin, gw, v1.url, v2.url, resp.json()["id"])
        finally:
            admin.stop()
            gw.stop()


class Traffic:
    """Requests to one hostname through the gateway from many client addresses, in a thread,
    until stopped (or ``count`` sent)."""

    def __init__(self, port: int, host: str, count: int | None = None) -> None:
        self.port, self.host, self.count = port, host, count
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"traffic-{host}", daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            while not self._stop.is_set() and (self.count is None or self.sent < self.count):
                client = f"10.9.{(self.sent >> 8) % 256}.{self.sent % 256}"
                try:
                    conn.request("GET", "/", headers={"Host": self.host, "X-Forwarded-For": client})
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                    time.sleep(0.05)
                    continue
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                self.sent += 1
                if self.count is None:
                    time.sleep(0.004)  # ~200 req/s: plenty for the gate, gentle on 2 cores
        finally:
            conn.close()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def join(self, timeout: float = WAIT) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"traffic to {self.host} did not finish"

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def routable(gw: GatewayProcess, host: str) -> None:
    """Wait until the gateway forwards requests for ``host`` (the admin published its route)."""

    def probe() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": host})
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    wait_api(probe, f"the gateway to route {host}")


# ---------------------------------------------------------------------- the browser


def _find_browser() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail(
            "the console's browser tests need headless Chromium and its driver: install "
            "Debian's `chromium` and `chromium-driver` (apt-get install chromium "
            "chromium-driver; scripts/test does it when run as root). Found: "
            f"chromium={browser}, chromedriver={driver}",
            pytrace=False,
        )
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    binary, driver_path = _find_browser()
    opts = Options()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
        "--no-first-run",
        "--disable-background-networking",  # nothing but the pages' own requests
        "--disable-component-update",
        "--disable-sync",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    except WebDriverException as exc:
        pytest.fail(f"chromium did not start through {driver_path}: {exc.msg}", pytrace=False)
    try:
        yield driver
    finally:
        driver.quit()


def until(
    driver: WebDriver, probe: Callable[[WebDriver], T], what: str, timeout: float = WAIT
) -> T:
    """``probe(driver)`` once it is truthy (stale elements count as not yet), or fail."""

    def attempt(d: WebDriver) -> Any:
        try:
            return probe(d)
        except StaleElementReferenceException:
            return None

    try:
        out: T = WebDriverWait(driver, timeout, poll_frequency=0.1).until(attempt)
    except Exception:
        shot = ARTIFACTS / f"timeout-{int(time.time())}.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what} (see {shot})"
        ) from None
    return out


def text_of(driver: WebDriver, css: str) -> str:
    els = driver.find_elements(By.CSS_SELECTOR, css)
    return els[0].text if els else ""


def go(driver: WebDriver, stack: Stack, route: str, ready: str) -> None:
    """Open ``#<route>`` of the console and wait for ``ready`` (a CSS selector) to appear
    (signing in as the system principal first when nobody is: a test run on its own)."""
    driver.get(f"{stack.admin.url}/console/#{route}")
    if driver.execute_script("return sessionStorage.getItem('turnout.console.token')") is None:
        sign_in(driver, stack.admin.url, stack.admin.token)
        driver.get(f"{stack.admin.url}/console/#{route}")
    until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ready), f"{ready} on #{route}")


def screenshot(driver: WebDriver, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    # The window's height includes the (headless) browser's own frame: measure the viewport.
    height, inner, outer = driver.execute_script(
        "return [document.documentElement.scrollHeight, innerHeight, outerHeight]"
    )
    frame = max(0, int(outer) - int(inner))
    driver.set_window_size(1280, max(900, min(int(height) + frame + 16, 4000)))
    assert driver.save_screenshot(str(path)), path
    driver.set_window_size(1280, 1400)
    assert path.stat().st_size > 5000, f"{path} looks empty"
    return path


def check_page(driver: WebDriver, stack: Stack, name: str) -> None:
    """What every page must satisfy: CSP at work, same origin only, labels, keyboard reach;
    then a screenshot."""
    origin = stack.admin.url
    doc = driver.execute_script(
        """return {
          inlineScripts: document.querySelectorAll('script:not([src])').length,
          styled: document.querySelectorAll('[style]').length,
          styles: document.querySelectorAll('style').length,
          resources: performance.getEntriesByType('resource').map(e => e.name),
          nav: performance.getEntriesByType('navigation').map(e => e.name),
          cookies: document.cookie,
        }"""
    )
    assert doc["inlineScripts"] == 0 and doc["styles"] == 0 and doc["styled"] == 0, doc
    foreign = [u for u in doc["resources"] + doc["nav"] if not u.startswith(origin + "/")]
    assert not foreign, f"{name}: loaded from another origin: {foreign}"
    assert doc["cookies"] == ""
    logs = driver.get_log("browser")
    violations = [e for e in logs if "Content Security Policy" in e.get("message", "")]
    assert not violations, violations
    errors = [e for e in logs if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
    # API refusals the page shows on purpose are logged as failed fetches; nothing else is.
    assert all(" - Failed to load resource" in e["message"] for e in errors), errors
    unlabelled = driver.execute_script(
        """return [...document.querySelectorAll('input, select, textarea')].filter(e =>
             !(e.id && document.querySelector(`label[for="${e.id}"]`)) &&
             !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')
           ).map(e => e.outerHTML)"""
    )
    assert not unlabelled, f"{name}: inputs without a label: {unlabelled}"
    nameless = driver.execute_script(
        """return [...document.querySelectorAll('button, a[href]')].filter(e =>
             !e.textContent.trim() && !e.getAttribute('aria-label')).map(e => e.outerHTML)"""
    )
    assert not nameless, f"{name}: controls without a name: {nameless}"
    assert_keyboard_reachable(driver, name)
    screenshot(driver, name)


def assert_keyboard_reachable(driver: WebDriver, name: str) -> None:
    """Tab from the top of the page: every visible, enabled control takes the focus."""
    total = driver.execute_script(
        """const sel = 'a[href], button:not([disabled]), input:not([disabled]),' +
                       ' select:not([disabled]), textarea, summary';
           const all = [...document.querySelectorAll(sel)].filter(e => e.getClientRects().length);
           all.forEach((e, i) => e.setAttribute('data-kbd', i));
           document.activeElement && document.activeElement.blur();
           window.scrollTo(0, 0);
           return all.length"""
    )
    assert total > 0, f"{name}: no controls at all?"
    seen: set[str] = set()
    actions = webdriver.ActionChains(driver)
    for _ in range(total + 5):
        actions.send_keys(Keys.TAB).perform()
        got = driver.execute_script("return document.activeElement.getAttribute('data-kbd')")
        if got is not None:
            seen.add(str(got))
        if len(seen) == total:
            break
    missing = driver.execute_script(
        "return [...document.querySelectorAll('[data-kbd]')]"
        ".filter(e => !arguments[0].includes(e.getAttribute('data-kbd'))).map(e => e.outerHTML)",
        sorted(seen),
    )
    assert not missing, f"{name}: not reachable with Tab: {missing}"


def sign_in(driver: WebDriver, origin: str, token: str) -> None:
    driver.get(f"{origin}/console/")
    field = until(driver, lambda d: d.find_element(By.ID, "token"), "the sign-in form")
    field.clear()
    field.send_keys(token)
    field.send_keys(Keys.ENTER)  # submitting with the keyboard
    until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#logout"), "signed in")


def wait_api(probe: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def paused_rollout(stack: Stack) -> str:
    """The app deployment of a paused staged rollout whose history holds a pause and a refused
    second pause: the rollout test's, or (that test ran elsewhere) one made through the API."""
    if "rollout_app" not in stack.facts:
        stack.deploy("still", stack.v1, {"strategy": "direct"})
        staged = {"strategy": "staged", "stages": [{"weight": 10, "pause_minutes": 30}]}
        app = stack.deploy("still", stack.v2, staged)["id"]
        path = f"/api/spaces/{stack.space}/app-deployments/{app}/rollout/pause"
        stack.api("POST", path, {})
        assert stack.admin.call("POST", path, json_body={}).status == 409
        stack.facts["rollout_app"] = app
    app: str = stack.facts["rollout_app"]
    return app


# ---------------------------------------------------------------------- tests


def test_a_missing_browser_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(pytest.fail.Exception, match="install Debian's `chromium` and"):
        _find_browser()


def test_the_console_is_served_with_a_strict_csp(stack: Stack) -> None:
    for path in ("/console/", "/console/app.js", "/console/console.css"):
        resp = stack.admin.call("GET", path, auth=False)
        assert resp.status == 200, resp
        assert resp.headers["content-security-policy"] == CSP
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in CSP and "script-src 'self'" in CSP
        assert "object-src 'none'" in CSP and "frame-ancestors 'none'" in CSP
        assert "base-uri 'none'" in CSP and "unsafe-inline" not in CSP


def test_log_in_with_a_token(browser: WebDriver, stack: Stack) -> None:
    browser.get(f"{stack.admin.url}/console/")
    field = until(browser, lambda d: d.find_element(By.ID, "token"), "the sign-in form")
    label = browser.find_element(By.CSS_SELECTOR, "label[for=token]")
    assert "token" in label.text.lower()
    check_page(browser, stack, "00-login")
    field.send_keys("tak_pat_not-a-real-token")
    browser.find_element(By.ID, "login-submit").click()
    error = until(browser, lambda d: d.find_element(By.ID, "login-error"), "the refusal")
    assert "invalid_token" in error.text
    assert browser.execute_script("return sessionStorage.length") == 0
    sign_in(browser, stack.admin.url, stack.admin.token)
    until(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, f"[data-space='{stack.space}']"),
        "spaces",
    )
    # The token is in this tab's sessionStorage only: not in the URL, no cookie, no localStorage.
    stored = browser.execute_script("return sessionStorage.getItem('turnout.console.token')")
    assert stored == stack.admin.token
    assert stack.admin.token not in browser.current_url
    assert browser.get_cookies() == []
    assert browser.execute_script("return localStorage.length") == 0
    check_page(browser, stack, "01-spaces")


def test_the_space_page_shows_usage_bars_with_the_right_numbers(
    browser: WebDriver, stack: Stack
) -> None:
    base = f"/api/spaces/{stack.space}"
    for meter, units in (("llm_tokens_input", 1234), ("exec_seconds", 77)):
        body = {"meter": meter, "units": units, "idempotency_key": f"console-{meter}"}
        stack.api("POST", f"{base}/usage", body)
    usage = stack.api("GET", f"{base}/usage")
    account = stack.api("GET", f"{base}/billing")
    go(browser, stack, f"/spaces/{stack.space}", "[data-meter='llm_tokens_input']")
    for meter, want in usage["meters"].items():
        bar = browser.find_element(By.CSS_SELECTOR, f"[data-meter='{meter}']")
        assert int(bar.get_attribute("data-units") or -1) == want["units"], meter
        assert int(bar.get_attribute("data-quota") or -1) == want["quota"], meter
    tokens = browser.find_element(By.CSS_SELECTOR, "[data-meter='llm_tokens_input']")
    quota = usage["meters"]["llm_tokens_input"]["quota"]
    assert f"1,234 / {quota:,}" in tokens.text, tokens.text
    assert f"({usage['meters']['llm_tokens_input']['percent']:.1f} %)" in tokens.text
    fill = tokens.find_element(By.CSS_SELECTOR, ".meter-fill")
    assert float(fill.get_attribute("width") or 0) == pytest.approx(200 * 1234 / quota, abs=0.01)
    assert text_of(browser, "[data-plan]") == usage["plan"]
    assert browser.find_element(By.CSS_SELECTOR, "[data-badge]").text == account["status"]
    # The skip link takes the keyboard to the content, and stays on the page.
    skip = browser.find_element(By.CSS_SELECTOR, "a.skip")
    browser.execute_script("arguments[0].focus()", skip)
    skip.send_keys(Keys.ENTER)
    until(
        browser, lambda d: d.execute_script("return document.activeElement.id") == "main", "focus"
    )
    assert browser.current_url.endswith(f"#/spaces/{stack.space}")
    assert browser.find_elements(By.CSS_SELECTOR, "[data-meter]")
    check_page(browser, stack, "02-space")


def test_a_space_over_its_request_quota_shows_blocked(browser: WebDriver, stack: Stack) -> None:
    tiny = stack.api("POST", "/api/spaces", {"name": "tiny"})["id"]
    quotas = {m: {"quota": 5 if m == "wfp_requests" else 100} for m in METERS}
    stack.api("POST", "/api/plans", {"id": "plan_tiny", "name": "Tiny", "quotas": quotas})
    stack.api("PATCH", f"/api/spaces/{tiny}/billing", {"plan": "plan_tiny"})
    doc = Stack(stack.admin, stack.gw, stack.v1, stack.v2, tiny)
    doc.deploy("tiny", stack.v1, {"strategy": "direct"})
    routable(stack.gw, f"tiny.tiny.{BASE}")
    with Traffic(stack.gw.port, f"tiny.tiny.{BASE}", count=12) as traffic:
        traffic.join()
    assert traffic.statuses.get(200, 0) >= 5, traffic.statuses
    wait_api(
        lambda: stack.api("GET", f"/api/spaces/{tiny}/billing")["status"] == "blocked",
        "the usage collector to block the space",
    )
    go(browser, stack, "/", f"[data-space='{tiny}'] [data-blocked]")
    card = browser.find_element(By.CSS_SELECTOR, f"[data-space='{tiny}']")
    assert card.find_element(By.CSS_SELECTOR, "[data-badge]").text == "blocked"
    bar = card.find_element(By.CSS_SELECTOR, "[data-meter='wfp_requests']")
    usage = stack.api("GET", f"/api/spaces/{tiny}/usage")["meters"]["wfp_requests"]
    assert bar.get_attribute("data-units") == str(usage["units"]) and usage["units"] >= 5
    assert "meter-over" in (bar.get_attribute("class") or "")
    check_page(browser, stack, "02-spaces-blocked")


def test_the_service_page_split_matches_the_weights(browser: WebDriver, stack: Stack) -> None:
    stack.deploy("shop", stack.v1, {"strategy": "direct"})
    canary = stack.deploy("shop", stack.v2, {"strategy": "canary", "canary_weight": 20})
    sid = canary["services"][0]["service_id"]
    deps = stack.api("GET", f"/api/spaces/{stack.space}/services/{sid}/deployments")["items"]
    weights = {d["id"]: d["routing_weight"] for d in deps if d["routing_weight"] > 0}
    assert sorted(weights.values()) == [2000, 8000], deps
    host = f"shop.shop.{BASE}"
    routable(stack.gw, host)  # one request, then 119: the counters say 120
    with Traffic(stack.gw.port, host, count=119) as traffic:
        traffic.join()
    assert traffic.statuses == {200: 119}, traffic.statuses
    path = f"/api/spaces/{stack.space}/services/{sid}/traffic?minutes=5"
    seen: list[int] = []

    def settled() -> dict[str, Any] | None:
        # At least the 120 requests sent (a readiness probe that reached a deployment counts
        # too), and the same sum on two reads a flush interval apart: the count is complete.
        t: dict[str, Any] = stack.api("GET", path)
        seen.append(sum(d["requests"] for d in t["deployments"]))
        if len(seen) >= 2 and seen[-1] == seen[-2] >= 120:
            return t
        time.sleep(1.0)
        return None

    counted = wait_api(settled, "the gateway's counters to reach the admin", timeout=40)
    total = seen[-1]
    go(browser, stack, f"/spaces/{stack.space}/services/{sid}", ".split .legend-item")
    items = browser.find_elements(By.CSS_SELECTOR, ".split .legend-item")
    shown = {
        i.get_attribute("data-deployment"): int(i.get_attribute("data-weight") or 0) for i in items
    }
    assert shown == weights
    texts = sorted(i.text for i in items)
    assert any(t.endswith("80 %") for t in texts) and any(t.endswith("20 %") for t in texts), texts
    rects = browser.find_elements(By.CSS_SELECTOR, ".split-bar rect")
    assert sorted(round(float(r.get_attribute("width") or 0)) for r in rects) == [200, 800]
    # The chart's totals are the gateway's counts.
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".totals tbody tr"), "totals")
    rows = {
        r.find_elements(By.TAG_NAME, "td")[0].text: int(
            r.find_elements(By.TAG_NAME, "td")[1].text.replace(",", "")
        )
        for r in browser.find_elements(By.CSS_SELECTOR, ".totals tbody tr")
    }
    by_number = {
        f"v{d['number']} ({d['routing_status']})": d["requests"] for d in counted["deployments"]
    }
    assert rows == by_number and sum(rows.values()) == total, (rows, by_number, seen)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart polyline")) == 2 * len(by_number)
    # Hostnames with their state; snapshots masked (the secret's value never reaches the page).
    assert browser.find_element(By.CSS_SELECTOR, f"[data-host='{host}']")
    assert "verified" in text_of(browser, "#hostnames")
    summary = browser.find_element(By.CSS_SELECTOR, "#deployments summary")
    summary.send_keys(Keys.ENTER)
    until(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, "#deployments details[open]"),
        "an open snapshot",
    )
    check_page(browser, stack, "03-service")


def test_a_staged_rollout_advances_on_the_page_and_the_pause_button_pauses_it(
    browser: WebDriver, stack: Stack
) -> None:
    stack.deploy("roll", stack.v1, {"strategy": "direct"})
    rollout = {
        "strategy": "staged",
        "stages": [{"weight": 10, "pause_minutes": 0}, {"weight": 50, "pause_minutes": 10}],
        "health_check": {"error_rate_threshold": 0.05, "min_requests": 10, "window_minutes": 1},
    }
    started = stack.deploy("roll", stack.v2, rollout)
    app = started["id"]
    stack.facts["rollout_app"] = app
    api_path = f"/api/spaces/{stack.space}/app-deployments/{app}/rollout"
    assert stack.api("GET", api_path)["stage"] == 1
    go(browser, stack, f"/spaces/{stack.space}/rollouts/{app}", "#stage[data-stage='1']")
    browser.execute_script("window.__sameDocument = 'yes'")
    assert browser.find_element(By.ID, "weight").get_attribute("data-weight") == "10"
    screenshot(browser, "04-rollout-stage-1")
    with Traffic(stack.gw.port, f"roll.roll.{BASE}"):
        until(
            browser,
            lambda d: d.find_element(By.ID, "stage").get_attribute("data-stage") == "2",
            "the rollout page to show stage 2",
            timeout=40,
        )
    # Advanced without a reload: the same document, the weight and timeline redrawn.
    assert browser.execute_script("return window.__sameDocument") == "yes"
    assert browser.find_element(By.ID, "weight").get_attribute("data-weight") == "50"
    phases = [
        g.get_attribute("data-phase") for g in browser.find_elements(By.CSS_SELECTOR, ".stage")
    ]
    assert phases == ["done", "current", "todo"], phases
    assert "advance" in text_of(browser, "#history")
    assert text_of(browser, "[data-leg='roll'] td[data-requests]")  # the gate's inputs shown
    browser.find_element(By.ID, "reason").send_keys("checking the dashboards")
    browser.find_element(By.ID, "action-pause").send_keys(Keys.ENTER)  # by keyboard
    answer = until(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, "#answer [data-state]"),
        "the API's answer",
    )
    assert answer.get_attribute("data-state") == "paused" and "HTTP 200" in answer.text
    assert stack.api("GET", api_path)["state"] == "paused"
    until(
        browser,
        lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "paused",
        "paused",
    )
    assert browser.find_element(By.ID, "action-pause").get_attribute("disabled") is not None
    assert browser.find_element(By.ID, "action-resume").get_attribute("disabled") is None
    assert "checking the dashboards" in text_of(browser, "#history")
    # An illegal action shows the API's refusal: pausing twice (forced through the DOM).
    browser.execute_script(
        "const b = document.getElementById('action-pause'); b.disabled = false; b.click()"
    )
    refusal = until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#answer .error"), "the 409")
    assert "409" in refusal.text and "illegal_transition" in refusal.text
    # Abort asks first; dismissed, nothing is sent.
    browser.find_element(By.ID, "action-abort").click()
    alert = WebDriverWait(browser, WAIT).until(EC.alert_is_present())
    assert alert and "Abort this rollout" in alert.text
    alert.dismiss()
    assert stack.api("GET", api_path)["state"] == "paused"
    check_page(browser, stack, "05-rollout")


def test_a_viewer_sees_no_action_buttons_and_a_forged_call_gets_403(
    browser: WebDriver, stack: Stack
) -> None:
    app = paused_rollout(stack)
    who = stack.api("POST", "/api/principals", {"kind": "user", "name": "watcher"})
    tok = stack.api(
        "POST", f"/api/principals/{who['id']}/tokens", {"name": "console", "scopes": ["*"]}
    )
    stack.api(
        "POST",
        f"/api/spaces/{stack.space}/members",
        {"principal_id": who["id"], "role": "viewer"},
    )
    go(browser, stack, "/", "#logout")
    browser.find_element(By.ID, "logout").click()
    until(browser, lambda d: d.find_element(By.ID, "token"), "signed out")
    assert browser.execute_script("return sessionStorage.length") == 0
    sign_in(browser, stack.admin.url, tok["token"])
    go(browser, stack, f"/spaces/{stack.space}/rollouts/{app}", "#stage")
    assert browser.find_elements(By.ID, "read-only")
    assert not browser.find_elements(By.CSS_SELECTOR, "#actions, button[data-action]")
    forged = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
           fetch(arguments[0], {method: 'POST', headers: {
               'Authorization': 'Bearer ' + sessionStorage.getItem('turnout.console.token'),
               'Content-Type': 'application/json'}, body: '{}'})
             .then(r => r.json().then(b => done([r.status, b])))
             .catch(e => done([0, String(e)]));""",
        f"/api/spaces/{stack.space}/app-deployments/{app}/rollout/resume",
    )
    assert forged[0] == 403 and forged[1]["error"]["code"] == "forbidden", forged
    assert (
        stack.api("GET", f"/api/spaces/{stack.space}/app-deployments/{app}/rollout")["state"]
        == "paused"
    )
    check_page(browser, stack, "06-rollout-viewer")
    browser.find_element(By.ID, "logout").click()
    sign_in(browser, stack.admin.url, stack.admin.token)


def test_the_pods_page_shows_the_delegation_tree(browser: WebDriver, stack: Stack) -> None:
    base = f"/api/spaces/{stack.space}/pods"
    rule = {"target": "/ws", "permission": "write"}
    stack.api("POST", base, {"name": "builder", "scope": {"allow": [rule]}, "grant": [rule]})
    kid = {"target": "/ws/tests", "permission": "write"}
    stack.api("POST", f"{base}/builder/children", {"name": "tester", "rules": [kid]})
    stack.api("POST", f"{base}/builder/attach", {})
    go(browser, stack, f"/spaces/{stack.space}/pods", "[data-pod='builder'] [data-pod='tester']")
    tester = browser.find_element(By.CSS_SELECTOR, "[data-pod='builder'] [data-pod='tester']")
    assert "/ws/tests" in (
        tester.find_element(By.CSS_SELECTOR, "[data-writes]").get_attribute("data-writes") or ""
    )
    builder = browser.find_element(By.CSS_SELECTOR, "[data-pod='builder'] > .kv [data-lease]")
    assert builder.get_attribute("data-lease") == "live" and "age" in builder.text
    check_page(browser, stack, "07-pods")


def test_the_audit_log_is_paged_and_filtered(browser: WebDriver, stack: Stack) -> None:
    paused_rollout(stack)
    go(browser, stack, f"/spaces/{stack.space}/audit", "[data-audit]")
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-audit]")) > 3
    field = browser.find_element(By.ID, "f-action")
    field.send_keys("pause_rollout")
    field.send_keys(Keys.ENTER)
    until(
        browser,
        lambda d: (
            {c.text for c in d.find_elements(By.CSS_SELECTOR, "[data-audit] td:nth-child(2)")}
            == {"pause_rollout"}
        ),
        "only pause_rollout rows",
    )
    outcomes = sorted(
        c.get_attribute("data-outcome") or ""
        for c in browser.find_elements(By.CSS_SELECTOR, "[data-outcome]")
    )
    audit = f"/api/spaces/{stack.space}/audit"
    want = stack.api("GET", f"{audit}?action=pause_rollout&limit=500")["items"]
    assert outcomes == sorted(r["outcome"] for r in want), outcomes
    assert {"success", "illegal_transition"} <= set(outcomes), outcomes
    field.clear()
    everything = stack.api("GET", f"{audit}?limit=500")["items"]
    for i in range(11 - len(everything)):  # run on its own: make a second page
        stack.api("POST", f"/api/spaces/{stack.space}/services", {"name": f"pad{i}"})
    everything = stack.api("GET", f"{audit}?limit=500")["items"]
    Select(browser.find_element(By.ID, "f-limit")).select_by_value("10")
    browser.find_element(By.ID, "f-apply").click()
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-audit]")) == 10, "a page")
    first = {
        e.get_attribute("data-audit")
        for e in browser.find_elements(By.CSS_SELECTOR, "[data-audit]")
    }
    browser.find_element(By.ID, "page-next").click()
    until(
        browser,
        lambda d: (
            "page 2" in text_of(d, ".pager") and d.find_elements(By.CSS_SELECTOR, "[data-audit]")
        ),
        "the second page",
    )
    second = {
        e.get_attribute("data-audit")
        for e in browser.find_elements(By.CSS_SELECTOR, "[data-audit]")
    }
    assert second and not first & second
    assert [r["id"] for r in everything[:10]] == sorted(first)
    check_page(browser, stack, "08-audit")


def test_the_demo_rollout_is_visible_in_the_console_while_it_runs(
    browser: WebDriver, stack: Stack, tmp_path: Path
) -> None:
    """``turnout dev --demo``: its banner names the console, and the staged rollout it walks
    shows on the rollout page stage by stage (the README's screenshot is this page)."""
    ports = [free_port() for _ in range(4)]
    admin = f"127.0.0.1:{ports[1]}"
    cmd = [sys.executable, "-c", _LAUNCH, "dev", "--dir", str(tmp_path / "dev")]
    cmd += ["--gateway", f"127.0.0.1:{ports[0]}", "--admin", admin]
    cmd += ["--runtimes", f"127.0.0.1:{ports[2]},127.0.0.1:{ports[3]}", "--demo"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip())

    reader = threading.Thread(target=read, name="demo-stdout", daemon=True)
    reader.start()
    try:

        def line(prefix: str) -> str | None:
            return next((ln.strip() for ln in lines if ln.strip().startswith(prefix)), None)

        assert wait_api(lambda: line("console"), "the banner's console line", 30) == (
            f"console     http://{admin}/console/   (sign in with the token below)"
        )
        token = wait_api(lambda: line("export TOKEN="), "the banner's token", 5).split("=", 1)[1]
        sign_in(browser, f"http://{admin}", token)
        # The canary (then the staged rollout's canary) next to v1 in the service's split.
        split = wait_api(lambda: line("[demo] the split in the console:"), "the split's URL", 30)
        browser.get(split.split(": ", 1)[1])
        until(
            browser,
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".split .legend-item")) == 2,
            "v1 and v2 in the demo's split",
        )
        screenshot(browser, "09-demo-split")
        url = wait_api(lambda: line("[demo] or in the console:"), "the rollout's URL", 40)
        url = url.split(": ", 1)[1]
        assert url.startswith(f"http://{admin}/console/#/spaces/") and "/rollouts/app_" in url
        browser.get(url)
        until(
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#history [data-action='advance']"),
            "the demo's rollout past its first stage",
            timeout=40,
        )
        shot = screenshot(browser, "10-demo-rollout")
        until(
            browser,
            lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "completed",
            "the demo's rollout to complete on the page",
            timeout=40,
        )
        assert text_of(browser, "#weight") == "100 %"
        assert shot.exists()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
