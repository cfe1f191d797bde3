"""Istio mode's "which forks did the run reach": the `istio_requests_total` parser on a sidecar's
merged stats page, the arithmetic between two scrapes (with a pod that restarted in between),
and `scrape` against real HTTP servers on loopback (one serving stats, one answering 500, one
that never answers, one port nobody listens on)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laneway.core.kubernetes.telemetry import (
    Answer,
    IstioSample,
    Traffic,
    inbound_counts,
    parse_istio_requests,
    parse_istio_stats,
    reached,
    status_class,
)
from laneway.runtime.kubernetes.telemetry import scrape, stats_url


def _series(reporter: str, source: str, destination: str, code: str, *, grpc: str = "",
            flags: str = "-", protocol: str = "http") -> str:
    """The label set Istio's stats plugin writes for a request (istio/proxy,
    testdata/metric/server_request_total.yaml.tmpl), with the values a sandbox's fork has."""
    policy = "mutual_tls" if reporter == "destination" else "unknown"
    return (
        f'{{reporter="{reporter}",source_workload="{source}",source_canonical_service="{source}",'
        f'source_canonical_revision="latest",source_workload_namespace="shop",'
        f'source_principal="spiffe://cluster.local/ns/shop/sa/{source}",source_app="{source}",'
        f'source_version="unknown",source_cluster="Kubernetes",'
        f'destination_workload="{destination}",destination_workload_namespace="shop",'
        f'destination_principal="spiffe://cluster.local/ns/shop/sa/pricing",'
        f'destination_app="pricing",destination_version="unknown",'
        f'destination_service="pricing.shop.svc.cluster.local",'
        f'destination_canonical_service="pricing",destination_canonical_revision="latest",'
        f'destination_service_name="pricing",destination_service_namespace="shop",'
        f'destination_cluster="Kubernetes",request_protocol="{protocol}",'
        f'response_code="{code}",grpc_response_status="{grpc}",response_flags="{flags}",'
        f'connection_security_policy="{policy}"}}'
    )


def _line(count: int, *args: str, **kwargs: str) -> str:
    return f"istio_requests_total{_series(*args, **kwargs)} {count}"


FORK = "pricing-sb-alice"

# What `curl POD_IP:15020/stats/prometheus` gives for the fork `pricing@sb-alice`: the agent's
# own metrics, Envoy's, Istio's, and the app's (merged in by the agent), in that mix.
STATS = "\n".join([
    "# HELP istio_agent_go_goroutines Number of goroutines that currently exist.",
    "# TYPE istio_agent_go_goroutines gauge",
    "istio_agent_go_goroutines 43",
    "# TYPE envoy_cluster_upstream_cx_total counter",
    'envoy_cluster_upstream_cx_total{cluster_name="xds-grpc"} 3',
    "# TYPE istio_requests_total counter",
    _line(41, "destination", "orders-v1", FORK, "200"),
    _line(9, "destination", "checkout-v1", FORK, "200"),
    _line(2, "destination", "orders-v1", FORK, "404"),
    _line(1, "destination", "orders-v1", FORK, "503", flags="UF"),
    _line(3, "destination", "orders-v1", FORK, "200", grpc="14", protocol="grpc"),
    _line(7, "destination", "orders-v1", FORK, "200", grpc="0", protocol="grpc"),
    # The fork's own outbound calls: traffic it sent, not traffic it served.
    _line(5, "source", FORK, "inventory-v1", "500"),
    "# TYPE istio_request_duration_milliseconds histogram",
    'istio_request_duration_milliseconds_bucket{reporter="destination",le="0.5"} 0',
    'istio_request_duration_milliseconds_bucket{reporter="destination",le="+Inf"} 50',
    'istio_request_duration_milliseconds_sum{reporter="destination"} 1043.5',
    'istio_request_duration_milliseconds_count{reporter="destination"} 50',
    "# TYPE pricing_cache_ratio gauge",
    "pricing_cache_ratio NaN",
    # A custom dimension (Telemetry API tagOverrides) whose value needs escapes, with a
    # timestamp after the value.
    'istio_requests_total{reporter="destination",destination_workload="pricing-sb-alice",'
    'response_code="201",user_agent="curl \\"7.88\\" \\\\ C:\\\\ \\n2nd"} 4 1718000000000',
    "",
])


