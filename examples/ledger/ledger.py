"""The ledger: a database-backed service and a stream worker (the data demo and its tests).

`ledger.py api`: POST /orders?item=X inserts a row into $DATABASE_URL and publishes a message
on the Redis stream `orders` ($REDIS_URL) carrying the request's routing key.
`ledger.py worker`: consumes `orders` with laneway's StreamConsumer and records each message it
handles in its own $DATABASE_URL (table `processed`). Both answer GET /healthz on $PORT.
"""

import json
import os
import sys
import threading
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import redis

from laneway.propagation import current_routing_key, message_headers
from laneway.propagation.streams import StreamConsumer

ROLE = sys.argv[1]
DATABASE_URL = os.environ["DATABASE_URL"]
REDIS = redis.Redis.from_url(os.environ["REDIS_URL"])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"ok": True, "role": ROLE})

    def do_POST(self) -> None:
        # A failure (Postgres refusing a connection, Redis gone) is answered, not left as a
        # closed connection: the caller, and laneway's router, then say what went wrong.
        try:
            self._order()
        except Exception as exc:  # every failure becomes a 500 that names it
            traceback.print_exc()
            self._send(500, {"error": type(exc).__name__, "message": str(exc).strip()})

    def _order(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        item = query["item"][0]
        key = current_routing_key(dict(self.headers.items()))
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            row = conn.execute("INSERT INTO orders (item, key) VALUES (%s, %s) RETURNING id",
                               (item, key)).fetchone()
        REDIS.xadd("orders", {"item": item, **message_headers(key)})
        self._send(201, {"id": row[0] if row else None})


def serve() -> ThreadingHTTPServer:
    ThreadingHTTPServer.daemon_threads = True
    return ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)


if ROLE == "api":
    serve().serve_forever()
else:
    db = psycopg.connect(DATABASE_URL, autocommit=True)

    def handle(message_id: str, fields: dict[str, str], key: str | None) -> None:
        db.execute("INSERT INTO processed (msg_id, item, key) VALUES (%s, %s, %s)",
                   (message_id, fields["item"], key))

    consumer = StreamConsumer(REDIS, "orders", "worker", handle)
    threading.Thread(target=serve().serve_forever, daemon=True).start()
    print(f"worker for key {consumer.routing_key} in group {consumer.group}", flush=True)
    consumer.run_forever()
