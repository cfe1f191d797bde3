"""Which env values are secret, and how they are shown: masked, unless a user asks for them.

Pure functions. The API masks every sandbox view with them before it answers (so the CLI, MCP
and UI all get masked values), and `?reveal_secrets=true` skips them; the store, the audit log
and the processes themselves keep and get the raw values (`.laneway/` is private to its user).

Two rules, in this order:

- a name that looks secret (`DB_PASSWORD`, `githubToken`, `SENTRY_DSN`, `API_KEY`) hides its
  whole value;
- under any name, a password inside a URL (`postgres://app:pw@host/db`) or a key=value DSN
  (`host=db password=pw`) is hidden and the rest is kept, since the host and database are what a
  reader of a view needs to see.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "looks_secret", "mask_env", "mask_tree", "mask_value"]

# Only the mask, never a masked value's length or first characters: the length narrows a guess
# (a 6-character password is not a 30-character token), and it tells an empty value from a set one.
MASK = "***"

# Word parts (of `DB_PASSWORD`, `db-password`, `db.password`, `dbPassword`) that make a name secret.
_SECRET_PARTS = frozenset({
    "password", "passwords", "passwd", "pwd", "pass", "passphrase",
    "secret", "secrets", "token", "apikey", "key", "credential", "credentials",
    "private", "privatekey", "auth", "authorization", "session", "cookie", "dsn",
})
# Run-together names (`PGPASSWORD`, `GITHUBTOKEN`, `CLIENTSECRET`) end in one of these. Short
# words are left out on purpose: `MONKEY`, `BYPASS` and `AUTHOR` are not secrets.
_SECRET_ENDINGS = ("password", "passwd", "passphrase", "secret", "token", "apikey",
                   "credential", "credentials")

_SEPARATORS = re.compile(r"[_\-.\s]+")
# Camel case: `APIKey` → API, Key; `dbPassword` → db, Password; digits are parts of their own.
_CAMEL_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

# `scheme://`; the authority after it ends at the first `/`, `?`, `#` or whitespace, as urlsplit
# and libpq read it (or where the next URL starts: `redis://:a@h1,redis://:b@h2`). Its user
# info ends at the authority's last `@`.
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_AUTHORITY_END = re.compile(r"[/?#\s]")
# `NAME=value` inside a value: a libpq DSN (`password=pw`), a URL query (`?api_key=k&`), an
# ADO connection string (`Password=pw;`), a command line (`DB_PASSWORD=pw ./app --token=t`).
_ASSIGNMENT = (r"(?<![A-Za-z0-9_.])([A-Za-z_][A-Za-z0-9_.\-]*)(\s*=\s*)"
               r"('(?:[^'\\]|\\.)*'|\"[^\"]*\"|{})")
_KV_ASSIGNMENT = re.compile(_ASSIGNMENT.format(r"[^\s&;]*"))
# With `;` between fields (`Server=db;Password=a b;`), a value may hold spaces.
_ADO_ASSIGNMENT = re.compile(_ASSIGNMENT.format(r"[^;]*"))


def _word_parts(name: str) -> list[str]:
    return [part.lower() for chunk in _SEPARATORS.split(name)
            for part in _CAMEL_PARTS.findall(chunk)]


def looks_secret(name: str) -> bool:
    """True if an env variable of this name holds something a view must not show."""
    parts = _word_parts(name)
    for i, part in enumerate(parts):
        # The routing key (`LANEWAY_ROUTING_KEY`, `routingKey`) is shown everywhere on purpose:
        # it selects a sandbox, it grants nothing.
        if part == "key" and i > 0 and parts[i - 1] == "routing":
            continue
        if part in _SECRET_PARTS or part.endswith(_SECRET_ENDINGS):
            return True
    return False


def _mask_url_passwords(value: str) -> str:
    out: list[str] = []
    done = 0
    schemes = list(_URL_SCHEME.finditer(value))
    for i, scheme in enumerate(schemes):
        start = scheme.end()
        limit = schemes[i + 1].start() if i + 1 < len(schemes) else len(value)
        end = _AUTHORITY_END.search(value, start, limit)
        authority = value[start:end.start() if end else limit]
        userinfo, at, _host = authority.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if not at or not colon or not password or password == MASK:
            continue
        password_at = start + len(user) + 1
        out += [value[done:password_at], MASK]
        done = password_at + len(password)
    out.append(value[done:])
    return "".join(out)


def _mask_assignments(value: str) -> str:
    pattern = _ADO_ASSIGNMENT if ";" in value else _KV_ASSIGNMENT

    def masked(match: re.Match[str]) -> str:
        name, equals, secret = match.groups()
        if not secret or not looks_secret(name):
            return match.group(0)
        return name + equals + MASK

    return pattern.sub(masked, value)


def mask_value(name: str, value: str) -> str:
    """`value` as a view shows it: the mask for a secret-looking name; otherwise the value with
    the passwords of the URLs and DSNs in it, and secret-looking `NAME=value` parts, masked."""
    if looks_secret(name):
        return MASK
    if "://" in value:
        value = _mask_url_passwords(value)
    if "=" in value:
        value = _mask_assignments(value)
    return value


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """An environment as a view shows it (see `mask_value`)."""
    return {name: mask_value(name, value) for name, value in env.items()}


def mask_tree(data: Any, name: str = "") -> Any:
    """JSON-like data (a resource's params or outputs) with every string masked as the value of
    the nearest key above it; other values are kept. A secret-looking key hides all below it."""
    if isinstance(data, str):
        return mask_value(name, data)
    if isinstance(data, Mapping):
        # A secret-looking key hides a whole structure (`credentials: {user: u, pass: p}`).
        return {k: MASK if looks_secret(str(k)) and isinstance(v, Mapping | list | tuple)
                else mask_tree(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [mask_tree(item, name) for item in data]
    return data
