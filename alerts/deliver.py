"""Delivery of the outbox: one worker per target, each in order, with retries and backoff.

Targets: `mqtt` (publish on nakhon/v1/{city}/alerts, QoS 1, wait for PUBACK),
`influx` (one point per event in raw.alerts), `webhook:N` (POST with an HMAC
signature). A failure is retried with exponential backoff and jitter (capped),
never dropped silently: after `give_up_s` the item is marked failed and logged
as an error. A receiver answering 4xx (not 408/429) refuses that body for good.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from alerts.store import Item, Store
from contract.alerts import ALERTS_MEASUREMENT
from contract.influx import Influx, InfluxRejected, InfluxUnavailable
from contract.lineprotocol import encode_point
from contract.logs import kv
from contract.storage import RP_RAW

log = logging.getLogger("nakhon.alerts.deliver")


class Permanent(Exception):
    """Retrying the same item cannot succeed."""


class Retry(Exception):
    """Try again later."""


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>` (the timestamp header binds the time, against replays)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


class Webhook:
    def __init__(self, url: str, secret: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self._http = httpx.Client(timeout=timeout_s)

    def __call__(self, items: list[Item]) -> None:
        for item in items:  # one POST per event: a receiver sees one event per request
            self._one(item)

    def _one(self, item: Item) -> None:
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "nakhon-alerts/1", "X-Nakhon-Event": item.event_id,
                   "X-Nakhon-Timestamp": ts, "X-Nakhon-Signature": signature(self.secret, ts, item.body)}
        try:
            resp = self._http.post(self.url, content=item.body, headers=headers)
        except httpx.HTTPError as exc:
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= resp.status_code < 300:
            return
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 409, 425, 429):
            raise Permanent(f"HTTP {resp.status_code}: {resp.text[:200]}")
        raise Retry(f"HTTP {resp.status_code}")

    def close(self) -> None:
        self._http.close()


def influx_line(doc: dict[str, Any]) -> str:
    fields: dict[str, float | int | str | bool] = {
        "alert_id": doc["alert_id"], "event_id": doc["id"], "event": doc["event"], "severity": doc["severity"],
        "value": float(doc["value"]), "peak": float(doc["peak"]), "threshold": float(doc["threshold"]), "unit": doc["unit"],
        "opened_ms": int(doc["opened_ms"]), "since_ms": int(doc["since_ms"]), "late": bool(doc["late"]),
        "rules_version": doc["rules_version"], "message_en": doc["message_en"], "message_th": doc["message_th"],
    }
    if doc.get("closed_ms") is not None:
        fields["closed_ms"] = int(doc["closed_ms"])
    return encode_point(ALERTS_MEASUREMENT, {"city": doc["city"], "device": doc["device"], "rule": doc["rule"]}, fields, int(doc["at_ms"]))


class InfluxTarget:
    def __init__(self, influx: Influx) -> None:
        self.influx = influx

    def __call__(self, items: list[Item]) -> None:
        try:
            self.influx.write([influx_line(orjson.loads(i.body)) for i in items], rp=RP_RAW)
        except InfluxRejected as exc:  # the data itself (a batch is then retried item by item to find the bad one)
            raise Permanent(str(exc)) from exc
        except InfluxUnavailable as exc:  # down, or refused for a fixable reason (credentials, a missing database): retried
            raise Retry(str(exc)) from exc


class Worker(threading.Thread):
    """Delivers one target's items in order, `batch` at a time (the first one failing holds the rest back)."""

    def __init__(self, store: Store, target: str, send: Callable[[list[Item]], None], wake: threading.Event, stop: threading.Event,
                 base_s: float = 1.0, cap_s: float = 300.0, give_up_s: float = 86400.0, batch: int = 1) -> None:
        super().__init__(name=f"deliver-{target}", daemon=True)
        self.store, self.target, self.send = store, target, send
        self.wake, self.stop_event = wake, stop
        self.base_s, self.cap_s, self.give_up_s = base_s, cap_s, give_up_s
        self.batch = batch
        self.delivered = 0
        self.failures = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            items = self.store.head(self.target, self.batch)
            now = time.time()
            if not items or items[0].next_at > now:
                wait = 0.5 if not items else min(0.5, items[0].next_at - now)
                self.wake.wait(wait)
                self.wake.clear()
                continue
            if len(items) > 1 and items[0].attempts:  # it failed before: alone, so a bad item cannot hold good ones back
                items = items[:1]
            self._send(items)

    def _send(self, items: list[Item]) -> None:
        item = items[0]
        try:
            self.send(items)
        except Permanent as exc:
            if len(items) > 1:  # find the one refused: each alone
                for one in items:
                    self._send([one])
                return
            self.failures += 1
            self.store.failed(item.seq, str(exc))
            log.error("alert delivery refused", extra=kv(target=self.target, event=item.event_id, error=str(exc)[:300]))
            return
        except Exception as exc:  # every other failure is retried, whatever it is
            self.failures += 1
            now = time.time()
            if now - item.created > self.give_up_s:
                self.store.failed(item.seq, str(exc))
                log.error("alert delivery given up", extra=kv(target=self.target, event=item.event_id, attempts=item.attempts + 1,
                                                             error=str(exc)[:300]))
                return
            delay = min(self.cap_s, self.base_s * 2 ** min(item.attempts, 30))
            delay = delay / 2 + random.random() * delay / 2  # jitter
            self.store.retry(item.seq, now + delay, str(exc))
            log.warning("alert delivery failed, will retry", extra=kv(target=self.target, event=item.event_id, attempt=item.attempts + 1,
                                                                       retry_in_s=round(delay, 2), error=str(exc)[:300]))
            return
        self.store.done([i.seq for i in items])
        self.delivered += len(items)