def test_parser_reads_every_istio_requests_sample_and_only_them() -> None:
    stats = parse_istio_stats(STATS)
    assert stats.malformed == 0
    assert len(stats.samples) == 8
    first = stats.samples[0]
    assert first.value == 41.0
    assert first.timestamp_ms is None
    assert first.labels["reporter"] == "destination"
    assert first.labels["destination_workload"] == FORK
    assert first.labels["source_workload"] == "orders-v1"
    assert first.labels["destination_service"] == "pricing.shop.svc.cluster.local"
    assert first.labels["grpc_response_status"] == ""
    assert first.labels["connection_security_policy"] == "mutual_tls"
    assert len(first.labels) == 25
    escaped = stats.samples[-1]
    assert escaped.labels["user_agent"] == 'curl "7.88" \\ C:\\ \n2nd'
    assert escaped.value == 4.0
    assert escaped.timestamp_ms == 1718000000000
    assert parse_istio_requests(STATS) == list(stats.samples)


def test_parser_takes_crlf_blanks_and_the_values_the_format_allows() -> None:
    text = (
        "istio_requests_total{reporter=\"destination\",response_code=\"200\",} 1e3\r\n"
        "  istio_requests_total { reporter = \"source\" , response_code = \"200\" } +Inf -5\r\n"
        "istio_requests_total{reporter=\"destination\",response_code=\"500\"} NaN\r\n"
        "istio_requests_total{} -Inf\r\n"
        "istio_requests_total 0.5\r\n"
    )
    stats = parse_istio_stats(text)
    assert stats.malformed == 0
    values = [s.value for s in stats.samples]
    assert values[0] == 1000.0
    assert values[1] == math.inf
    assert stats.samples[1].timestamp_ms == -5
    assert stats.samples[1].labels == {"reporter": "source", "response_code": "200"}
    assert math.isnan(values[2])
    assert values[3:] == [-math.inf, 0.5]
    # Not a finite count: left out of the sums rather than poisoning them.
    assert inbound_counts(stats.samples) == {Answer(200): 1000.0}


GOOD = 'istio_requests_total{reporter="destination",response_code="200"} 7'


@pytest.mark.parametrize("bad", [
    'istio_requests_total{reporter="destination",response_code="200" 7',  # unclosed set
    'istio_requests_total{reporter="destination" response_code="200"} 7',  # no comma
    'istio_requests_total{reporter="a\\tb"} 7',  # \t is not one of the three escapes
    'istio_requests_total{reporter="destination",reporter="source"} 7',  # label twice
    'istio_requests_total{reporter=destination} 7',  # unquoted value
    'istio_requests_total{9reporter="destination"} 7',  # label name
    'istio_requests_total{reporter="destination"}',  # no value
    'istio_requests_total{reporter="destination"} 1_000',  # Python reads it, Go does not
    'istio_requests_total{reporter="destination"} 0x10',
    'istio_requests_total{reporter="destination"} 7 1718000000000 extra',
    'istio_requests_total{reporter="destination"} 7 1.5',  # timestamps are integers
    'istio_requests_total{reporter="dest\\',  # cut off in an escape
    "<html><body>upstream connect error</body></html>",  # not the format at all
    "istio_requests_total",
    '{__name__="istio_requests_total"} 7',  # Prometheus 3's quoted names: not Envoy's
])
def test_a_malformed_line_is_counted_and_the_rest_kept(bad: str) -> None:
    stats = parse_istio_stats(f"# TYPE istio_requests_total counter\n{GOOD}\n{bad}\n{GOOD}\n")
    assert stats.malformed == 1
    assert stats.malformed_lines == (3,)
    assert [s.value for s in stats.samples] == [7.0, 7.0]


