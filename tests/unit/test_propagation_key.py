"""The propagation helpers read a key as OpenTelemetry-Python hands it over, and put one on a
message by replacing the key the context carries (the real SDK, its global propagators)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import context
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from laneway.core.baggage import baggage_key
from laneway.propagation import current_routing_key, message_headers
from tests.baggage_cases import K1, K2


@pytest.fixture
def otel_baggage() -> Iterator[None]:
    # What a service sees after OpenTelemetry-Python re-injected `laneway-key=K1;ttl=60`.
    ctx = W3CBaggagePropagator().extract({"baggage": f"a=1,laneway-key={K1}%3Bttl%3D60"})
    token = context.attach(ctx)
    yield
    context.detach(token)


@pytest.mark.usefixtures("otel_baggage")
def test_the_key_in_the_context_is_read_without_its_properties() -> None:
    assert current_routing_key() == K1
    headers = message_headers()
    assert baggage_key(headers["baggage"].encode()) == (K1, False)


@pytest.mark.usefixtures("otel_baggage")
def test_an_explicit_key_replaces_the_one_in_the_context() -> None:
    headers = message_headers(K2)
    assert baggage_key(headers["baggage"].encode()) == (K2, False)
    assert headers["baggage"] == f"a=1,laneway-key={K2}"
