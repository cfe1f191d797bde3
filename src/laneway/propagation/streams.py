"""A Redis Streams consumer that honours routing keys.

Messages carry the key in a `baggage` field (put there with `message_headers()`). The rules:
- the baseline's consumer (a process without LANEWAY_ROUTING_KEY) handles messages without a
  key, and keyed messages whose key does not select a fork of its service; it leaves the others
  pending in its group and looks at them again later, so that a message whose sandbox is deleted
  before its fork took it is handled by the baseline after all (nothing is lost);
- a fork's consumer (LANEWAY_ROUTING_KEY set) reads the stream in a group of its own
  (`GROUP@KEY`) and handles only messages with its key;
- every keyed message is claimed once (`SET … NX`) before it is handled, so when sandboxes come
  and go, a message is never handled by two consumers. Unkeyed messages are at-least-once, as
  with any consumer group; keyed ones at-most-once past the claim.

The handler runs inside `use_routing_key(key)`, so its own HTTP calls carry the key on.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis

from laneway.propagation.context import _text, routing_key_from_headers, use_routing_key
from laneway.propagation.routes import RoutesView

__all__ = ["Handler", "StreamConsumer"]

Handler = Callable[[str, dict[str, str], str | None], None]
CLAIM_TTL = 7 * 86400


def _message_time(message_id: str) -> float:
    return int(message_id.split("-", 1)[0]) / 1000.0


class StreamConsumer:
    def __init__(self, client: redis.Redis, stream: str, group: str, handler: Handler, *,
                 service: str | None = None, routing_key: str | None = None,
                 routes: RoutesView | None = None, consumer: str | None = None,
                 recheck_every: float = 1.0) -> None:
        self.client = client
        self.stream = stream
        self.handler = handler
        self.service = service or os.environ.get("LANEWAY_SERVICE", "")
        env_key = os.environ.get("LANEWAY_ROUTING_KEY") or None
        self.routing_key = routing_key if routing_key is not None else env_key
        self.group = f"{group}@{self.routing_key}" if self.routing_key else group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.routes = routes
        if self.routing_key is None and self.routes is None:
            self.routes = RoutesView().start()
        self.recheck_every = recheck_every
        self._last_recheck = 0.0
        self.handled = 0
        try:
            # A fork's group reads from the start: it must see its messages from before it ran.
            self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim(self, message_id: str) -> bool:
        return bool(self.client.set(f"laneway:claim:{self.stream}:{message_id}", self.consumer,
                                    nx=True, ex=CLAIM_TTL))

    def _handle(self, message_id: str, fields: dict[str, str], key: str | None) -> None:
        with use_routing_key(key, fields):
            self.handler(message_id, fields, key)
        self.handled += 1

    def _consider(self, message_id: str, fields: dict[str, str]) -> bool:
        """Handle or skip one message; True when it is done with (to be acknowledged)."""
        key = routing_key_from_headers(fields)
        if self.routing_key is not None:  # a fork: only its own key
            if key == self.routing_key and self._claim(message_id):
                self._handle(message_id, fields, key)
            return True
        if key is None:
            self._handle(message_id, fields, None)
            return True
        assert self.routes is not None
        if key in self.routes.forked_keys(self.service, fresh_after=_message_time(message_id)):
            return False  # a fork of this service takes it; look again later
        if self._claim(message_id):
            self._handle(message_id, fields, key)
        return True

    def poll_once(self, block_ms: int = 500, count: int = 100) -> int:
        """Read and handle what is new (and recheck skipped messages); returns how many."""
        before = self.handled
        # redis-py's return types are unions of every protocol version's shapes.
        batches: Any = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                         count=count, block=block_ms)
        for _, messages in batches or []:
            for raw_id, raw_fields in messages:
                message_id = _text(raw_id)
                fields = {_text(k): _text(v) for k, v in raw_fields.items()}
                if self._consider(message_id, fields):
                    self.client.xack(self.stream, self.group, message_id)
        if self.routing_key is None and time.monotonic() - self._last_recheck > \
                self.recheck_every:
            self._last_recheck = time.monotonic()
            self._recheck_pending()
        return self.handled - before

    def _recheck_pending(self) -> None:
        """Skipped messages whose key no longer selects a fork come back to the baseline."""
        pending: Any = self.client.xpending_range(self.stream, self.group, "-", "+", 1000,
                                             consumername=self.consumer)
        for entry in pending:
            message_id = _text(entry["message_id"])
            found: Any = self.client.xrange(self.stream, message_id, message_id)
            if not found:
                self.client.xack(self.stream, self.group, message_id)
                continue
            fields = {_text(k): _text(v) for k, v in found[0][1].items()}
            if self._consider(message_id, fields):
                self.client.xack(self.stream, self.group, message_id)

    def run_forever(self, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            self.poll_once()