def test_other_metrics_are_passed_over_unread() -> None:
    # A sample of another metric is not checked beyond its name: a scrape is mostly those.
    stats = parse_istio_stats('envoy_server_uptime{odd="\\t"} 7\nistio_requests_total_x 1\n')
    assert stats == parse_istio_stats("")
    assert stats.samples == ()
    assert stats.malformed == 0


_label_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@given(st.dictionaries(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True),
                       _label_values, max_size=6),
       st.integers(min_value=0, max_value=2**53))
def test_any_label_values_come_back_as_written(labels: dict[str, str], value: int) -> None:
    body = ",".join(f'{name}="{_escape(text)}"' for name, text in labels.items())
    stats = parse_istio_stats(f"istio_requests_total{{{body}}} {value}\n")
    assert stats.malformed == 0
    assert stats.samples == (IstioSample(labels, float(value)),)


_lines = st.lists(st.one_of(
    st.sampled_from([GOOD, "# TYPE istio_requests_total counter", "", GOOD.replace("7", "x")]),
    st.text(st.characters(exclude_characters="\n"), max_size=40),
), max_size=12)


@given(_lines)
def test_each_line_is_read_on_its_own(lines: list[str]) -> None:
    # Whatever else a scrape holds, it does not change what a line says, nor fail the parse.
    whole = parse_istio_stats("\n".join(lines))
    alone = [parse_istio_stats(line) for line in lines]
    assert whole.samples == tuple(s for stats in alone for s in stats.samples)
    assert whole.malformed == sum(stats.malformed for stats in alone)


def test_inbound_counts_are_what_the_pod_served_by_answer() -> None:
    samples = parse_istio_requests(STATS)
    counts = inbound_counts(samples, FORK)
    assert counts == {
        Answer(200): 41 + 9,  # two callers, one answer
        Answer(404): 2,
        Answer(503, flags="UF"): 1,
        Answer(200, grpc_status=14): 3,
        Answer(200, grpc_status=0): 7,
        Answer(201): 4,
    }
    assert Answer(500) not in counts  # the fork's outbound call, reported as source
    assert inbound_counts(samples, "pricing-v1") == {}
    assert inbound_counts(samples, FORK, namespace="other") == {}
    assert sum(inbound_counts(samples, FORK, namespace="shop").values()) == 67 - 4


def test_status_classes_are_the_reports() -> None:
    assert status_class(Answer(204)) == "2xx"
    assert status_class(Answer(503, flags="UF")) == "5xx"
    assert status_class(Answer(200, grpc_status=0)) == "2xx"
    assert status_class(Answer(200, grpc_status=14)) == "grpc UNAVAILABLE"
    assert status_class(Answer(200, grpc_status=99)) == "grpc 99"
    assert status_class(Answer(0, flags="DC")) == "0xx"


def test_reached_is_the_difference_between_two_scrapes() -> None:
    before = {Answer(200): 41.0, Answer(404): 2.0, Answer(200, grpc_status=14): 3.0}
    after = {Answer(200): 50.0, Answer(404): 2.0, Answer(200, grpc_status=14): 4.0,
             Answer(503, flags="UF"): 2.0}
    traffic = reached(before, after)
    assert traffic == Traffic(requests=12, classes={"2xx": 9, "5xx": 2, "grpc UNAVAILABLE": 1},
                              flagged=2, reset=False)
    assert reached(after, after) == Traffic()
    assert reached({}, {}) == Traffic()
    # A series gone from the second scrape (Envoy evicts idle ones) served nothing: no reset.
    assert reached(before, {Answer(200): 41.0}) == Traffic()


