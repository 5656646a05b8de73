"""The public air-quality page of each city, in a real browser, against `nakhon up`'s platform.

Besides the simulated fleet, two Chiang Mai stations with a known Thai AQI
send their readings through the real broker and ingest: one still
reporting (PM2.5 30 µg/m³ for three hours: AQI 70, band 3, yellow) and one
that went silent three hours ago (PM2.5 10: AQI 17, band 1, blue), which
must show as stale and not as very good air.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jsonschema
import paho.mqtt.client as mqtt
import pytest
from playwright.sync_api import Page

from api.registry import Registry
from api.routers.public import contrast
from contract import topics
from nakhon.local import LocalPlatform
from nakhon.procs import Service
from nakhon.servers import free_port
from tests.api.test_opendata import RFC7946
from tests.browser.conftest import DESKTOP, PHONE, Tab, base_url
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

BANGKOK = ZoneInfo("Asia/Bangkok")
FRESH, STALE = "cm-known-fresh", "cm-known-stale"
KNOWN = {FRESH: (70, 3), STALE: (17, 1)}  # (AQI, band) by hand: PM2.5 30 -> 50/12.4*(30-25.1)+51 = 70.4; 10 -> 25/15*10 = 16.7


def _publish(p: LocalPlatform, device: str, password: str, readings: list[dict[str, Any]]) -> None:
    """As the device: its own account, over TLS to the device listener, trusting the platform's CA."""
    assert p.broker.tls_port is not None and p.ca is not None
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    c.username_pw_set(device, password)
    c.tls_set(ca_certs=str(p.ca))
    c.connect("localhost", p.broker.tls_port)
    c.loop_start()
    try:
        for i in range(0, len(readings), 50):
            info = c.publish(topics.topic("chiang_mai", device, "telemetry"), json.dumps({"v": 1, "batch": readings[i:i + 50]}), qos=1)
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        c.loop_stop()
        c.disconnect()


def _get(p: LocalPlatform, path: str) -> Any:
    try:
        r = httpx.get(base_url(p) + path, timeout=10)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


@pytest.fixture(scope="module")
def known(platform: LocalPlatform) -> LocalPlatform:
    passwords = {}
    for device, lat, lon, interval in ((FRESH, 18.7953, 98.9620, 600), (STALE, 18.7700, 99.0050, 300)):  # provisioned as a technician would
        body = {"id": device, "city": "chiang_mai", "kind": "air", "sensors": ["pm25", "pm10"], "lat": lat, "lon": lon,
                "installed": "2026-01-01", "fw": "1.0.0", "interval_s": interval}
        r = httpx.post(base_url(platform) + "/v1/devices", json=body, headers={"X-API-Key": platform.admin_key or ""}, timeout=30)
        assert r.status_code == 201, r.text
        passwords[device] = r.json()["config"]["mqtt"]["password"]
    now = time.time()
    _publish(platform, FRESH, passwords[FRESH], [{"ts": now - k * 60, "seq": 1000 - k, "m": {"pm25": 30.0, "pm10": 40.0}} for k in range(180, -1, -1)])
    _publish(platform, STALE, passwords[STALE], [{"ts": now - 3 * 3600 - k * 300, "seq": 100 - k, "m": {"pm25": 10.0, "pm10": 20.0}}
                                                 for k in range(36, -1, -1)])

    def ready() -> bool:
        body = _get(platform, "/v1/cities/chiang_mai/aqi")
        got = {d["device"]: (d["current"]["aqi"], d["current"]["band"]) for d in (body or {}).get("devices", []) if d["current"]}
        return all(got.get(k) == v for k, v in KNOWN.items())

    wait_until(ready, 120, 0.5, what="the known stations' AQI from the API")
    return platform


