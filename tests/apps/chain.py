"""A link of a service chain for tests, on the standard library only.

It answers `GET /` with its name and version, calling $NEXT_URL first when set and copying the
incoming `baggage`/`traceparent` onto that call by hand (no OpenTelemetry): the way a service in
any language can propagate the routing key. Misbehaviour on demand: EXIT_AT_ONCE=1 exits with
code 3 after printing an error; FAIL_HEALTH=1 never becomes healthy; /drop calls the next hop
without the baggage (a propagation leak); /lose, or LOSE_CONTEXT=1, calls it with no context at
all (neither baggage nor traceparent: work handed to a thread that lost it); FAIL_REQUESTS=1
answers 500 and logs an ERROR line; RENAME=new renames the answer's `version` field to `new`;
REQUIRE_AUTH=token answers 401 unless `Authorization: Bearer token` came with the request;
DELAY_MS=120 answers every request but /healthz that much later (a slower approach, for the
experiments' load step: its latency is known).
"""

import http.client
import json
import os
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("LANEWAY_SERVICE", "?")
VERSION = os.environ.get("VERSION", "baseline")
NEXT = os.environ.get("NEXT_URL", "")
DELAY_S = float(os.environ.get("DELAY_MS", "0")) / 1000

if os.environ.get("EXIT_AT_ONCE"):
    print(f"{NAME}: fatal: cannot load configuration (EXIT_AT_ONCE)", file=sys.stderr)
    sys.exit(3)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid delayed-ACK stalls

    def log_message(self, format: str, *args: object) -> None:
        print(f"{NAME} {VERSION}: {format % args}", flush=True)

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            if os.environ.get("FAIL_HEALTH"):
                self._send(500, {"ok": False})
            else:
                self._send(200, {"ok": True})
            return
        token = os.environ.get("REQUIRE_AUTH")
        if token and self.headers.get("authorization") != f"Bearer {token}":
            self._send(401, {"error": "unauthorized", "service": NAME})
            return
        if os.environ.get("FAIL_REQUESTS"):
            print(f"ERROR {NAME} {VERSION}: cannot price {self.path}: division by zero",
                  flush=True)
            self._send(500, {"error": "division by zero", "service": NAME})
            return
        if DELAY_S:
            time.sleep(DELAY_S)
        nxt = None
        if NEXT:
            url = urllib.parse.urlsplit(NEXT)
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            headers = {}
            lose = self.path == "/lose" or os.environ.get("LOSE_CONTEXT")
            for name in () if lose else ("baggage", "traceparent", "tracestate"):
                if self.headers.get(name) and not (self.path == "/drop" and name == "baggage"):
                    headers[name] = self.headers[name]
            conn.request("GET", self.path, headers=headers)
            resp = conn.getresponse()
            nxt = json.loads(resp.read())
            conn.close()
        answer = {"service": NAME, "version": VERSION, "next": nxt}
        if os.environ.get("RENAME"):
            answer[os.environ["RENAME"]] = answer.pop("version")
        self._send(200, answer)


ThreadingHTTPServer.daemon_threads = True
HOST = os.environ.get("HOST", "127.0.0.1")  # a fork "pod" at its Service's loopback address
server = ThreadingHTTPServer((HOST, int(os.environ["PORT"])), Handler)
print(f"{NAME} {VERSION} listening on {os.environ['PORT']}", flush=True)
server.serve_forever()
