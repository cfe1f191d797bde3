"""Routing keys: generation and shape.

A routing key selects a sandbox or route group. It is short enough to read in a log line, long
enough not to be guessed, and drawn from a CSPRNG once per sandbox (kept across updates).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import NewType

__all__ = [
    "KEY_ALPHABET", "KEY_LENGTH", "RoutingKey", "is_routing_key", "new_api_token",
    "new_routing_key", "routing_key_of",
]

RoutingKey = NewType("RoutingKey", str)

KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
KEY_LENGTH = 12
_KEY_RE = re.compile(r"[a-z0-9]{12}")


def new_routing_key() -> RoutingKey:
    """A fresh 12-character key from the operating system's CSPRNG."""
    return RoutingKey("".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH)))


def routing_key_of(uid: str) -> RoutingKey:
    """The key of a Kubernetes object, from its uid (random, set once by the API server): every
    pass over it, in any process, arrives at the same key without having to agree first (two
    first passes at once each made up their own). A re-created object has a new uid, so a new
    key, as a re-created local sandbox does."""
    number = int.from_bytes(hashlib.sha256(f"laneway-key:{uid}".encode()).digest(), "big")
    chars = []
    for _ in range(KEY_LENGTH):
        number, digit = divmod(number, len(KEY_ALPHABET))
        chars.append(KEY_ALPHABET[digit])
    return RoutingKey("".join(chars))


def is_routing_key(value: str) -> bool:
    return _KEY_RE.fullmatch(value) is not None


def new_api_token(nbytes: int = 32) -> str:
    """A bearer token (URL-safe) that never starts with `-`: users pass tokens on command lines
    (`--token T`), where a leading dash reads as an option (1 token in 64 did)."""
    return "lw" + secrets.token_urlsafe(nbytes)
