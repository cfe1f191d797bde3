"""The routing key in the current context and in message headers (see the package docstring)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

from laneway.core.baggage import (
    BAGGAGE_MEMBER,
    baggage_key,
    key_from_baggage,
    key_from_tracestate,
    member_key,
    with_key,
)

__all__ = [
    "cache_key",
    "current_routing_key",
    "message_headers",
    "routing_key_from_headers",
    "use_routing_key",
]

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("laneway_routing_key",
                                                                       default=None)


def _otel() -> Any:
    try:
        from opentelemetry import baggage, context, propagate
    except ImportError:  # OpenTelemetry is optional for services
        return None
    return baggage, context, propagate


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def routing_key_from_headers(headers: Mapping[Any, Any]) -> str | None:
    """The key in HTTP or message headers (`baggage`, `tracestate`; any case; str or bytes)."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        found[_text(name).lower()] = _text(value)
    if "baggage" in found:
        key = key_from_baggage(found["baggage"].encode())
        if key:
            return key
    if "tracestate" in found:
        return key_from_tracestate(found["tracestate"].encode())
    return None


def current_routing_key(headers: Mapping[Any, Any] | None = None) -> str | None:
    """The routing key of what is being handled now, or None (baseline traffic)."""
    if headers is not None:
        key = routing_key_from_headers(headers)
        if key:
            return key
    explicit = _current.get()
    if explicit:
        return explicit
    otel = _otel()
    if otel is not None:
        value = otel[0].get_baggage(BAGGAGE_MEMBER)
        if value:
            # OpenTelemetry-Python keeps a member's properties in its value: `K;ttl=60`.
            return member_key(str(value))
    return None


def message_headers(key: str | None = None) -> dict[str, str]:
    """Headers for an outgoing message: the key in `baggage` (and the trace context)."""
    headers: dict[str, str] = {}
    otel = _otel()
    if otel is not None:
        otel[2].inject(headers)  # traceparent, and baggage when the context has some
    key = key or current_routing_key()
    if key and baggage_key(headers.get("baggage", "").encode()) != (key, False):
        headers["baggage"] = with_key(headers.get("baggage"), key)  # replaced, never a second
    return headers


@contextlib.contextmanager
def use_routing_key(key: str | None, headers: Mapping[Any, Any] | None = None) -> Iterator[None]:
    """Make `key` (or the trace context in `headers`) current while a message is handled."""
    token = _current.set(key)
    otel = _otel()
    otel_token = None
    if otel is not None:
        baggage, context, propagate = otel
        ctx = propagate.extract({_text(k).lower(): _text(v) for k, v in (headers or {}).items()})
        if key:
            ctx = baggage.set_baggage(BAGGAGE_MEMBER, key, context=ctx)
        otel_token = context.attach(ctx)
    try:
        yield
    finally:
        if otel is not None and otel_token is not None:
            otel[1].detach(otel_token)
        _current.reset(token)


def cache_key(name: str, key: str | None = None) -> str:
    """`name` prefixed with the routing key (`lw:KEY:name`); unchanged for baseline traffic."""
    key = key or current_routing_key()
    return f"lw:{key}:{name}" if key else name
