"""The router's choice of `laneway-key` member against what the OpenTelemetry SDKs propagate: each
case of the shared table goes through the real SDK's W3CBaggagePropagator (extract, then inject
on the next call), and the key the router reads at the next hop must be the key it read at this
one. The few cases where an SDK does otherwise are listed with the reason (core/baggage.py says
the same); if an SDK changes, these tests say which note to update.

Python: the installed opentelemetry-api. JavaScript: @opentelemetry/api and @opentelemetry/core
at pinned versions, run by `node`, installed with `npm` into a cache folder on first use
(LANEWAY_TEST_CACHE, else ~/.cache/laneway-tests); skipped when node, npm or the registry is not
there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest
from opentelemetry.baggage import get_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.instrumentation.asgi import asgi_getter

from laneway.core.baggage import baggage_key, member_key
from tests.baggage_cases import BAGGAGE_CASES, K1, K2, Case

JS_PACKAGES = ("@opentelemetry/api@1.9.1", "@opentelemetry/core@2.12.1")
HOP_JS = Path(__file__).parents[1] / "data" / "otel_hop.js"
NPM_TIMEOUT_S = 150

# Where an SDK propagates something else than the router read; none is a key laneway makes
# except the empty last member, which the router reports as a conflict.
PYTHON_DIFFERS = {
    "laneway-key=abc%20def": "a space inside a value: re-injected as `+`, read back as `+`",
}
JS_DIFFERS = {
    f"laneway-key={K1}%3B%FF%2C;x": "percent-encoding that is not UTF-8: the member is dropped",
    f"laneway-key={K1}%": "a `%` without hex digits: the member is dropped",
    f"laneway-key={K1}%3": "a `%` without hex digits: the member is dropped",
    "laneway-key=%FF": "not UTF-8: the member is dropped",
    f"laneway-key={K1},laneway-key=": "an empty member is skipped, the one before it kept",
}


def _agrees(case: Case, held: str | None, injected: str | None) -> bool:
    ours = baggage_key(case.joined.encode())[0]
    after = baggage_key((injected or "").encode())[0]
    return ours == after == (member_key(held) if held is not None else None)


def _python_hop(headers: list[str] | str) -> tuple[str | None, str | None]:
    propagator = W3CBaggagePropagator()
    ctx = propagator.extract({"baggage": headers}, context=Context())
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=ctx)
    held = get_baggage("laneway-key", ctx)
    return (None if held is None else str(held)), carrier.get("baggage")


@pytest.mark.parametrize("case", BAGGAGE_CASES, ids=lambda c: repr(c.joined))
def test_opentelemetry_python_propagates_the_member_the_router_reads(case: Case) -> None:
    held, injected = _python_hop(case.joined)  # one header (several are joined by the server)
    if case.joined in PYTHON_DIFFERS:
        assert not _agrees(case, held, injected), (
            f"opentelemetry-api {version('opentelemetry-api')} now agrees on {case.joined!r}: "
            "update the notes in core/baggage.py and PYTHON_DIFFERS")
    else:
        assert _agrees(case, held, injected), (held, injected)


def test_opentelemetry_python_keeps_the_last_of_two_members() -> None:
    held, injected = _python_hop(f"a=1,laneway-key={K1},b=2,laneway-key={K2};p=1")
    assert (held, injected) == (f"{K2};p=1", f"a=1,laneway-key={K2}%3Bp%3D1,b=2")
    assert baggage_key(f"a=1,laneway-key={K1},b=2,laneway-key={K2}".encode()) == (K2, True)


def test_opentelemetry_python_reads_only_the_first_of_several_asgi_headers() -> None:
    # The ASGI getter hands the propagator every `baggage` header; it reads the first. The
    # router (like Envoy and OpenTelemetry-JS) joins them, picks the last member and reports
    # the conflict.
    scope = {"type": "http", "headers": [(b"baggage", f"laneway-key={K1}".encode()),
                                         (b"baggage", f"laneway-key={K2}".encode())]}
    ctx = W3CBaggagePropagator().extract(scope, context=Context(), getter=asgi_getter)
    assert get_baggage("laneway-key", ctx) == K1
    assert baggage_key(f"laneway-key={K1},laneway-key={K2}".encode()) == (K2, True)


# JavaScript


def _cache_dir() -> Path:
    root = os.environ.get("LANEWAY_TEST_CACHE") or Path.home() / ".cache" / "laneway-tests"
    return Path(root) / ("otel-js-" + "-".join(p.rsplit("/", 1)[1] for p in JS_PACKAGES))


def _install(target: Path) -> None:
    """npm-install the pinned packages into `target` (a fresh folder, renamed into place)."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node and npm are not on PATH: OpenTelemetry-JS cannot be run")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    except OSError as exc:
        pytest.skip(f"no writable cache folder for OpenTelemetry-JS at {target.parent}: {exc}")
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(scratch), "--no-audit", "--no-fund",
             "--no-package-lock", "--fetch-retries=0", "--fetch-timeout=20000", *JS_PACKAGES],
            capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        shutil.rmtree(scratch, ignore_errors=True)
        pytest.skip(f"npm install of {' '.join(JS_PACKAGES)} took over {NPM_TIMEOUT_S}s "
                    "(no network or registry?)")
    if done.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        head = "; ".join(done.stderr.strip().splitlines()[:2])
        pytest.skip(f"npm cannot install {' '.join(JS_PACKAGES)} (no network or registry?): "
                    f"{head}")
    with contextlib.suppress(OSError):  # another test process may have put it there first
        scratch.rename(target)
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def otel_js() -> Path:
    """The folder whose node_modules holds the pinned OpenTelemetry-JS packages."""
    target = _cache_dir()
    if not (target / "node_modules" / "@opentelemetry" / "core" / "package.json").exists():
        _install(target)
    return target / "node_modules"


def _js_hops(node_modules: Path, cases: list[Case]) -> list[dict[str, str | None]]:
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run([node, str(HOP_JS)], input=json.dumps([list(c.headers) for c in cases]),
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "NODE_PATH": str(node_modules)})
    assert done.returncode == 0, done.stderr
    result: list[dict[str, str | None]] = json.loads(done.stdout)
    return result


@pytest.mark.timeout(NPM_TIMEOUT_S + 60)
def test_opentelemetry_js_propagates_the_member_the_router_reads(otel_js: Path) -> None:
    hops = _js_hops(otel_js, BAGGAGE_CASES)  # several headers go in as a list, in order
    wrong = [(c.joined, h) for c, h in zip(BAGGAGE_CASES, hops, strict=True)
             if _agrees(c, h["held"], h["injected"]) == (c.joined in JS_DIFFERS)]
    assert not wrong, f"{' '.join(JS_PACKAGES)}: update core/baggage.py and JS_DIFFERS: {wrong}"
