"""Browser tests: Debian's headless chromium, driven by Playwright, against a platform started as `nakhon up` starts it.

The browser may reach 127.0.0.1 only. Every request the page makes passes a
route that lets loopback through and records (and aborts) anything else;
host names do not resolve at all. A test that saw a request leave the
machine fails, whatever else it checked. Screenshots go to var/browser/.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, sync_playwright

from contract.settings import load_settings
from nakhon.local import LocalPlatform
from nakhon.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "var" / "browser"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}


@dataclass
class Guard:
    """What the page asked of 127.0.0.1, and what it tried to fetch from anywhere else."""

    local: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            self.local.append(url)
            route.continue_()
        else:
            self.outside.append(url)
            route.abort("addressunreachable")


@pytest.fixture(scope="package")  # gone once the browser tests are: its event loop and its fleet with it
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")  # gone once the browser tests are: its event loop and its fleet with it
def browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise AssertionError("Debian's chromium is missing: ./dev installs it (apt-get install chromium)")
    # launch() gives the browser a fresh profile of its own in a new temporary folder each time
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
    yield b
    b.close()


@dataclass
class Tab:
    page: Page
    guard: Guard
    context: BrowserContext
    errors: list[str] = field(default_factory=list)  # script errors and console errors (a CSP violation is one)

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[type]:
    """open_tab(viewport) -> Tab; fails the test if any page request left 127.0.0.1."""
    tabs: list[Tab] = []

    def make(viewport: dict[str, int] = DESKTOP, **kw: object) -> Tab:
        ctx = browser.new_context(viewport=viewport, service_workers="block", locale="th-TH", timezone_id="UTC", **kw)  # type: ignore[arg-type]
        guard = Guard()
        ctx.route("**/*", guard.route)
        page = ctx.new_page()
        # WebSockets do not pass the route: any that is opened to another host counts as a request out
        page.on("websocket", lambda ws: None if urlsplit(ws.url).hostname == "127.0.0.1" else guard.outside.append(ws.url))
        tab = Tab(page, guard, ctx)
        page.on("console", lambda m: tab.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: tab.errors.append(f"page error: {e}"))
        tabs.append(tab)
        return tab

    yield make  # type: ignore[misc]
    outside = [u for t in tabs for u in t.guard.outside]
    for t in tabs:
        t.context.close()
    assert not outside, f"requests left the machine: {outside}"


@pytest.fixture(scope="package")  # gone once the browser tests are: its event loop and its fleet with it
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    """`nakhon up`'s platform (broker, InfluxDB, ingest, API, a simulated fleet registered with coordinates) on free ports."""
    root = ROOT / "var" / "test" / f"browser-{uuid.uuid4().hex[:6]}"
    settings = load_settings(mqtt_port=free_port(), influx_url=f"http://127.0.0.1:{free_port()}", api_port=free_port(),
                             data_dir=root / "data", ingest_rollup_interval_s=1.0, ingest_batch_ms=50,
                             api_rate_per_address=100_000, api_rate_per_key=100_000)
    p = LocalPlatform(root, settings, fleet_per_city=4, interval_s=5.0)
    try:
        p.start()
        yield p
    finally:
        p.stop()
    shutil.rmtree(root, ignore_errors=True)


def base_url(p: LocalPlatform) -> str:
    return f"http://127.0.0.1:{p.settings.api_port}"
