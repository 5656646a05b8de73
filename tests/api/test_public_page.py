"""The public page's pure parts: band text colours that meet WCAG AA on PCD's colours, and a page whose
configuration cannot break out of its script element, whatever a city file names a city."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from api.routers.public import CSP, _json_for_html, city_page, contrast, luminance, page_config, text_colour
from contract.aqi import BANDS
from contract.settings import load_settings

pytestmark = pytest.mark.unit


def test_wcag_contrast_against_known_values() -> None:
    assert luminance("#ffffff") == pytest.approx(1.0) and luminance("#000000") == 0.0
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # the classic just-fails-AA grey


def test_every_band_gets_text_that_meets_aa() -> None:
    for b in BANDS:
        fg = text_colour(b.hex)
        assert contrast(fg, b.hex) >= 4.5, (b.colour, fg)
    yellow = next(b for b in BANDS if b.colour == "yellow")
    assert text_colour(yellow.hex) == "#000000"  # PCD's yellow needs dark text
    assert contrast("#ffffff", yellow.hex) < 1.5  # white on it would be unreadable


def test_page_config_carries_the_city_and_the_bands() -> None:
    cfg = page_config(load_settings(), "chiang_mai")
    assert (cfg["city"], cfg["name_en"], cfg["name_th"]) == ("chiang_mai", "Chiang Mai", "เชียงใหม่")
    assert [b["hex"] for b in cfg["bands"]] == [b.hex for b in BANDS]  # type: ignore[index, union-attr]
    assert cfg["timezone"] == "Asia/Bangkok"


def test_config_cannot_close_its_script_element(tmp_path: Path) -> None:
    hostile = "</script><script>alert(1)</script><!--"
    assert "<" not in _json_for_html({"x": hostile}) and json.loads(_json_for_html({"x": hostile})) == {"x": hostile}
    cities = tmp_path / "cities.json"
    cities.write_text(json.dumps([{"slug": "hat_yai", "name_en": hostile, "name_th": "หาดใหญ่ & <b>", "lat": 7.0, "lon": 100.47}]))
    settings = load_settings(cities_file=cities)
    page = city_page("hat_yai", settings).body.decode()
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the config block and city.js, nothing more
    config = re.search(r'<script id="config" type="application/json">(.*?)</script>', page, re.S)
    assert config and json.loads(config.group(1))["name_en"] == hostile
    assert "<b>" not in page
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
