"""A two-service web app for the browser tests, on the standard library only.

ROLE=web serves `/`, a page that asks for data two ways with `fetch()`: from its own origin
(`/api/data`, which web answers by calling the data service with the request's `baggage`) and
straight from the data service's public address (DATA_URL, a cross-origin call the browser
makes itself). ROLE=data answers `/data` with its VERSION, and allows any origin (CORS).
"""

import http.client
import json
import os
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROLE = os.environ.get("ROLE", "web")
VERSION = os.environ.get("VERSION", "baseline")
DATA_URL = os.environ.get("DATA_URL", "")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pages</title><link rel="icon" href="data:,">
</head><body><main><h1>Pages</h1>
<p>Same origin: <output id="same">…</output></p>
<p>Cross origin: <output id="cross">…</output></p>
<script>
async function show(id, url) {
  try {
    const resp = await fetch(url);
    const data = await resp.json();
    document.getElementById(id).textContent = resp.ok ? data.version : "error " + resp.status;
  } catch (err) {
    document.getElementById(id).textContent = "failed: " + err;
  }
}
show("same", "/api/data");
show("cross", "DATA_URL/data");
</script></main></body></html>
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        print(f"{ROLE} {VERSION}: {format % args}", flush=True)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        if ROLE == "data":
            self.send_header("access-control-allow-origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b'{"ok": true}', "application/json")
        elif ROLE == "data" and self.path.split("?")[0] == "/data":
            self._send(200, json.dumps({"version": VERSION}).encode(), "application/json")
        elif ROLE == "web" and self.path == "/":
            self._send(200, PAGE.replace("DATA_URL", DATA_URL).encode(), "text/html")
        elif ROLE == "web" and self.path == "/api/data":
            url = urllib.parse.urlsplit(DATA_URL)
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            headers = {n: self.headers[n] for n in ("baggage", "traceparent") if self.headers[n]}
            conn.request("GET", "/data", headers=headers)
            resp = conn.getresponse()
            self._send(resp.status, resp.read(), "application/json")
            conn.close()
        else:
            self._send(404, b'{"error": "not found"}', "application/json")


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
