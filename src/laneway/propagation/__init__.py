"""Helpers for Python services: carry the routing key where OpenTelemetry does not.

OpenTelemetry's default propagators already carry `baggage` on HTTP calls; these helpers cover
messages, background jobs and caches:

- `current_routing_key(headers=None)`: the key of the current request (from OpenTelemetry
  baggage when it is in use, else from the context set by `use_routing_key`, or from `headers`).
- `message_headers(key=None)`: headers to put on an outgoing message (`baggage`, and
  `traceparent` when OpenTelemetry has a span).
- `routing_key_from_headers(headers)`: the key in a message's (or request's) headers.
- `use_routing_key(key)`: a context manager that makes `key` current while a message is handled,
  so the handler's own HTTP calls (through OpenTelemetry) carry it on.
- `cache_key(name, key=None)`: a cache key prefixed with the routing key, so sandboxes sharing a
  cache do not read each other's entries.

With Kafka, pass `list(message_headers().items())` (encoded) as the record's headers and read
them back with `routing_key_from_headers(dict(record.headers))`; a consumer group per fork
(`group@KEY`) and the skip rule of `laneway.propagation.streams` apply the same way.
"""

from laneway.propagation.context import (
    cache_key,
    current_routing_key,
    message_headers,
    routing_key_from_headers,
    use_routing_key,
)

__all__ = [
    "cache_key",
    "current_routing_key",
    "message_headers",
    "routing_key_from_headers",
    "use_routing_key",
]
