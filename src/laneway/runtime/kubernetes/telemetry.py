"""Scraping the fork pods' Istio telemetry (istio mode): a GET of each pod's merged Prometheus
endpoint (`http://POD_IP:15020/stats/prometheus`), all pods at once, each answer read with
`laneway.core.kubernetes.telemetry`. The operator scrapes a sandbox's fork pods when a run starts
and when it ends; one pod that is gone, slow or broken gives that pod an error, never the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from laneway.core.kubernetes.telemetry import (
    STATS_PATH,
    STATS_PORT,
    Answer,
    IstioSample,
    IstioStats,
    inbound_counts,
    parse_istio_stats,
)

__all__ = ["MAX_STATS_BYTES", "PodTelemetry", "ScrapeResult", "scrape", "stats_url"]

log = logging.getLogger("laneway.operator.telemetry")

# A sidecar exposes Istio's metrics and the few Envoy stats of its inclusion list: some hundred
# kilobytes even for a busy pod. Well past that it is not a stats page; stop reading.
MAX_STATS_BYTES = 32 * 1024 * 1024
# The classic text format: the merged endpoint would also answer OpenMetrics if asked for it.
_HEADERS = {"accept": "text/plain; version=0.0.4", "user-agent": "laneway-operator"}


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    """One pod's scrape: what it held (`stats`), or why there is nothing (`error`, a sentence
    naming the URL)."""

    url: str
    stats: IstioStats | None = None
    error: str | None = None

    @property
    def samples(self) -> tuple[IstioSample, ...]:
        return () if self.stats is None else self.stats.samples


def stats_url(pod_ip: str) -> str:
    """The merged Prometheus endpoint of the pod at `pod_ip` (`status.podIP`); an IPv6 address
    in brackets. ValueError if `pod_ip` is not an IP address."""
    try:
        address = ipaddress.ip_address(pod_ip.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(f"{pod_ip!r} is not a pod IP address (status.podIP)") from None
    host = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return f"http://{host}:{STATS_PORT}{STATS_PATH}"


async def scrape(urls: Iterable[str], timeout: float = 2.0, *, concurrency: int = 32,
                 max_bytes: int = MAX_STATS_BYTES) -> dict[str, ScrapeResult]:
    """Every URL's scrape, by URL, fetched `concurrency` at a time; `timeout` bounds each one
    from connect to the last byte."""
    wanted = list(dict.fromkeys(urls))
    results: dict[str, ScrapeResult] = {}
    if not wanted:
        return results
    slots = asyncio.Semaphore(concurrency)
    # Each pod is its own host, asked once: no connection is worth keeping. The environment's
    # proxy settings are for the operator's way out, never for pod IPs inside the cluster.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=_HEADERS,
                                 trust_env=False, follow_redirects=False) as client:

        async def one(url: str) -> None:
            async with slots:
                results[url] = await _scrape_one(client, url, timeout, max_bytes)

        async with asyncio.TaskGroup() as group:
            for url in wanted:
                group.create_task(one(url), name=f"scrape {url}")
    return {url: results[url] for url in wanted}


async def _scrape_one(client: httpx.AsyncClient, url: str, timeout: float,
                      max_bytes: int) -> ScrapeResult:
    try:
        async with asyncio.timeout(timeout):
            body = await _get(client, url, max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        return ScrapeResult(url, error=f"GET {url}: no answer within {timeout:g}s")
    except httpx.ConnectError as exc:
        return ScrapeResult(url, error=f"GET {url}: cannot connect ({_reason(exc)})")
    except (httpx.HTTPError, OSError) as exc:
        return ScrapeResult(url, error=f"GET {url}: {_reason(exc)}")
    if isinstance(body, str):
        return ScrapeResult(url, error=f"GET {url}: {body}")
    return ScrapeResult(url, stats=parse_istio_stats(body.decode("utf-8", errors="replace")))


async def _get(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes | str:
    """The body of a 200 answer, or what was wrong with the answer."""
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            head = b""
            async for chunk in response.aiter_bytes():
                head += chunk
                if len(head) >= 200:
                    break
            # Envoy's own answers say why in one line ("no healthy upstream").
            first = head[:200].decode("utf-8", errors="replace").strip().partition("\n")[0]
            return f"answered HTTP {response.status_code}" + (f": {first}" if first else "")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                return f"answer larger than {max_bytes} bytes: not a stats page"
            chunks.append(chunk)
        return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class PodTelemetry:
    """The Istio request counters of pods (the operator's `Telemetry` in Istio mode): for each
    pod with an IP, what it received as the destination, by answer. A pod whose stats cannot be
    read is left out (and logged): its fork then shows fewer requests, never an error."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout

    async def counts(self, pods: list[dict[str, Any]]) -> dict[str, dict[Answer, float]]:
        urls: dict[str, str] = {}
        for pod in pods:
            ip = (pod.get("status") or {}).get("podIP")
            if ip:
                with contextlib.suppress(ValueError):
                    urls[str(pod["metadata"]["name"])] = stats_url(str(ip))
        found = await scrape(list(urls.values()), self.timeout)
        out: dict[str, dict[Answer, float]] = {}
        for name, url in urls.items():
            result = found[url]
            if result.stats is None:
                log.warning("Istio stats of pod %s not read: %s", name, result.error)
                continue
            out[name] = inbound_counts(result.stats.samples)
        return out
