"""Browser sessions for the web UI, started from one-time login codes.

`laneway ui` asks the API (with the API token) for a login code and prints a link that carries
it; opening the link trades the code for a session, once, within `CODE_TTL` seconds. The UI
then calls the API with the session as its bearer token. So the API token itself never sits in
a URL, a browser's history or a shell's, and a link that leaked is worthless once it was used
or is two minutes old. Sessions live in memory: a restarted control plane asks for a new link.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

__all__ = ["CODE_TTL", "SESSION_TTL", "Sessions"]

CODE_TTL = 120.0
SESSION_TTL = 12 * 3600.0
MAX_PENDING = 64  # codes not redeemed yet; the oldest go first


def _digest(secret: str) -> str:
    # Kept by digest: a memory dump or a debug print shows no usable secret.
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._codes: dict[str, float] = {}  # digest -> expiry
        self._sessions: dict[str, float] = {}

    def new_code(self) -> tuple[str, float]:
        """A one-time login code and when it expires."""
        now = self._clock()
        self._expire(now)
        while len(self._codes) >= MAX_PENDING:
            self._codes.pop(next(iter(self._codes)))
        code = secrets.token_urlsafe(24)
        self._codes[_digest(code)] = now + CODE_TTL
        return code, now + CODE_TTL

    def redeem(self, code: str) -> tuple[str, float] | None:
        """A new session for a valid code (the code is spent), None otherwise."""
        now = self._clock()
        expiry = self._codes.pop(_digest(code), None)
        if expiry is None or expiry < now:
            return None
        session = secrets.token_urlsafe(32)
        self._sessions[_digest(session)] = now + SESSION_TTL
        return session, now + SESSION_TTL

    def valid(self, session: str) -> bool:
        expiry = self._sessions.get(_digest(session))
        if expiry is None:
            return False
        if expiry < self._clock():
            del self._sessions[_digest(session)]
            return False
        return True

    def end(self, session: str) -> None:
        self._sessions.pop(_digest(session), None)

    def _expire(self, now: float) -> None:
        for table in (self._codes, self._sessions):
            for digest in [d for d, expiry in table.items() if expiry < now]:
                del table[digest]
