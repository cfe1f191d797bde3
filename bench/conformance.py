"""The protocol conformance corpus (tests/protocol/corpus) played against HAProxy 2.6 and against
laneway's router; writes bench/CONFORMANCE.md, the cases where the two differ and why.

    .venv/bin/python bench/conformance.py            # every case
    .venv/bin/python bench/conformance.py smuggling  # the cases of some classes

The cases are imported from the corpus modules, so both proxies get the very bytes pytest plays.
HAProxy (Debian's, installed by `peers.ensure_tools` when missing) is started per case with the
case's RouterSettings mapped onto its nearest settings: `timeout http-request`, `http-keep-alive`,
`client`, `server`, `tunnel`, `connect`; `tune.bufsize` for the header limits; the frontend's
`maxconn`; and the bench's baggage rule (peers.KEY_REGEX, member boundaries) choosing the fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peers
import uvloop
from tests.protocol.corpus.catalog import CLASSES
from tests.protocol.corpus.harness import FORK_KEY, Case, Outcome, Target, laneway, run_case

from laneway.router import RouterSettings

ROOT = Path(__file__).resolve().parents[1]

# RouterSettings defaults, for the settings a case leaves alone.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(RouterSettings)}

# Why HAProxy and laneway differ, where a case shows it (read from HAProxy 2.6's behaviour and
# configuration manual; filled in from a run of this script).
WHY: dict[str, str] = {
    # framing
    "chunked_extensions_and_trailer": "HAProxy forwards `Trailer` (it strips only Connection-"
        "related fields); laneway treats it as hop-by-hop because it re-chunks without the "
        "trailer section.",
    "content_length_and_chunked": "HAProxy takes the RFC 9112 §6.3 alternative: it drops "
        "Content-Length and reads chunked. laneway refuses (RFC: MAY reject), as nginx does; "
        "refusing leaves no room for a downstream parser that prefers Content-Length.",
    "duplicate_content_length_same": "HAProxy merges identical Content-Length fields (RFC 9110 "
        "§8.6 allows it); laneway refuses any duplicate.",
    "content_length_overflow": "HAProxy accepted `content-length: 18446744073709551619`, "
        "forwarded the head and waited for a body; laneway refuses a length that does not fit "
        "in 64 bits.",
    "bare_lf_line_endings": "HAProxy accepts LF-only line endings (RFC 9112 §2.2 allows a "
        "recipient to); laneway refuses them.",
    "bare_lf_in_header": "the same, for a single LF-only field line.",
    "obs_fold": "HAProxy unfolds obs-fold (RFC 9112 §5.2 allows replacing it with SP); laneway "
        "refuses it.",
    "nul_in_header_value": "HAProxy 2.6.12 forwarded the NUL byte inside the field value (the "
        "strict upstream closed, hence its 502); laneway refuses the request.",
    # smuggling
    "connection_names_content_length": "Both keep the framing. HAProxy also forwards the "
        "Connection field itself (HTX handles only close/keep-alive/upgrade tokens); laneway "
        "removes Connection and what it names, except framing fields.",
    "connection_names_transfer_encoding": "the same: HAProxy forwards `connection: "
        "transfer-encoding`.",
    "connection_close_and_content_length": "the same: HAProxy forwards the remaining "
        "Connection token.",
    "connection_names_custom_header": "HAProxy does not remove headers named in Connection "
        "(RFC 9110 §7.6.1 says a proxy MUST); laneway does.",
    "hop_by_hop_request_headers": "HAProxy forwards Keep-Alive, Proxy-Connection, TE, Trailer "
        "and a lone Upgrade; laneway drops them as hop-by-hop.",
    "response_connection_named_headers": "the same on the response side: HAProxy passes "
        "`x-hop` (named in the response's Connection) to the client.",
    "te_and_cl_reversed": "as content_length_and_chunked: HAProxy drops CL and reads chunked.",
    "te_and_cl_zero": "as content_length_and_chunked.",
    "te_obs_fold": "HAProxy unfolds the folded Transfer-Encoding and reads chunked; laneway "
        "refuses obs-fold.",
    "te_in_http10": "HAProxy reads chunked in an HTTP/1.0 request; RFC 9112 §6.1 says to treat "
        "it as faulty framing, which laneway does (400).",
    "chunk_lf_only": "HAProxy accepts LF-only chunk lines; laneway refuses them.",
    # connection
    "http10_closes_by_default": "HAProxy forwards an HTTP/1.0 request as HTTP/1.0 with "
        "`connection: keep-alive` added; laneway forwards it as HTTP/1.1 (RFC 9110 §2.5: an "
        "intermediary sends its own version) with no Connection field.",
    "http10_keep_alive": "the same upstream difference; both keep the 1.0 client's connection.",
    "http10_keep_alive_close_delimited": "the same upstream difference.",
    "half_close_after_request": "HAProxy answers a client that half-closed after its request "
        "(`option abortonclose` is off by default).",
    # host
    "http11_without_host": "HAProxy forwards an HTTP/1.1 request without Host; RFC 9112 §3.2 "
        "says MUST 400, which laneway does.",
    "two_host_fields_same_value": "HAProxy accepts two identical Host fields; RFC 9112 §3.2: "
        "MUST 400.",
    "host_invalid_value": "HAProxy does not check the Host value's syntax; RFC 9110 §7.2 says "
        "MUST 400 for an invalid one, which laneway does.",
    "http10_without_host": "HAProxy forwards an HTTP/1.0 request without Host as is; laneway "
        "adds the address the client connected to.",
    "http10_with_host": "HAProxy forwards HTTP/1.0 as HTTP/1.0 with `connection: keep-alive`; "
        "laneway forwards HTTP/1.1.",
    "absolute_form_overrides_host": "HAProxy 2.6 answers 400 when Host differs from the "
        "absolute-form authority; RFC 9112 §3.2.2 says to ignore Host and use the authority, "
        "which laneway does.",
    "absolute_form_without_port": "HAProxy forwards the absolute-form target as is; laneway "
        "rewrites it to origin-form, which origin servers are required to accept.",
    "absolute_form_empty_path": "the same: HAProxy forwards `http://a.example`.",
    "connection_names_host": "both keep Host; HAProxy also forwards `connection: host`.",
    # codings
    "request_gzip_chunked": "HAProxy answers 422 to a request coding it does not implement; "
        "RFC 9112 §6.1 says 501, which laneway answers.",
    "request_deflate_chunked": "the same.",
    "request_chunked_mixed_case": "both read `Chunked` as chunked; HAProxy forwards the field "
        "as written, laneway as `chunked` (a re-chunked body).",
    "response_gzip_chunked_http11": "HAProxy answers 502 to a response coded `gzip, chunked`; "
        "laneway passes the coding and the gzip bytes on to an HTTP/1.1 client.",
    "response_gzip_chunked_http10": "HAProxy forwards the request as HTTP/1.0 (see "
        "http10_with_host); both answer the client 502.",
    "response_chunked_to_http10": "HAProxy sends `transfer-encoding: chunked` to an HTTP/1.0 "
        "client, which cannot decode it (RFC 9112 §6.1); laneway de-chunks and closes.",
    # upgrade
    "h2c_with_settings": "HAProxy forwards `Upgrade: h2c` and HTTP2-Settings to the upstream; "
        "laneway declines h2c and forwards a plain HTTP/1.1 request.",
    "h2c_without_settings": "the same.",
    "h2c_settings_not_in_connection": "the same.",
    "h2c_with_body": "the same, for a POST with a body.",
    "websocket_with_length_body": "HAProxy forwards the upgrade request (with `connection: "
        "upgrade`) even though it has a body; laneway forwards a plain request.",
    "websocket_with_chunked_body": "the same.",
    "upgrade_without_connection_token": "HAProxy forwards a lone Upgrade field; laneway drops "
        "it as hop-by-hop.",
    "connect_is_405": "HAProxy in `mode http` forwards CONNECT to the server (which answered "
        "200); laneway answers 405.",
    # limits
    "request_header_over_limit": "HAProxy's limit is its buffer (tune.bufsize less "
        "tune.maxrewrite) and it answers 400, not 431 (RFC 6585).",
    "request_many_fields_over_limit": "the same: 400 for a header section that overflows the "
        "buffer.",
    "request_target_over_limit": "HAProxy answers 400 for a request line that overflows its "
        "buffer; laneway 431 (414 is also accepted).",
    "max_connections": "HAProxy's frontend `maxconn` stops accepting: the extra connection "
        "waits in the kernel's backlog, unanswered, instead of getting a 503.",
    # timeouts
    "idle_time_starts_after_response": "HAProxy's `timeout http-keep-alive` starts when the "
        "response ends (an earlier laneway build counted the slow answer as idle time and "
        "closed right after it).",
    "stalled_upload": "HAProxy keeps waiting while the request is being forwarded (`timeout "
        "server` applies then, 10 s here); laneway answers 408 after client_timeout.",
    "fresh_connection_idle": "HAProxy answers a connection that never sent a byte with a 408; "
        "laneway closes it; the case accepts either.",
    # baggage
    "fork_not_ready": "laneway-specific: the HAProxy rule has no notion of a fork that is not "
        "ready and sends the request to the fork backend.",
    "tracestate_member": "the HAProxy rule reads `baggage` only (peers.KEY_REGEX).",
    "baggage_percent_encoded_property": "the HAProxy rule is a regex on the raw value: `%3B` "
        "is not a member boundary to it, so `K%3Bttl%3D60` is not K; laneway decodes and "
        "cuts the key at the property.",
    "baggage_percent_encoded_space": "the HAProxy regex does not decode `%20`, so `K%20` is "
        "not K; laneway decodes and trims it.",
    "two_members_key_first": "the HAProxy regex matches any member, so the first one routes; "
        "laneway keeps the last member, as the OpenTelemetry SDKs do.",
    "two_members_key_second": "both route to the fork, HAProxy only because its regex matches "
        "any member.",
}


def haproxy_config(case: Case, port: int, base: int, fork: int) -> str:
    s = {**DEFAULTS, **dict(case.settings)}
    bufsize = int(max(s["max_header_bytes"], 1024)) + 1024
    if "max_header_bytes" not in dict(case.settings):
        bufsize = int(max(s["max_header_bytes"], s["max_response_header_bytes"])) + 1024
    regex = peers.KEY_REGEX.replace(peers.KEY, FORK_KEY)

    def ms(seconds: float) -> str:
        return f"{round(seconds * 1000)}ms"

    return f"""
