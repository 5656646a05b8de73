"""The public air-quality pages: one per city, for citizens, served with the API.

`/air` lists the cities, `/air/{city}` shows a city: its stations placed by
their coordinates and coloured by Thai AQI band, the city's AQI now with
the band in Thai and English, reading times in Asia/Bangkok, stale stations
marked stale, and the 24-hour and 7-day AQI trend. The page is static HTML,
CSS and JavaScript shipped in the package (`api/public/`), with nothing from
a CDN and no map tiles; it reads the public API (`/v1/cities/{city}/aqi`,
`.../aqi/history` and `/v1/open/cities/{city}/latest.geojson`, whose last
reading times and intervals tell a stale station) and refreshes itself. The PCD band colours come from contract.aqi, each with
the text colour (black or white) that contrasts with it most (WCAG 2).

The pages are switched off with the public read endpoints
(`NAKHON_API_PUBLIC_READ=false`): then they answer 404.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib.resources import files
from typing import Final

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.deps import SettingsDep
from contract.aqi import BANDS
from contract.settings import Settings

router = APIRouter(include_in_schema=False)

REFRESH_S: Final = 60
STALE_INTERVALS: Final = 3  # a station silent for more than three reading intervals is stale (as /quality counts it)
_ASSETS: Final = {"city.js": "text/javascript; charset=utf-8", "city.css": "text/css; charset=utf-8"}
# Everything the page needs comes from this host; inline scripts and styles are not needed either.
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
              "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_HEADERS: Final = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of `#rrggbb`."""
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two colours (1 to 21)."""
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on `background` (PCD's yellow and all its other bands take black)."""
    return "#000000" if contrast(background, "#000000") >= contrast(background, "#ffffff") else "#ffffff"


def _enabled(settings: Settings) -> None:
    if not settings.api_public_read:
        raise HTTPException(404, "the public pages are switched off with public reading")


@cache
def _asset(name: str) -> str:
    return (files("api") / "public" / name).read_text(encoding="utf-8")


def page_config(settings: Settings, city: str) -> dict[str, object]:
    c = settings.cities[city]
    return {
        "city": c.slug, "name_en": c.name_en, "name_th": c.name_th, "lat": c.lat, "lon": c.lon, "radius_km": c.radius_km,
        "refresh_s": REFRESH_S, "stale_intervals": STALE_INTERVALS, "timezone": "Asia/Bangkok",
        "bands": [{"level": b.level, "lo": b.lo, "hi": b.hi, "en": b.en, "th": b.th, "colour": b.colour, "hex": b.hex,
                   "text": text_colour(b.hex)} for b in BANDS],
        "cities": [{"slug": o.slug, "name_en": o.name_en, "name_th": o.name_th} for o in settings.cities.values()],
    }


def _json_for_html(value: object) -> str:
    """JSON safe inside a <script type="application/json"> element."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@router.get("/air", response_class=HTMLResponse)
def cities(settings: SettingsDep) -> HTMLResponse:
    """The list of cities with a public page."""
    _enabled(settings)
    items = "\n".join(
        f'<li><a href="/air/{html.escape(c.slug)}"><span lang="th">{html.escape(c.name_th)}</span> · {html.escape(c.name_en)}</a></li>'
        for c in settings.cities.values())
    body = _asset("index.html").replace("<!--CITIES-->", items)
    return HTMLResponse(body, headers=_HEADERS)


@router.get("/", response_class=RedirectResponse)
def root(settings: SettingsDep) -> RedirectResponse:
    """Someone who types the host name lands on the air-quality pages, or on the API docs when those are off."""
    return RedirectResponse("/air" if settings.api_public_read else "/docs", status_code=307)


@router.get("/air/", response_class=RedirectResponse)
def cities_slash() -> RedirectResponse:
    return RedirectResponse("/air", status_code=308)


@router.get("/air/{city}", response_class=HTMLResponse)
def city_page(city: str, settings: SettingsDep) -> HTMLResponse:
    """A city's air quality now, its stations on a map and the trend."""
    _enabled(settings)
    if city not in settings.cities:
        raise HTTPException(404, f"unknown city {city!r}")
    c = settings.cities[city]
    body = (_asset("city.html")
            .replace("<!--TITLE-->", html.escape(f"{c.name_th} · {c.name_en}"))
            .replace("<!--CONFIG-->", _json_for_html(page_config(settings, city))))
    return HTMLResponse(body, headers=_HEADERS)


@router.get("/air-assets/{name}")
def asset(name: str, settings: SettingsDep) -> Response:
    _enabled(settings)
    if name not in _ASSETS:  # a fixed list: no path ever reaches the file system
        raise HTTPException(404, "no such file")
    return Response(_asset(name), media_type=_ASSETS[name], headers={**_HEADERS, "Cache-Control": "public, max-age=300"})
