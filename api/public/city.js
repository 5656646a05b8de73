// Nakhon public air-quality page: reads the public API, draws the stations and the trend, refreshes itself.
// No library and nothing from another host: the page's Content-Security-Policy allows this origin only.
"use strict";

const cfg = JSON.parse(document.getElementById("config").textContent);
const SVG = "http://www.w3.org/2000/svg";
const HOUR = 3600e3;
const params = new URLSearchParams(location.search);
const refreshS = Math.max(5, Number(params.get("refresh")) || cfg.refresh_s);
let loads = 0;

const fmtTime = new Intl.DateTimeFormat("en-GB", { timeZone: cfg.timezone, hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const fmtDay = new Intl.DateTimeFormat("en-GB", { timeZone: cfg.timezone, day: "numeric", month: "short" });
const fmtHour = new Intl.DateTimeFormat("en-GB", { timeZone: cfg.timezone, hour: "2-digit", hourCycle: "h23" });

const POLLUTANT = { pm25: "PM2.5 24 h", pm10: "PM10 24 h", o3: "O₃ 8 h", co: "CO 8 h", no2: "NO₂ 1 h", so2: "SO₂ 1 h" };

function bangkok(t) { return `${fmtDay.format(t)} ${fmtTime.format(t)}`; }
function band(level) { return cfg.bands.find((b) => b.level === level); }

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "style") Object.assign(node.style, v);  // through the CSSOM: the page's CSP forbids style attributes
    else node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function ago(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

// One record per air station: coordinates, reading interval and the time of the last reading from the GeoJSON
// (the latest values: one cheap read), the AQI from /aqi.
function stations(aqi, geo) {
  const byId = new Map();
  const get = (id) => byId.get(id) || byId.set(id, { id, lat: null, lon: null, current: null, seen: null, interval: null }).get(id);
  for (const f of geo.features || []) {
    if (f.properties.kind !== "air") continue;
    const s = get(f.properties.device);
    [s.lon, s.lat] = f.geometry.coordinates;
    s.seen = f.properties.time ? new Date(f.properties.time) : null;
    s.interval = f.properties.interval_s || null;
  }
  for (const d of aqi.devices || []) get(d.device).current = d.current;
  const now = Date.now();
  for (const s of byId.values()) {
    s.staleness = s.seen ? Math.max(0, (now - s.seen.getTime()) / 1000) : null;
    // silent for more than three reading intervals, as /quality counts stale devices
    const silent = s.staleness !== null && s.interval !== null && s.staleness > cfg.stale_intervals * s.interval;
    // the AQI belongs to an hour; one more than two hours old is not "now" either
    const old = s.current && now - (Date.parse(s.current.time) + HOUR) > 2 * HOUR;
    s.stale = Boolean(s.current) && (silent || old);
    s.nodata = !s.current;
  }
  return [...byId.values()].sort((a, b) => (a.stale - b.stale) || ((b.current?.aqi ?? -1) - (a.current?.aqi ?? -1)) || a.id.localeCompare(b.id));
}

function paintBadge(node, current, stale) {
  const b = current && !stale ? band(current.band) : null;
  node.style.background = b ? b.hex : "";
  node.style.color = b ? b.text : "";
}

function renderNow(aqi, list) {
  const cur = aqi.current;
  const fresh = list.filter((s) => !s.stale && !s.nodata);
  const stale = Boolean(cur) && fresh.length === 0;
  const badge = document.getElementById("city-aqi");
  badge.dataset.aqi = cur ? cur.aqi : "";
  badge.dataset.band = cur ? cur.band : "";
  badge.dataset.stale = String(stale);
  document.getElementById("city-aqi-value").textContent = cur ? cur.aqi : "–";
  paintBadge(badge, cur, stale);
  const th = document.getElementById("city-band-th");
  const en = document.getElementById("city-band-en");
  const time = document.getElementById("city-time");
  const note = document.getElementById("city-note");
  if (!cur) {
    th.textContent = "ยังไม่มีข้อมูล";
    en.textContent = "No data yet";
    time.textContent = "";
  } else {
    th.textContent = cur.label_th;
    en.textContent = cur.label_en;
    const t0 = new Date(cur.time);
    time.dataset.time = cur.time;
    time.textContent = `ชั่วโมง ${fmtDay.format(t0)} ${fmtTime.format(t0)}–${fmtTime.format(new Date(t0.getTime() + HOUR))} น. ` +
      `· hour of ${bangkok(t0)}–${fmtTime.format(new Date(t0.getTime() + HOUR))} (Bangkok) · ${POLLUTANT[cur.pollutant] || cur.pollutant}`;
  }
  const reporting = `${fresh.length} / ${list.length}`;
  note.textContent = stale
    ? `ข้อมูลไม่เป็นปัจจุบัน: ไม่มีสถานีรายงานเมื่อเร็ว ๆ นี้ · Stale: no station has reported recently (${reporting})`
    : `สถานีที่รายงาน · stations reporting: ${reporting}`;
}

function renderMap(list) {
  const box = document.getElementById("map");
  // drawn at the size it is shown, so text and symbols keep their size on a phone
  const W = Math.round(Math.min(Math.max(280, box.clientWidth || 500), 520)), C = W / 2, PAD = 34;
  const kmX = 111.32 * Math.cos((cfg.lat * Math.PI) / 180), kmY = 110.57;
  const placed = list.filter((s) => s.lat !== null);
  const far = Math.max(cfg.radius_km, ...placed.map((s) => Math.hypot((s.lon - cfg.lon) * kmX, (s.lat - cfg.lat) * kmY)));
  const R = far * 1.08;
  const scale = (C - PAD) / R;
  const x = (lon) => C + (lon - cfg.lon) * kmX * scale;
  const y = (lat) => C - (lat - cfg.lat) * kmY * scale;
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${W}`, "data-stations": placed.length });
  svg.append(el("svg:circle", { class: "ring", cx: C, cy: C, r: cfg.radius_km * scale }));
  const step = R > 12 ? 5 : R > 5 ? 2 : 1;
  for (let k = -Math.floor(R / step) * step; k <= R; k += step) {
    const p = C + k * scale;
    svg.append(el("svg:line", { class: "grid", x1: p, y1: PAD / 2, x2: p, y2: W - PAD / 2 }));
    svg.append(el("svg:line", { class: "grid", x1: PAD / 2, y1: p, x2: W - PAD / 2, y2: p }));
  }
  // scale bar and north
  svg.append(el("svg:line", { x1: 16, y1: W - 14, x2: 16 + step * scale, y2: W - 14, stroke: "#1a1a1a", "stroke-width": 3 }));
  svg.append(el("svg:text", { class: "axis-text", x: 16, y: W - 20 }, `${step} km`));
  svg.append(el("svg:text", { class: "axis-text", x: W - 22, y: 20, "font-weight": 700 }, "N ↑"));
  for (const s of [...placed].reverse()) {  // worst drawn last, on top
    const b = s.current && !s.stale ? band(s.current.band) : null;
    const g = el("svg:g", { class: `station${s.stale ? " stale" : ""}${s.nodata ? " nodata" : ""}`, "data-device": s.id,
      "data-aqi": s.current ? s.current.aqi : "", "data-band": s.current ? s.current.band : "", "data-stale": String(s.stale),
      transform: `translate(${x(s.lon).toFixed(1)} ${y(s.lat).toFixed(1)})` });
    g.append(el("svg:title", {}, `${s.id}: ${s.current ? `AQI ${s.current.aqi} ${s.current.label_en}` : "no data"}${s.stale ? " (stale)" : ""}`));
    g.append(el("svg:circle", { r: 14, fill: b ? b.hex : s.nodata ? "#ffffff" : "#d4d4d4" }));
    g.append(el("svg:text", { "text-anchor": "middle", dy: "0.35em", fill: b ? b.text : "#000000" }, s.current ? s.current.aqi : "?"));
    svg.append(g);
  }
  box.replaceChildren(svg);
  const legend = document.getElementById("legend");
  legend.replaceChildren(
    ...cfg.bands.map((b) => el("li", { style: { background: b.hex, color: b.text }, "data-level": b.level },
      `${b.lo}–${b.hi > 500 ? "" : b.hi} ${b.th} · ${b.en}`)),
    el("li", { style: { background: "#d4d4d4", color: "#000000" } }, "ไม่เป็นปัจจุบัน · stale"),
    el("li", { style: { background: "#ffffff", color: "#000000" } }, "ไม่มีข้อมูล · no data"));
}

function renderTrend(id, hours, span, tick) {
  const box = document.getElementById(id);
  const W = Math.round(Math.max(280, box.clientWidth || 600)), H = 150, L = 30, B = 20, T = 6;
  const now = Date.now();
  const from = now - span;
  const pts = hours.filter((h) => Date.parse(h.time) >= from - HOUR);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, "data-hours": pts.length });
  if (!pts.length) {
    svg.append(el("svg:text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "ยังไม่มีข้อมูล · no data yet"));
    box.replaceChildren(svg);
    return;
  }
  const top = Math.max(100, ...pts.map((h) => h.aqi)) * 1.1;
  const yv = (v) => T + (H - T - B) * (1 - v / top);
  const xt = (t) => L + ((t - from) / span) * (W - L - 4);
  for (const b of cfg.bands) {
    if (b.hi < top) {
      svg.append(el("svg:line", { class: "grid", x1: L, x2: W, y1: yv(b.hi), y2: yv(b.hi), stroke: "#dde0e4" }));
      svg.append(el("svg:text", { class: "axis-text", x: L - 4, y: yv(b.hi) + 4, "text-anchor": "end" }, b.hi));
    }
  }
  const bw = Math.max(1, ((W - L - 4) * HOUR) / span - (span > 2 * 86400e3 ? 0.3 : 2));
  for (const h of pts) {
    const t = Date.parse(h.time);
    const b = band(h.band);
    const r = el("svg:rect", { x: Math.max(L, xt(t)), y: yv(h.aqi), width: bw, height: H - B - yv(h.aqi), fill: b.hex, "data-aqi": h.aqi });
    r.append(el("svg:title", {}, `${bangkok(new Date(t))}: AQI ${h.aqi} ${b.en}`));
    svg.append(r);
  }
  // ticks on Bangkok hours (every `tick` hours; days at midnight for the week)
  const off = 7 * HOUR;
  while (((W - L - 4) * tick * HOUR) / span < 56) tick *= 2;  // labels at least 56 px apart on a narrow screen
  for (let t = Math.ceil((from + off) / (tick * HOUR)) * tick * HOUR - off; t <= now; t += tick * HOUR) {
    const label = tick >= 24 ? fmtDay.format(new Date(t)) : `${fmtHour.format(new Date(t))}:00`;
    svg.append(el("svg:text", { class: "axis-text", x: xt(t), y: H - 5, "text-anchor": "middle" }, label));
  }
  svg.append(el("svg:line", { x1: L, x2: W, y1: H - B, y2: H - B, stroke: "#474747" }));
  box.replaceChildren(svg);
}

function renderTable(list) {
  const body = document.querySelector("#stations tbody");
  body.replaceChildren(...list.map((s) => {
    const b = s.current && !s.stale ? band(s.current.band) : null;
    const aqiCell = el("td", { class: "aqi", style: { background: b ? b.hex : "#d4d4d4", color: b ? b.text : "#000000" } },
      s.current ? s.current.aqi : "–");
    // a silent station's last band is history, not the air now: say so rather than show "very good"
    const bandCell = el("td", {}, s.nodata ? "ไม่มีข้อมูล · no data"
      : s.stale ? `ไม่มีค่าปัจจุบัน · no current value (ค่าล่าสุด · last: ${s.current.label_en})`
        : `${s.current.label_th} · ${s.current.label_en}`);
    const pm25 = s.current?.concentrations?.pm25_24h;
    const when = el("td", { "data-time": s.seen ? s.seen.toISOString() : "" }, s.seen ? `${bangkok(s.seen)} (${ago(s.staleness)})` : "–");
    if (s.stale) when.append(el("br"), el("span", { class: "stale-tag" }, "ไม่เป็นปัจจุบัน · stale"));
    return el("tr", { "data-device": s.id, "data-aqi": s.current ? s.current.aqi : "", "data-stale": String(s.stale) },
      el("td", {}, s.id), aqiCell, bandCell, el("td", { class: "pm25" }, pm25 === undefined ? "–" : pm25.toFixed(1)), when);
  }));
}

let last = null;

function draw() {
  if (!last) return;
  renderNow(last.aqi, last.list);
  renderMap(last.list);
  renderTrend("trend-24h", last.hours, 24 * HOUR, 6);
  renderTrend("trend-7d", last.hours, 7 * 24 * HOUR, 24);
  renderTable(last.list);
}

async function load() {
  const base = `/v1/cities/${encodeURIComponent(cfg.city)}`;
  const updated = document.getElementById("updated");
  try {
    const [aqi, geo, hist] = await Promise.all([
      getJSON(`${base}/aqi`), getJSON(`/v1/open/cities/${encodeURIComponent(cfg.city)}/latest.geojson`), getJSON(`${base}/aqi/history`),
    ]);
    last = { aqi, list: stations(aqi, geo), hours: hist.hours };
    draw();
    loads += 1;
    updated.className = "updated";
    updated.textContent = `อัปเดต · Updated ${bangkok(new Date())} (Bangkok) · ทุก ${refreshS} วินาที · every ${refreshS} s`;
  } catch (err) {
    updated.className = "updated offline";
    updated.textContent = `โหลดข้อมูลไม่สำเร็จ จะลองใหม่ · Could not load, retrying (${err.message})`;
  }
  document.body.dataset.loads = String(loads);
  setTimeout(load, refreshS * 1000);
}

document.getElementById("city-th").textContent = cfg.name_th;
document.getElementById("city-en").textContent = `· ${cfg.name_en}`;
document.getElementById("open-data").href = `/v1/open/cities/${encodeURIComponent(cfg.city)}/dataset.json`;
let resizing = null;
window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(draw, 150); });
load();