global
  nbthread 1
  maxconn 4096
  tune.bufsize {bufsize}
defaults
  mode http
  timeout connect {ms(s["connect_timeout"])}
  timeout client {ms(s["client_timeout"])}
  timeout server {ms(s["upstream_timeout"])}
  timeout http-request {ms(s["request_head_timeout"])}
  timeout http-keep-alive {ms(s["keepalive_timeout"])}
  timeout tunnel {ms(s["tunnel_timeout"])}
frontend lane
  bind 127.0.0.1:{port}
  maxconn {int(s["max_connections"])}
  acl keyed req.fhdr(baggage) -m reg '{regex}'
  use_backend fork if keyed
  default_backend base
backend base
  server b 127.0.0.1:{base}
backend fork
  server f 127.0.0.1:{fork}
"""


async def _wait_port(port: int, proc: asyncio.subprocess.Process,
                     timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.returncode is not None:
            err = (await proc.stderr.read()).decode() if proc.stderr else ""
            raise RuntimeError(f"haproxy exited: {err}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


def haproxy_target(work: Path) -> Target:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"

    @contextlib.asynccontextmanager
    async def open_haproxy(case: Case, base: int, fork: int) -> AsyncIterator[int]:
        port = peers.free_port()
        conf = work / "haproxy.cfg"
        conf.write_text(haproxy_config(case, port, base, fork))
        proc = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(conf), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            await _wait_port(port, proc)
            yield port
        finally:
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    return Target("haproxy", open_haproxy)


def laneway_version() -> str:
    """The commit the router was built from, and whether src/laneway/router differs from it
    (read-only git calls: --no-optional-locks keeps `status` from writing the index)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT,
                              capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src/laneway")
    return f"{commit}{' with uncommitted changes under src/laneway' if dirty else ''}"


