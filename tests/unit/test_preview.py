"""Reading a preview host (`core.preview`): pure, no sockets."""

from __future__ import annotations

import pytest

from laneway.core.preview import Preview, PreviewMiss, host_name, preview_url, resolve

NAMES = {"sb-a": "key-a", "a--b": "key-ab", "team": "key-team"}
SERVICES = {"web", "pricing", "b--web"}


@pytest.mark.parametrize(("host", "expected"), [
    ("sb-a--web.localhost:7780", Preview("web", "sb-a", "key-a")),
    ("SB-A--Web.LOCALHOST:7780", Preview("web", "sb-a", "key-a")),  # hosts are case-free
    ("sb-a--pricing.localhost", Preview("pricing", "sb-a", "key-a")),  # no port
    ("team--web.localhost:1", Preview("web", "team", "key-team")),
    ("sb-a--web.preview.example.test", Preview("web", "sb-a", "key-a")),  # a team's wildcard
    ("web.localhost:7780", Preview("web")),  # the baseline, asked for by name
    # `a--b--web`: sandbox `a--b` at `web` exists, sandbox `a` does not.
    ("a--b--web.localhost", Preview("web", "a--b", "key-ab")),
    ("localhost:7780", None),
    ("127.0.0.1:7780", None),
    ("[::1]:7780", None),
])
def test_hosts_name_a_preview(host: str, expected: Preview | None) -> None:
    assert resolve(host, NAMES, SERVICES) == expected


@pytest.mark.parametrize(("host", "code", "named"), [
    ("gone--web.localhost:7780", "unknown_sandbox", "'gone'"),
    ("sb-a--nope.localhost", "unknown_service", "'nope'"),
    ("nope.localhost", "unknown_service", "'nope'"),
])
def test_hosts_that_name_nothing_say_what(host: str, code: str, named: str) -> None:
    miss = resolve(host, NAMES, SERVICES)
    assert isinstance(miss, PreviewMiss)
    assert miss.status == 404
    assert miss.code == code
    assert named in miss.message


def test_host_name_and_url() -> None:
    assert host_name("A--B.localhost:80") == "a--b.localhost"
    assert host_name("[::1]:80") == "[::1]"
    assert preview_url("sb", "web", 7780) == "http://sb--web.localhost:7780/"


def test_key_of_origin() -> None:
    from laneway.core.preview import key_of_origin

    assert key_of_origin("http://sb-a--web.localhost:7780", NAMES, 7780) == "key-a"
    assert key_of_origin("http://a--b--pricing.localhost:7780", NAMES, 7780) == "key-ab"
    assert key_of_origin("http://sb-a--web.localhost:7781", NAMES, 7780) is None
    assert key_of_origin("https://sb-a--web.localhost:7780", NAMES, 7780) is None
    assert key_of_origin("null", NAMES, 7780) is None
    assert key_of_origin("http://web.localhost:7780", NAMES, 7780) is None