def test_a_pod_that_restarted_counts_from_zero() -> None:
    before = {Answer(200): 41.0, Answer(500): 1.0}
    # Restarted mid-run: 3 answers of 200 since, and 4 of 500 (more than before: only the
    # 200's fall shows the reset, and it holds for every counter of the pod).
    after = {Answer(200): 3.0, Answer(500): 4.0}
    assert reached(before, after) == Traffic(requests=7, classes={"2xx": 3, "5xx": 4},
                                             flagged=0, reset=True)


def test_the_pods_of_one_fork_add_up() -> None:
    one = Traffic(3, {"2xx": 2, "5xx": 1}, 1)
    two = Traffic(2, {"2xx": 1, "grpc UNAVAILABLE": 1}, 0, reset=True)
    assert one + two == Traffic(5, {"2xx": 3, "5xx": 1, "grpc UNAVAILABLE": 1}, 1, reset=True)
    assert sum((one, two), Traffic()) == one + two


def test_stats_url_names_the_merged_endpoint() -> None:
    assert stats_url("10.244.1.7") == "http://10.244.1.7:15020/stats/prometheus"
    assert stats_url("fd00:10:244::7") == "http://[fd00:10:244::7]:15020/stats/prometheus"
    assert stats_url("[FD00:10:244:0:0:0:0:7]") == \
        "http://[fd00:10:244::7]:15020/stats/prometheus"
    with pytest.raises(ValueError, match="not a pod IP address"):
        stats_url("pricing.shop.svc")
    with pytest.raises(ValueError, match="not a pod IP address"):
        stats_url("")


class _Server:
    """A real HTTP/1.1 server on 127.0.0.1 that records the request heads it read."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.port = 0
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self, status: int, body: bytes, *, answer: bool = True) -> _Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                self.heads.append((await reader.readuntil(b"\r\n\r\n")).decode("latin-1"))
                if not answer:
                    await self.release.wait()
                    return
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: text/plain; version=0.0.4"
                             f"\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stats/prometheus"

    async def stop(self) -> None:
        assert self._server is not None
        self.release.set()
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)


@pytest.fixture
async def servers() -> AsyncIterator[list[_Server]]:
    started: list[_Server] = []
    yield started
    for server in started:
        await server.stop()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_scrape_gives_each_pod_its_stats_or_its_error(servers: list[_Server]) -> None:
    stats = await _Server().start(200, STATS.encode())
    broken = await _Server().start(500, b"no healthy upstream\nmore\n")
    silent = await _Server().start(200, b"", answer=False)
    servers += [stats, broken, silent]
    gone = f"http://127.0.0.1:{_closed_port()}/stats/prometheus"

    urls = [silent.url, stats.url, gone, broken.url, stats.url]
    results = await asyncio.wait_for(scrape(urls, timeout=0.5), 10)

    assert list(results) == [silent.url, stats.url, gone, broken.url]  # asked once each
    ok = results[stats.url]
    assert ok.error is None
    assert ok.stats is not None
    assert ok.stats.malformed == 0
    assert ok.samples == tuple(parse_istio_requests(STATS))
    assert reached({}, inbound_counts(ok.samples, FORK)).requests == 67
    assert results[broken.url].stats is None
    assert results[broken.url].error == \
        f"GET {broken.url}: answered HTTP 500: no healthy upstream"
    assert results[gone].samples == ()
    assert results[gone].error is not None
    assert results[gone].error.startswith(f"GET {gone}: cannot connect (")
    assert results[silent.url].error == f"GET {silent.url}: no answer within 0.5s"

    head = stats.heads[0].lower()
    assert head.startswith("get /stats/prometheus http/1.1\r\n")
    assert "accept: text/plain; version=0.0.4\r\n" in head
    assert len(stats.heads) == 1


async def test_scrape_stops_reading_a_page_too_large_to_be_stats(
        servers: list[_Server]) -> None:
    big = await _Server().start(200, b"# x\n" * 4096)
    servers.append(big)
    results = await scrape([big.url], max_bytes=1024)
    assert results[big.url].error == \
        f"GET {big.url}: answer larger than 1024 bytes: not a stats page"
    assert await scrape([]) == {}
