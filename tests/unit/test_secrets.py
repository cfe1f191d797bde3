"""Which env values views mask (`laneway.core.secrets`): names, URLs, DSNs, and the properties
that make masking safe to apply anywhere (idempotent, never shows the password, leaves the rest
alone)."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from laneway.core.secrets import MASK, looks_secret, mask_env, mask_tree, mask_value


@pytest.mark.parametrize("name", [
    "PASSWORD", "DB_PASSWORD", "db-password", "db.password", "dbPassword", "DbPassword",
    "PGPASSWORD", "MYSQL_PWD", "DB_PASS", "DB_PASSWD", "GPG_PASSPHRASE",
    "SECRET", "CLIENT_SECRET", "clientSecret", "AWS_SECRET_ACCESS_KEY", "SECRETS",
    "TOKEN", "GITHUB_TOKEN", "githubToken", "GITHUBTOKEN", "ACCESS_TOKEN", "auth_token",
    "APIKEY", "API_KEY", "api-key", "apiKey", "APIKey", "X_API_KEY", "STRIPE_KEY",
    "SIGNING_KEY", "key", "Key",
    "CREDENTIAL", "CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS", "awsCredentials",
    "PRIVATE", "PRIVATE_KEY", "ssh.private.key",
    "AUTH", "BASIC_AUTH", "authHeader", "AUTHORIZATION",
    "SESSION", "SESSION_ID", "sessionCookie", "COOKIE", "COOKIE_SECRET",
    "DSN", "SENTRY_DSN", "sentryDsn", "DATABASE_DSN",
])
def test_secret_looking_names(name: str) -> None:
    assert looks_secret(name)


@pytest.mark.parametrize("name", [
    # Shown everywhere on purpose: it selects a sandbox and grants nothing.
    "LANEWAY_ROUTING_KEY", "routingKey", "routing_key", "ROUTING-KEY",
    "KEYBOARD", "KEYBOARD_LAYOUT", "MONKEY", "TURNKEY", "HOTKEYS", "KEYSPACE",
    "AUTHOR", "AUTHOR_NAME", "OAUTHLIB_INSECURE_TRANSPORT", "BYPASS", "COMPASS", "PASSENGER",
    "SECRETARY", "TOKENIZER", "MAX_TOKENS", "PRIVATEER", "SESSIONS_DIR",
    "DATABASE_URL", "REDIS_URL", "PORT", "NEXT_URL", "VERSION", "LANEWAY_BAGGAGE",
    "LANEWAY_SANDBOX", "PATH", "HOME", "", "_", "123",
])
def test_ordinary_names(name: str) -> None:
    assert not looks_secret(name)


@pytest.mark.parametrize(("value", "shown"), [
    ("postgres://user:pw@host/db", "postgres://user:***@host/db"),
    ("postgresql://app:hunter2@127.0.0.1:5432/db?sslmode=require",
     "postgresql://app:***@127.0.0.1:5432/db?sslmode=require"),
    ("redis://:pw@host", "redis://:***@host"),
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
    ("amqp://u:p@h", "amqp://u:***@h"),
    ("mongodb+srv://u:p@cluster0.example.net/db", "mongodb+srv://u:***@cluster0.example.net/db"),
    # An unescaped `@` in a password: URL parsers take the authority's last `@`.
    ("postgres://u:p@ss@host/db", "postgres://u:***@host/db"),
    ("postgres://u:p:w@host/db", "postgres://u:***@host/db"),
    ("http://u:p@[::1]:8080/x", "http://u:***@[::1]:8080/x"),
    # Several URLs in one value.
    ("redis://:a@h1:1,redis://:b@h2:2", "redis://:***@h1:1,redis://:***@h2:2"),
    ("primary=postgres://u:a@h1/db replica=postgres://u:b@h2/db",
     "primary=postgres://u:***@h1/db replica=postgres://u:***@h2/db"),
    # Nothing to hide: no user info, a user without a password, an empty password.
    ("postgres://host/db", "postgres://host/db"),
    ("postgres://user@host/db", "postgres://user@host/db"),
    ("redis://:@host", "redis://:@host"),
    ("http://127.0.0.1:8080/path?q=1", "http://127.0.0.1:8080/path?q=1"),
    ("mailto:someone@example.com", "mailto:someone@example.com"),
    # `@` after the path is not user info.
    ("https://example.com/u:p@x", "https://example.com/u:p@x"),
    # key=value DSNs and connection strings.
    ("host=db user=app password=hunter2 dbname=x", "host=db user=app password=*** dbname=x"),
    ("host=db password='a b\\'c' dbname=x", "host=db password=*** dbname=x"),
    ("Server=db;User Id=app;Password=a b;Database=x", "Server=db;User Id=app;Password=***;"
     "Database=x"),
    ("https://api.example.com/v1?user=a&api_key=k123&page=2",
     "https://api.example.com/v1?user=a&api_key=***&page=2"),
    # Command lines.
    ("DB_PASSWORD=hunter2 ./app --token=abc --port=3000",
     "DB_PASSWORD=*** ./app --token=*** --port=3000"),
    ("python app.py --db postgres://app:pw@db/x", "python app.py --db postgres://app:***@db/x"),
    ("mode=fast level=3", "mode=fast level=3"),
    ("LANEWAY_ROUTING_KEY=abc123", "LANEWAY_ROUTING_KEY=abc123"),
    ("", ""),
])
def test_passwords_in_values_are_masked_under_any_name(value: str, shown: str) -> None:
    assert mask_value("UPSTREAM", value) == shown


def test_secret_names_hide_the_whole_value() -> None:
    assert mask_value("DB_PASSWORD", "hunter2") == MASK
    assert mask_value("SENTRY_DSN", "https://abc@o1.ingest.sentry.io/1") == MASK
    # Neither the length nor emptiness shows through.
    assert mask_value("TOKEN", "") == mask_value("TOKEN", "x" * 80) == MASK


def test_mask_env() -> None:
    env = {"DB_PASSWORD": "hunter2", "DATABASE_URL": "postgres://app:hunter2@127.0.0.1/db",
           "LANEWAY_ROUTING_KEY": "k3y", "VERSION": "two"}
    assert mask_env(env) == {"DB_PASSWORD": MASK,
                             "DATABASE_URL": "postgres://app:***@127.0.0.1/db",
                             "LANEWAY_ROUTING_KEY": "k3y", "VERSION": "two"}
    assert env["DB_PASSWORD"] == "hunter2"  # the input is not changed


def test_mask_tree_masks_nested_views_by_the_nearest_key() -> None:
    view = {"name": "sb-a", "routingKey": "abc123def456", "generation": 3, "ttl": None,
            "forks": [{"service": "api", "run": ["./app", "--password=pw"],
                       "env": {"API_TOKEN": "t0k", "MODE": "x"}}],
            "resources": [{"name": "db", "params": {"url": "postgres://u:pw@h/db",
                                                    "credentials": {"user": "u", "pw": "x"},
                                                    "port": 5432, "tls": True}}],
            "status": {"ready": True, "message": "cannot reach redis://:pw@h",
                       "resources": [{"outputs": {"url": "postgres://u:pw@h/db_sb"}}]}}
    assert mask_tree(view) == {
        "name": "sb-a", "routingKey": "abc123def456", "generation": 3, "ttl": None,
        "forks": [{"service": "api", "run": ["./app", "--password=***"],
                   "env": {"API_TOKEN": MASK, "MODE": "x"}}],
        "resources": [{"name": "db", "params": {"url": "postgres://u:***@h/db",
                                                "credentials": MASK, "port": 5432,
                                                "tls": True}}],
        "status": {"ready": True, "message": "cannot reach redis://:***@h",
                   "resources": [{"outputs": {"url": "postgres://u:***@h/db_sb"}}]}}
    assert "pw" not in repr(mask_tree(view)).replace("--password", "")


# Property tests: masking is applied to every view, so it must be safe on any input.

_words = st.sampled_from(["db", "password", "pwd", "url", "api", "key", "github", "token",
                          "routing", "laneway", "secret", "client", "max", "tokens", "keyboard",
                          "auth", "author", "session", "dsn", "sentry", "port", "version",
                          "credentials", "private", "cookie", "apikey", "next", "pass"]) | \
    st.text(string.ascii_letters + string.digits, min_size=1, max_size=8)


@st.composite
def _word_names(draw: st.DrawFn) -> str:
    """Env names as people write them: word parts in upper, lower, kebab, dotted or camel case."""
    words = draw(st.lists(_words, min_size=1, max_size=4))
    style = draw(st.sampled_from(["UPPER_SNAKE", "snake", "kebab", "dotted", "camel", "run"]))
    if style == "camel":
        return words[0].lower() + "".join(w.capitalize() for w in words[1:])
    joined = {"UPPER_SNAKE": "_", "snake": "_", "kebab": "-", "dotted": ".", "run": ""}[style]
    name = joined.join(words)
    return name.upper() if style in ("UPPER_SNAKE", "run") else name.lower()


_names = _word_names() | st.text(string.ascii_letters + string.digits + "_-.", max_size=30)
_values = st.text(max_size=80)
_password = st.text(string.ascii_letters + string.digits + "!$%^*()-_+=~;,.[]{}|<>", min_size=1,
                    max_size=24)
_userpart = st.text(string.ascii_letters + string.digits + "-_.", max_size=12)
_host = st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z]{2,5})?(:[0-9]{1,5})?", fullmatch=True)
_scheme = st.sampled_from(["postgres", "postgresql", "redis", "rediss", "amqp", "mysql",
                           "mongodb+srv", "http", "https"])
_path = st.from_regex(r"(/[A-Za-z0-9_.-]{0,12}){0,2}(\?[a-z]{1,6}=[a-z0-9]{0,6})?",
                      fullmatch=True)


@given(_names, _values)
def test_masking_is_idempotent(name: str, value: str) -> None:
    once = mask_value(name, value)
    assert mask_value(name, once) == once


@given(_scheme, _userpart, _password, _host, _path, _names)
def test_a_masked_url_never_shows_its_password(scheme: str, user: str, password: str,
                                                host: str, path: str, name: str) -> None:
    url = f"{scheme}://{user}:{password}@{host}{path}"
    assume(password not in f"{scheme}://{user}:{MASK}@{host}{path}")
    masked = mask_value(name, url)
    assert password not in masked
    if not looks_secret(name):  # the rest is what a reader needs: kept exactly
        assert masked == f"{scheme}://{user}:{MASK}@{host}{path}"


@given(_scheme, _userpart, _password, _host, _path, _names,
       st.sampled_from(["", "DATABASE_URL=", "--db=", "url: "]),
       st.sampled_from(["", " --verbose", ",redis://h2", "\n"]))
def test_a_url_inside_a_longer_value_never_shows_its_password(
        scheme: str, user: str, password: str, host: str, path: str, name: str, before: str,
        after: str) -> None:
    value = f"{before}{scheme}://{user}:{password}@{host}{path}{after}"
    assume(password not in f"{before}{scheme}://{user}:{MASK}@{host}{path}{after}")
    assert password not in mask_value(name, value)


@given(st.sampled_from(["password", "PASSWORD", "Password", "pwd", "api_key", "token"]),
       _password.filter(lambda p: not set(p) & set(" ;&'\"")), _names)
def test_a_masked_dsn_never_shows_its_password(field: str, password: str, name: str) -> None:
    value = f"host=db user=app {field}={password} dbname=x"
    assume(password not in f"host=db user=app {field}={MASK} dbname=x")
    assert password not in mask_value(name, value)


# Secret names built on purpose (filtering `_names` for them discards most draws, which
# Hypothesis rejects as a failed health check on a slow machine).
_secret_names = st.builds(
    lambda before, word, after: before + word + after,
    st.sampled_from(["", "DB_", "APP_", "github_", "my-", "service."]),
    st.sampled_from(["PASSWORD", "password", "Token", "SECRET", "API_KEY", "apiKey",
                     "credentials", "PRIVATE_KEY", "SESSION", "DSN"]),
    st.sampled_from(["", "_2", "-old", "_FILE_CONTENT"]),
)


@given(_secret_names, _values)
def test_secret_names_never_show_their_value(name: str, value: str) -> None:
    assume(looks_secret(name))
    assert mask_value(name, value) == MASK


@given(_names, st.text(max_size=80).filter(lambda v: "://" not in v and "=" not in v))
def test_ordinary_names_without_dsns_are_unchanged(name: str, value: str) -> None:
    assume(not looks_secret(name))
    assert mask_value(name, value) == value


@given(st.dictionaries(_names, _values, max_size=8))
def test_mask_env_masks_each_value_by_its_name(env: dict[str, str]) -> None:
    masked = mask_env(env)
    assert masked.keys() == env.keys()
    assert all(masked[k] == mask_value(k, v) for k, v in env.items())
    assert mask_env(masked) == masked
