"""Coverage-guided fuzzing of the router's request side with atheris (optional; not collected by
pytest, not run by default).

    .venv/bin/pip install atheris
    .venv/bin/python tests/protocol/fuzz_router.py --seeds /tmp/router-seeds   # write seeds
    .venv/bin/python tests/protocol/fuzz_router.py /tmp/router-seeds -atheris_runs=20000 \
        -artifact_prefix=/tmp/

Each input is one client connection's bytes, sent to a router started in-process (on its own
uvloop thread) in front of the corpus's raw upstream. Invariants, checked per input:
the upstream never receives ill-framed bytes (a complete request is well-framed, and whatever
follows the last complete one is a proper prefix of a request); what the client gets parses as
well-framed responses; and the router keeps answering (a plain GET after every input).
Seeds are the client bytes of every case in tests/protocol/corpus, so the fuzzer starts from
the same bytes as the corpus.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris  # type: ignore[import-untyped]
import uvloop

with atheris.instrument_imports(include=["laneway.router", "laneway.core"]):
    from laneway.core.routes import RouteTable, Upstream
    from laneway.router import Router, RouterSettings

from tests.protocol.corpus.rawupstream import (
    FramingError,
    RawUpstream,
    parse_response,
    split_requests,
)

PROBE = b"GET /probe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


class Harness:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.upstream = RawUpstream()
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            await self.upstream.start()
            router = Router(RouterSettings(max_header_bytes=8192, request_head_timeout=2,
                                           upstream_timeout=2, client_timeout=2))
            self.port = await router.listen("svc", 0)
            router.apply(RouteTable(version=1, baseline={
                "svc": Upstream("127.0.0.1", self.upstream.port)}))

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def exchange(self, data: bytes, timeout: float = 1.0) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            out = b""
            try:
                while chunk := sock.recv(65536):
                    out += chunk
            except OSError:
                pass
            return out

    def upstream_bytes(self) -> list[tuple[bytes, bool]]:
        return [(bytes(c.received), c.eof) for c in list(self.upstream.conns)]


STATE: dict[str, Harness] = {}  # the harness, started by main() before fuzzing


def check_responses(out: bytes, sent: bytes) -> None:
    if out and not out.startswith(b"HTTP/1.1 "):
        raise AssertionError(f"not an HTTP/1.1 response: {out[:200]!r}")
    if b"HEAD" in sent:
        return  # which answers have no body depends on requests this check does not parse
    while out:
        try:
            got = parse_response(out, eof=True)
        except FramingError as exc:
            raise AssertionError(f"ill-framed response bytes: {exc}: {out[:200]!r}") from exc
        if got is None:
            return
        resp, used = got
        if resp.status == 101:
            return
        out = out[used:]


def one_input(data: bytes) -> None:
    harness = STATE["harness"]
    out = harness.exchange(data)
    check_responses(out, data)
    for received, _eof in harness.upstream_bytes():
        _, rest, error = split_requests(received)
        if error:
            raise AssertionError(f"upstream got ill-framed bytes ({error}): {rest[:200]!r}")
    probe = harness.exchange(PROBE, timeout=5.0)
    if not probe.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"router stopped answering after {data[:200]!r}: {probe[:200]!r}")
    harness.upstream.conns.clear()


def write_seeds(folder: Path) -> None:
    from tests.protocol.corpus.catalog import CLASSES
    from tests.protocol.corpus.harness import Write

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for cases in CLASSES.values():
        for case in cases:
            data = b"".join(a.data for c in case.clients for a in c.actions
                            if isinstance(a, Write))
            if data and len(data) < 65536:
                (folder / case.name).write_bytes(data)
                n += 1
    print(f"{n} seeds in {folder}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(Path(sys.argv[2]))
        return
    STATE["harness"] = Harness()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
