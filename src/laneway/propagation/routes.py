"""A routes client for consumers: which routing keys select a fork of a service right now.

Served by the control plane's routes feed (the same table the routers use); every process that
laneway starts finds it in LANEWAY_ROUTES_URL / LANEWAY_ROUTES_TOKEN (a read-only token). A
background thread long-polls the feed; `forked_keys(service, fresh_after=t)` refreshes first
when the view is older than `t`, so a message is never judged by a table older than itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import httpx

__all__ = ["RoutesView"]


class RoutesView:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = url or os.environ.get("LANEWAY_ROUTES_URL", "")
        token = token or os.environ.get("LANEWAY_ROUTES_TOKEN", "")
        if not self.url:
            raise RuntimeError("no routes feed: LANEWAY_ROUTES_URL is not set (laneway sets it "
                               "for the processes it starts)")
        self._http = httpx.Client(headers={"authorization": f"Bearer {token}"},
                                  timeout=httpx.Timeout(10, read=40))
        self._lock = threading.Lock()
        self._forks: dict[str, frozenset[str]] = {}
        self._version = -1
        self._confirmed = 0.0  # wall time at which the view was last known to be current
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> None:
        """Fetch the whole table now."""
        asked = time.time()
        data = self._get({})
        self._take_snapshot(data, asked)

    def _get(self, params: dict[str, Any]) -> dict[str, Any]:
        resp = self._http.get(self.url, params=params)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def _take_snapshot(self, data: dict[str, Any], asked: float) -> None:
        snapshot = data["snapshot"]
        forks = {service: frozenset(keys) for service, keys in snapshot["forks"].items()}
        with self._lock:
            self._forks = forks
            self._version = int(data["version"])
            self._confirmed = asked

    def start(self) -> RoutesView:
        self._thread = threading.Thread(target=self._follow, name="laneway-routes", daemon=True)
        self._thread.start()
        return self

    def _follow(self) -> None:
        while not self._stop.is_set():
            asked = time.time()
            try:
                data = self._get({"since": self._version, "wait": 20})
                if data.get("changes"):
                    self.refresh()
                else:
                    with self._lock:
                        self._confirmed = asked
            except (httpx.HTTPError, KeyError, ValueError):
                self._stop.wait(1.0)  # the control plane is away: keep the last table

    def forked_keys(self, service: str, fresh_after: float | None = None) -> frozenset[str]:
        """Keys that select a fork of `service`; refreshed first if older than `fresh_after`."""
        if fresh_after is not None and self._confirmed < fresh_after:
            with contextlib.suppress(httpx.HTTPError):
                self.refresh()
        with self._lock:
            return self._forks.get(service, frozenset())

    def close(self) -> None:
        self._stop.set()
        self._http.close()