def _open_city(tab: Tab, p: LocalPlatform, city: str, query: str = "") -> dict[str, Any]:
    """Open the page; the /aqi answer it drew from."""
    with tab.page.expect_response(lambda r: r.url.split("?")[0].endswith(f"/v1/cities/{city}/aqi"), timeout=60_000) as answer:
        tab.page.goto(f"{base_url(p)}/air/{city}{query}")
    body: dict[str, Any] = answer.value.json()
    tab.page.wait_for_selector("body[data-loads='1']", timeout=60_000)
    assert not tab.errors  # no script error, nothing the page's CSP had to refuse
    return body


def _stations(page: Page, selector: str) -> dict[str, dict[str, str]]:
    return {s["device"]: s for s in page.eval_on_selector_all(selector, "els => els.map(e => ({...e.dataset}))")}


@pytest.mark.parametrize("city", ["chiang_mai", "phuket", "khon_kaen"])
def test_city_page_shows_what_the_api_serves(known: LocalPlatform, open_tab: type, city: str) -> None:
    wait_until(lambda: any(d["current"] for d in (_get(known, f"/v1/cities/{city}/aqi") or {}).get("devices", [])), 120, 0.5,
               what=f"an AQI for a station of {city}")
    tab = open_tab(DESKTOP)
    aqi = _open_city(tab, known, city)
    page = tab.page
    geo = _get(known, f"/v1/open/cities/{city}/latest.geojson")
    placed = {f["properties"]["device"] for f in geo["features"] if f["properties"]["kind"] == "air"}
    served = {d["device"]: d["current"] for d in aqi["devices"]}

    on_map = _stations(page, "#map .station")
    in_table = _stations(page, "#stations tbody tr")
    assert set(on_map) == placed  # every air station with coordinates, placed on the map
    assert set(in_table) == placed | set(served)  # and every station in the table
    for dev, cur in served.items():
        assert in_table[dev]["aqi"] == (str(cur["aqi"]) if cur else "")
        if dev in on_map:
            assert (on_map[dev]["aqi"], on_map[dev]["band"]) == ((str(cur["aqi"]), str(cur["band"])) if cur else ("", ""))
    # the city's AQI now, its band in Thai and English, and the hour in Bangkok time
    cur = aqi["current"]
    assert cur is not None
    badge = page.locator("#city-aqi")
    assert (badge.get_attribute("data-aqi"), badge.get_attribute("data-band")) == (str(cur["aqi"]), str(cur["band"]))
    assert page.locator("#city-aqi-value").inner_text() == str(cur["aqi"])
    assert page.locator("#city-band-th").inner_text() == cur["label_th"]
    assert page.locator("#city-band-en").inner_text() == cur["label_en"]
    hour = datetime.fromisoformat(cur["time"].replace("Z", "+00:00")).astimezone(BANGKOK)
    assert f"{hour:%H:%M}–{hour + timedelta(hours=1):%H:%M}" in page.locator("#city-time").inner_text()
    # the trend: the hours the API serves for the last 24 hours and the week
    hist = _get(known, f"/v1/cities/{city}/aqi/history")
    assert int(page.locator("#trend-7d svg").get_attribute("data-hours") or 0) >= 1
    assert int(page.locator("#trend-7d svg").get_attribute("data-hours") or 0) <= len(hist["hours"])
    assert page.locator("#trend-24h svg rect").count() >= 1
    tab.shot(f"city-{city}-desktop")


