"""The Redis Streams consumer on a real Redis: the baseline and forks split the messages by
key, nothing is lost or handled twice as sandboxes come and go."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from laneway.propagation import current_routing_key, message_headers, routing_key_from_headers
from laneway.propagation.streams import StreamConsumer


class Routes:
    """The routes view is our own interface: a settable one stands in for the feed here."""

    def __init__(self) -> None:
        self.forked: dict[str, set[str]] = {"worker": set()}

    def forked_keys(self, service: str, fresh_after: float | None = None) -> frozenset[str]:
        return frozenset(self.forked.get(service, set()))


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    conn.delete("orders")
    for key in conn.scan_iter("laneway:claim:*"):
        conn.delete(key)
    yield conn
    conn.close()


def produce(client: redis.Redis, n: int, key: str | None = None) -> str:
    return client.xadd("orders", {"n": str(n), **message_headers(key)}).decode()


def drain(*consumers: StreamConsumer) -> None:
    for _ in range(3):
        for consumer in consumers:
            consumer.poll_once(block_ms=10)


def test_messages_split_by_key_without_loss_or_duplicates(client: redis.Redis) -> None:
    routes = Routes()
    handled: dict[str, list[tuple[str, str | None]]] = {"base": [], "k2": [], "k3": []}

    def recorder(name: str):  # type: ignore[no-untyped-def]
        def handle(message_id: str, fields: dict[str, str], key: str | None) -> None:
            assert current_routing_key() == key  # the handler runs in the message's context
            handled[name].append((fields["n"], key))
        return handle

    base = StreamConsumer(client, "orders", "worker", recorder("base"), service="worker",
                          routes=routes, consumer="base", recheck_every=0)  # type: ignore[arg-type]
    produce(client, 1)
    produce(client, 2, "key2key2key2")  # not forked yet: the baseline takes it
    drain(base)
    routes.forked["worker"] = {"key2key2key2", "key3key3key3"}
    produce(client, 3, "key2key2key2")
    produce(client, 4, "key3key3key3")
    produce(client, 5)
    drain(base)
    fork2 = StreamConsumer(client, "orders", "worker", recorder("k2"),
                           routing_key="key2key2key2", consumer="f2")
    drain(base, fork2)
    # Sandbox 3 is deleted before its fork ever ran: its message comes back to the baseline.
    routes.forked["worker"] = {"key2key2key2"}
    drain(base, fork2)

    assert sorted(handled["base"]) == [("1", None), ("2", "key2key2key2"),
                                       ("4", "key3key3key3"), ("5", None)]
    assert handled["k2"] == [("3", "key2key2key2")]
    everything = [n for name in handled for n, _ in handled[name]]
    assert sorted(everything) == ["1", "2", "3", "4", "5"]  # each exactly once


def test_headers_round_trip() -> None:
    headers = message_headers("abcabcabcabc")
    assert routing_key_from_headers({b"baggage": headers["baggage"].encode()}) == "abcabcabcabc"
    assert routing_key_from_headers({"Tracestate": "laneway=zzz"}) == "zzz"
    assert routing_key_from_headers({}) is None
