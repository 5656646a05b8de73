"""/docs and /redoc render every operation from assets installed with the project, with the browser held to 127.0.0.1."""

from __future__ import annotations

import httpx
import pytest

from nakhon.local import LocalPlatform
from tests.browser.conftest import DESKTOP, base_url
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def _operations(p: LocalPlatform) -> set[str]:
    spec = wait_until(lambda: _get(f"{base_url(p)}/openapi.json"), 60, what="the API to answer")
    return {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}


def _get(url: str) -> dict | None:
    try:
        r = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def test_swagger_ui_renders_every_operation_offline(platform: LocalPlatform, open_tab: type) -> None:
    ops = _operations(platform)
    tab = open_tab(DESKTOP)
    tab.page.goto(f"{base_url(platform)}/docs")
    tab.page.wait_for_selector(".opblock-summary", timeout=60_000)
    shown = {" ".join(s.split()) for s in tab.page.eval_on_selector_all(
        ".opblock-summary", "els => els.map(e => e.querySelector('.opblock-summary-method').textContent + ' ' + "
                            "e.querySelector('.opblock-summary-path').getAttribute('data-path'))")}
    assert shown == ops
    assert tab.page.locator(".swagger-ui .info .title").inner_text().startswith("Nakhon API")
    tab.shot("docs-swagger")
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in tab.guard.local)
    assert not tab.guard.outside


def test_redoc_renders_every_operation_offline(platform: LocalPlatform, open_tab: type) -> None:
    ops = _operations(platform)
    tab = open_tab(DESKTOP)
    tab.page.goto(f"{base_url(platform)}/redoc")
    tab.page.wait_for_selector("[data-section-id^='operation/']", timeout=60_000)
    wait_until(lambda: tab.page.locator("[data-section-id^='operation/']").count() >= len(ops), 30, what="every operation in ReDoc")
    assert tab.page.locator("[data-section-id^='operation/']").count() == len(ops)
    assert "Nakhon API" in tab.page.locator("h1").first.inner_text()
    tab.shot("docs-redoc")
    assert any(u.endswith("/docs-assets/redoc.standalone.js") for u in tab.guard.local)
    assert not tab.guard.outside


def test_docs_pages_forbid_other_hosts(platform: LocalPlatform) -> None:
    """The policy that keeps ReDoc's vendor logo and Swagger UI's validator badge from being fetched."""
    for path in ("/docs", "/redoc"):
        r = httpx.get(f"{base_url(platform)}{path}", timeout=10)
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data:" in csp
        assert "cdn" not in r.text.lower() and "https://" not in r.text.replace("https://fastapi", "")


def test_docs_assets_travel_compressed(platform: LocalPlatform) -> None:
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        with httpx.stream("GET", f"{base_url(platform)}/docs-assets/{name}", headers={"Accept-Encoding": "gzip"}, timeout=30) as r:
            raw = sum(len(chunk) for chunk in r.iter_raw())
            assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        plain = httpx.get(f"{base_url(platform)}/docs-assets/{name}", headers={"Accept-Encoding": "identity"}, timeout=30)
        assert "content-encoding" not in plain.headers and raw < len(plain.content) / 2, (name, raw, len(plain.content))