def test_known_and_stale_stations(known: LocalPlatform, open_tab: type) -> None:
    tab = open_tab(DESKTOP)
    _open_city(tab, known, "chiang_mai")
    on_map = _stations(tab.page, "#map .station")
    in_table = _stations(tab.page, "#stations tbody tr")
    assert (on_map[FRESH]["aqi"], on_map[FRESH]["band"], on_map[FRESH]["stale"]) == ("70", "3", "false")
    assert (on_map[STALE]["aqi"], on_map[STALE]["stale"]) == ("17", "true")
    assert in_table[STALE]["stale"] == "true" and in_table[FRESH]["stale"] == "false"
    pm = {d: tab.page.locator(f"#stations tbody tr[data-device='{d}'] td.pm25").inner_text() for d in (FRESH, STALE)}
    assert pm == {FRESH: "30.0", STALE: "10.0"}  # the 24-hour PM2.5 behind each AQI
    # stale is grey, not PCD's blue of very good air; the fresh station wears PCD's yellow with dark text
    fill = tab.page.eval_on_selector(f"#map .station[data-device='{STALE}'] circle", "e => getComputedStyle(e).fill")
    assert fill == "rgb(212, 212, 212)"
    row = tab.page.locator(f"#stations tbody tr[data-device='{STALE}']").inner_text()
    assert "stale" in row and "ไม่เป็นปัจจุบัน" in row
    yellow = tab.page.eval_on_selector(f"#stations tbody tr[data-device='{FRESH}'] td.aqi",
                                       "e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).color]")
    assert yellow == ["rgb(255, 255, 0)", "rgb(0, 0, 0)"]
    # the time of the last reading, in Bangkok time
    seen = tab.page.get_attribute(f"#stations tbody tr[data-device='{STALE}'] td[data-time]", "data-time")
    assert seen
    local = datetime.fromisoformat(seen.replace("Z", "+00:00")).astimezone(BANGKOK)
    assert f"{local:%H:%M}" in row


def _rgb(css: str) -> str:
    parts = [int(float(x)) for x in css[css.index("(") + 1:css.index(")")].split(",")[:3]]
    return "#" + "".join(f"{v:02x}" for v in parts)


def test_contrast_meets_wcag_aa(known: LocalPlatform, open_tab: type) -> None:
    tab = open_tab(DESKTOP)
    _open_city(tab, known, "chiang_mai")
    pairs = tab.page.eval_on_selector_all(
        "#legend li, #stations td, #stations th, #city-aqi, .band-th, .band-en, .time, .note, .updated, h1, h2, footer p, a",
        "els => els.map(e => { let b = e, bg = 'rgba(0, 0, 0, 0)';"
        " while (b && (bg = getComputedStyle(b).backgroundColor) === 'rgba(0, 0, 0, 0)') b = b.parentElement;"
        " return [e.tagName + (e.id ? '#' + e.id : '') + ' ' + e.textContent.trim().slice(0, 30), getComputedStyle(e).color, bg]; })")
    assert len(pairs) > 20
    low = [(what, fg, bg, round(contrast(_rgb(fg), _rgb(bg)), 2)) for what, fg, bg in pairs if contrast(_rgb(fg), _rgb(bg)) < 4.5]
    assert not low, low
    # every band colour with the text the page puts on it
    bands = tab.page.eval_on_selector_all("#legend li[data-level]", "els => els.map(e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor])")
    assert len(bands) == 5 and all(contrast(_rgb(fg), _rgb(bg)) >= 4.5 for fg, bg in bands)


def test_phone_and_desktop_widths(known: LocalPlatform, open_tab: type) -> None:
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        tab = open_tab(viewport, is_mobile=name == "phone", has_touch=name == "phone")
        _open_city(tab, known, "chiang_mai")
        width = tab.page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{name}: the page is {width}px wide in a {viewport['width']}px screen"
        m = tab.page.locator("#map svg").bounding_box()
        assert m is not None and m["width"] >= 0.6 * min(viewport["width"], 700) and m["x"] >= 0
        now = tab.page.locator("#now").bounding_box()
        mapbox = tab.page.locator(".map-card").bounding_box()
        trend = tab.page.locator(".trend-card").bounding_box()
        assert now and mapbox and trend
        if name == "phone":  # one column: the map above the trend
            assert trend["y"] >= mapbox["y"] + mapbox["height"] - 1
        else:  # two columns: map and trend side by side
            assert abs(trend["y"] - mapbox["y"]) < 2 and trend["x"] > mapbox["x"] + mapbox["width"] - 1
        tab.shot(f"city-chiang_mai-{name}")


def test_page_refreshes_itself(known: LocalPlatform, open_tab: type) -> None:
    tab = open_tab(DESKTOP)
    _open_city(tab, known, "chiang_mai", "?refresh=5")
    tab.page.wait_for_selector("body[data-loads='2']", timeout=60_000)
    assert sum(u.split("?")[0].endswith("/v1/cities/chiang_mai/aqi") for u in tab.guard.local) >= 2


