"""Real HTTP load for churn and fault tests: clients in threads of the test process.

`Load` runs N clients against one URL, with or without a routing key, each in its own thread,
over keep-alive connections (or a new connection per request, which also sees a listener that is
gone). Every request is recorded (`Sample`): when it started and ended (monotonic), its status or
error, the versions in its body (`versions(...)` of `tests/apps/versioned.py`) and the router's
`laneway-served-by`. Tests then ask: how many failed, and did any request that started after a
moment T get an answer from another generation.

A request on a reused keep-alive connection that the server closed before sending any byte of an
answer is sent again once on a new connection, as browsers, curl and HTTP libraries do (RFC 9112
§9.3.1: the server may close an idle connection at any time); such retries are counted, not
hidden (`Load.retried`). Any other error, and any status but 200 (here or, for `/chain`, at the
next hop), is a failure.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Load", "Sample", "burst", "failures", "keyed_headers", "once", "running", "summary",
           "versions_of", "wrong_after"]


def keyed_headers(key: str | None) -> dict[str, str]:
    """The headers of a request carrying a routing key, as OpenTelemetry would send them."""
    return {"baggage": f"trace=load, laneway-key={key}"} if key else {}


def versions_of(body: Any) -> tuple[str, ...]:
    """The versions along a `/chain` answer (one for `/`): ('two',) or ('two', 'two')."""
    out: list[str] = []
    while isinstance(body, dict) and "version" in body:
        out.append(str(body["version"]))
        body = body.get("next")
    if isinstance(body, dict):  # the next hop answered an error: keep it visible
        out.append(f"error:{body.get('error')}")
    return tuple(out)


@dataclass(slots=True)
class Sample:
    start: float
    end: float
    status: int | None  # None: no HTTP answer at all (error says why)
    versions: tuple[str, ...] = ()
    served_by: str = ""
    error: str = ""
    body: str = ""  # the text of an answer that is not a 200
    payload: Any = None  # the JSON of the answer

    @property
    def ok(self) -> bool:
        """A 200, and (for `/chain`) the next hop answered 200 too."""
        return self.status == 200 and not any(v.startswith("error:") for v in self.versions)

    def describe(self) -> str:
        what = f"{self.status}" if self.status is not None else f"error {self.error}"
        return (f"[{self.start:.3f}-{self.end:.3f}] {what} served-by={self.served_by or '-'} "
                f"versions={','.join(self.versions) or '-'} {self.body[:160]}")


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          http.client.BadStatusLine)


class _Client:
    def __init__(self, url: str, headers: dict[str, str], keepalive: bool,
                 timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = headers
        self.keepalive = keepalive
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.retried = 0

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        if self.conn is not None:
            return self.conn, True
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn, False

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def request(self) -> Sample:
        start = time.monotonic()
        for _ in range(2):
            conn, reused = self._connection()
            try:
                conn.request("GET", self.path, headers=self.headers)
                resp = conn.getresponse()
                data = resp.read()
            except _STALE as exc:
                self._drop()
                if reused:
                    self.retried += 1
                    continue
                return Sample(start, time.monotonic(), None, error=repr(exc))
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                return Sample(start, time.monotonic(), None, error=repr(exc))
            end = time.monotonic()
            if not self.keepalive or resp.will_close:
                self._drop()
            text = data.decode("utf-8", "replace")
            try:
                payload = json.loads(text)
            except ValueError:
                payload = None
            return Sample(start, end, resp.status, versions_of(payload),
                          resp.getheader("laneway-served-by") or "",
                          body="" if resp.status == 200 else text, payload=payload)
        return Sample(start, time.monotonic(), None, error="closed twice before an answer")


@dataclass
class Load:
    """`clients` threads sending GET `url` (with `key` in baggage when given) until stopped.

    `pause` seconds between a client's requests keeps the load steady without starving the
    processes under test on a small machine; 0 means as fast as possible."""

    url: str
    key: str | None = None
    clients: int = 4
    keepalive: bool = True
    pause: float = 0.002
    timeout: float = 20.0
    name: str = ""
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _clients: list[_Client] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for i in range(self.clients):
            client = _Client(self.url, keyed_headers(self.key), self.keepalive, self.timeout)
            self._clients.append(client)
            thread = threading.Thread(target=self._loop, args=(client,), daemon=True,
                                      name=f"load-{self.name}-{i}")
            self._threads.append(thread)
            thread.start()
        return self

    def _loop(self, client: _Client) -> None:
        try:
            while not self._stop.is_set():
                sample = client.request()
                with self._lock:
                    self.samples.append(sample)
                if self.pause:
                    self._stop.wait(self.pause)
        finally:
            client._drop()

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.snapshot()

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    @property
    def retried(self) -> int:
        return sum(c.retried for c in self._clients)

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` more requests have been answered (the load really is flowing)."""
        target = len(self.snapshot()) + count
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load {self.name}: fewer than {count} requests in "
                                     f"{timeout:g}s ({len(self.snapshot())} in all)")
            time.sleep(0.01)


def once(url: str, key: str | None = None, timeout: float = 20.0) -> Sample:
    """One request on a new connection."""
    client = _Client(url, keyed_headers(key), keepalive=False, timeout=timeout)
    return client.request()


def burst(url: str, key: str | None, count: int, clients: int = 4,
          timeout: float = 20.0) -> list[Sample]:
    """`count` requests as fast as `clients` keep-alive connections can send them."""
    samples: list[Sample] = []
    lock = threading.Lock()
    left = [count]

    def work() -> None:
        client = _Client(url, keyed_headers(key), keepalive=True, timeout=timeout)
        try:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                sample = client.request()
                with lock:
                    samples.append(sample)
        finally:
            client._drop()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * count)
    return sorted(samples, key=lambda s: s.start)


@contextlib.contextmanager
def running(*loads: Load) -> Iterator[Sequence[Load]]:
    """Start the loads, and stop them on the way out whatever happened."""
    started: list[Load] = []
    try:
        for load in loads:
            started.append(load.start())
        for load in loads:
            load.wait_for(20)
        yield loads
    finally:
        for load in started:
            load.stop()


def failures(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if not s.ok]


def wrong_after(samples: Iterable[Sample], after: float,
                expected: Callable[[Sample], bool]) -> list[Sample]:
    """Requests that started after `after` (monotonic) and whose answer is not what the
    generation in force from then on would give."""
    return [s for s in samples if s.start >= after and s.ok and not expected(s)]


def summary(load: Load, samples: Sequence[Sample]) -> str:
    by_version: dict[str, int] = {}
    for s in samples:
        label = f"{s.served_by or '-'}:{'/'.join(s.versions) or s.status or 'error'}"
        by_version[label] = by_version.get(label, 0) + 1
    return (f"load {load.name}: {len(samples)} requests, {len(failures(samples))} failed, "
            f"{load.retried} stale keep-alive retries; answers {by_version}")