def haproxy_version() -> str:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def _mark(outcome: Outcome) -> str:
    return "ok" if outcome else "FAIL"


async def play(cases: list[tuple[str, Case]], haproxy: Target) -> list[
        tuple[str, Case, Outcome, Outcome]]:
    rows = []
    for cls, case in cases:
        mine = await run_case(case, laneway)
        theirs = await run_case(case, haproxy)
        print(f"{cls:11} {case.name:45} laneway {_mark(mine):4}  haproxy {_mark(theirs)}",
              flush=True)
        rows.append((cls, case, mine, theirs))
    return rows


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def report(rows: list[tuple[str, Case, Outcome, Outcome]], version: str, build: str) -> str:
    total = len(rows)
    mine_ok = sum(1 for *_, m, _ in rows if m)
    theirs_ok = sum(1 for *_, t in rows if t)
    lines = [
        "# Protocol conformance: laneway's router and HAProxy",
        "",
        "Written by `bench/conformance.py`: the cases of `tests/protocol/corpus` (the same bytes "
        f"pytest plays), each against laneway's router in-process (commit {build}) and against "
        f"{version} started per case with the case's settings mapped onto its own "
        "(`timeout http-request`, `http-keep-alive`, `client`, `server`, `tunnel`; "
        "`tune.bufsize` for header limits; frontend `maxconn`; the bench's baggage rule). "
        "A case passes when what the client gets and what the upstream receives are what the "
        "corpus expects. Checks on laneway's own headers (`laneway-*`) and JSON error bodies "
        "apply to laneway only. The why column is written by hand in `WHY` "
        "(bench/conformance.py) from a run of this script; when the router changes, re-run it "
        "and re-read the failure columns.",
        "",
        f"{total} cases: laneway passes {mine_ok}, HAProxy passes {theirs_ok}.",
        "",
        "## Where the two differ",
        "",
        "| class | case | laneway | HAProxy | why |",
        "|---|---|---|---|---|",
    ]
    same_fail = []
    for cls, case, mine, theirs in rows:
        if bool(mine) == bool(theirs):
            if not mine:
                same_fail.append((cls, case, mine, theirs))
            continue
        lines.append(
            f"| {cls} | `{case.name}` | {'ok' if mine else 'FAIL: ' + _cell(mine.failures[0])} "
            f"| {'ok' if theirs else 'FAIL: ' + _cell(theirs.failures[0])} "
            f"| {_cell(WHY.get(case.name, case.why), 400)} |")
    lines += ["", "## Failing on both", ""]
    if same_fail:
        lines += ["| class | case | laneway | HAProxy | why |", "|---|---|---|---|---|"]
    else:
        lines.append("None.")
    for cls, case, mine, theirs in same_fail:
        lines.append(f"| {cls} | `{case.name}` | FAIL: {_cell(mine.failures[0])} "
                     f"| FAIL: {_cell(theirs.failures[0])} "
                     f"| {_cell(WHY.get(case.name, case.why), 400)} |")
    lines += ["", "## What each proxy did, case by case", "",
              "| class | case | laneway | HAProxy |", "|---|---|---|---|"]
    for cls, case, mine, theirs in rows:
        lines.append(f"| {cls} | `{case.name}` | {_cell(mine.observed, 160)} "
                     f"| {_cell(theirs.observed, 160)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    wanted = set(sys.argv[1:]) or set(CLASSES)
    unknown = wanted - set(CLASSES)
    if unknown:
        sys.exit(f"unknown classes {sorted(unknown)}; choose from {sorted(CLASSES)}")
    if not (shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()):
        peers.ensure_tools()
    cases = [(cls, case) for cls, group in CLASSES.items() if cls in wanted for case in group]
    with tempfile.TemporaryDirectory(prefix="laneway-conformance-") as tmp:
        rows = uvloop.run(play(cases, haproxy_target(Path(tmp))))
    out = ROOT / "bench" / "CONFORMANCE.md"
    out.write_text(report(rows, haproxy_version(), laneway_version()))
    print(f"wrote {out.relative_to(ROOT)}")
    if os.environ.get("CONFORMANCE_STRICT") and any(not m for *_, m, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