def test_switched_off_with_public_reading(known: LocalPlatform) -> None:
    """`nakhon api` with NAKHON_API_PUBLIC_READ=false serves neither the page nor its assets."""
    settings = known.api_settings.model_copy(update={"api_public_read": False, "api_port": free_port()})
    svc = Service("api-private", ["api"], settings, known.root / "logs")
    svc.start()
    try:
        url = f"http://127.0.0.1:{settings.api_port}"
        wait_until(lambda: _status(f"{url}/healthz") == 200, 60, what="the private API")
        assert _status(f"{url}/air/chiang_mai") == 404
        assert _status(f"{url}/air") == 404
        assert _status(f"{url}/air-assets/city.js") == 404
        assert _status(f"{url}/v1/cities/chiang_mai/aqi") == 401
        assert _status(f"{base_url(known)}/air/chiang_mai") == 200  # the public one still serves it
    finally:
        svc.stop()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0


def test_unknown_city_and_assets(known: LocalPlatform) -> None:
    assert _status(f"{base_url(known)}/air/atlantis") == 404
    assert _status(f"{base_url(known)}/air-assets/..%2Fcity.html") == 404
    r = httpx.get(f"{base_url(known)}/air/chiang_mai", timeout=10)
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "เชียงใหม่" in r.text and "https://" not in r.text


@pytest.mark.parametrize("city", ["chiang_mai", "phuket", "khon_kaen"])
def test_open_data_on_up(platform: LocalPlatform, city: str) -> None:
    """On `nakhon up` the simulated stations are registered with coordinates: the exports describe them."""
    sims = {d.id: d for d in Registry(platform.settings.registry_path).devices(city=city) if d.id.startswith("sim-")}
    assert len(sims) == 4

    def features() -> list[dict[str, Any]]:
        geo = _get(platform, f"/v1/open/cities/{city}/latest.geojson") or {"features": []}
        return [f for f in geo["features"] if f["properties"]["device"] in sims]

    found = wait_until(lambda: len(features()) == len(sims) and features(), 120, 0.5, what=f"every simulated station of {city} in the GeoJSON")
    geo = _get(platform, f"/v1/open/cities/{city}/latest.geojson")
    jsonschema.validate(geo, RFC7946, cls=jsonschema.Draft202012Validator)
    for f in found:
        d = sims[f["properties"]["device"]]
        assert f["geometry"]["coordinates"] == [d.lon, d.lat] and f["properties"]["kind"] == d.kind
    for measurement in {d.kind for d in sims.values()} & {"air", "water", "noise", "traffic", "weather"}:
        meta = wait_until(lambda m=measurement: (x := _get(platform, f"/v1/open/cities/{city}/dataset.json?measurement={m}"))
                          and x["temporal_start"] and x, 60, 0.5, what=f"{city} {measurement} coverage")
        extras = {e["key"]: e["value"] for e in meta["extras"]}
        assert int(extras["devices"]) >= 1 and meta["temporal_end"] > meta["temporal_start"]


def test_from_the_host_name_to_a_city(known: LocalPlatform, open_tab: type) -> None:
    """A citizen who types the API's address lands on the list of cities and reaches a city's page from it."""
    tab = open_tab(PHONE, is_mobile=True, has_touch=True)
    tab.page.goto(base_url(known) + "/")
    assert tab.page.url.endswith("/air")
    names = tab.page.locator("main li a").all_inner_texts()
    assert len(names) == 3 and any("เชียงใหม่" in n and "Chiang Mai" in n for n in names)
    tab.page.get_by_role("link", name="ภูเก็ต · Phuket").click()
    tab.page.wait_for_selector("body[data-loads='1']", timeout=60_000)
    assert tab.page.url.endswith("/air/phuket") and tab.page.locator("#city-en").inner_text() == "· Phuket"
