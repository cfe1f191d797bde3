"""A versioned service for churn and fault tests, on the standard library only.

`GET /` answers `{"service", "version", "pid"}` from $LANEWAY_SERVICE, $VERSION and its own pid,
so a test can tell which generation of which service served each request. `GET /slow?ms=N`
sleeps N ms first (a request that is in flight while a sandbox changes); `GET /inflight` says how
many requests are being served right now (itself not counted), so a test can wait until its slow
requests have arrived; `GET /chain` calls $NEXT_URL/ with the incoming `baggage` copied by hand
and answers with its own version and the next service's body under `next` (a two-fork sandbox
can show mixed versions in one request). `/healthz` is the health check.

It speaks HTTP/1.1 with keep-alive (every answer has a Content-Length). On SIGTERM it drains:
the listener closes, requests in flight finish, then it exits. With DRAIN=0 it exits at once on
SIGTERM, like an app that never learnt to drain: only laneway's own drain can save its requests.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NAME = os.environ.get("LANEWAY_SERVICE", "?")
VERSION = os.environ.get("VERSION", "baseline")
NEXT = os.environ.get("NEXT_URL", "")
DRAIN = os.environ.get("DRAIN", "1") != "0"
DRAIN_LIMIT = 30.0  # seconds a drain waits for requests in flight before it gives up


class _InFlight:
    """How many requests are being served right now (the drain waits for 0)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.count -= 1

    def now(self) -> int:
        with self.lock:
            return self.count


_inflight = _InFlight()
_draining = threading.Event()
_next_conns = threading.local()  # one keep-alive connection to $NEXT_URL per handler thread


def _call_next(baggage: str | None) -> Any:
    url = urllib.parse.urlsplit(NEXT)
    headers = {"baggage": baggage} if baggage else {}
    for attempt in (1, 2):
        conn = getattr(_next_conns, "conn", None)
        fresh = conn is None
        if conn is None:
            conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
            _next_conns.conn = conn
        try:
            conn.request("GET", "/", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            _next_conns.conn = None
            if fresh or attempt == 2:  # only a stale keep-alive connection is retried
                raise
            continue
        if resp.status != 200:
            return {"error": resp.status, "body": body.decode("utf-8", "replace")}
        return json.loads(body)
    raise AssertionError("unreachable")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid delayed-ACK stalls

    def log_message(self, format: str, *args: object) -> None:
        pass  # thousands of requests per test: the log would only cost time

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if _draining.is_set():
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _me(self) -> dict[str, Any]:
        return {"service": NAME, "version": VERSION, "pid": os.getpid()}

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            self._send(200, {"ok": True})
            return
        if path == "/inflight":
            self._send(200, {**self._me(), "inflight": _inflight.now()})
            return
        with _inflight:
            if path == "/slow":
                params = urllib.parse.parse_qs(query)
                time.sleep(int(params.get("ms", ["1000"])[0]) / 1000)
                self._send(200, self._me())
            elif path == "/chain" and NEXT:
                self._send(200, {**self._me(), "next": _call_next(self.headers.get("baggage"))})
            elif path in ("/", "/chain"):
                self._send(200, self._me())
            else:
                self._send(404, {**self._me(), "error": f"no route {path}"})


def _drain_and_exit(server: ThreadingHTTPServer) -> None:
    _draining.set()
    server.shutdown()  # the accept loop ends ...
    server.server_close()  # ... and the listener closes: new connections are refused
    deadline = time.monotonic() + DRAIN_LIMIT
    while time.monotonic() < deadline:
        if _inflight.now() == 0:
            break
        time.sleep(0.01)
    print(f"{NAME} {VERSION}: drained, exiting", flush=True)
    os._exit(0)


def main() -> None:
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)

    def on_term(signum: int, frame: object) -> None:
        if not DRAIN:
            print(f"{NAME} {VERSION}: SIGTERM, exiting at once (DRAIN=0)", flush=True)
            os._exit(0)
        if not _draining.is_set():
            threading.Thread(target=_drain_and_exit, args=(server,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"{NAME} {VERSION} listening on {os.environ['PORT']} (pid {os.getpid()})", flush=True)
    server.serve_forever()
    # serve_forever returns once a drain has begun; the drain thread ends the process.
    threading.Event().wait()


if __name__ == "__main__":
    main()
