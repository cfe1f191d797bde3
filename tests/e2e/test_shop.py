"""The demo shop under real OpenTelemetry instrumentation: the key survives every hop of the
instrumented services, HTTP → gRPC (orders → pricing) → HTTP, and the one endpoint that drops
`baggage` is named as a leak."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Project, free_ports

SHOP = Path(__file__).parents[2] / "examples" / "shop"


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Project]:
    root = tmp_path / "shop"
    shutil.copytree(SHOP, root, ignore=shutil.ignore_patterns(".laneway", ".data"))
    config = (root / "laneway.yaml").read_text()
    ports = dict(zip(["19401", "19402", "19403", "19404"], free_ports(4), strict=True))
    for old, new in ports.items():
        config = config.replace(f"port: {old}", f"port: {new}")
    (root / "laneway.yaml").write_text(config)
    names = {"web": ports["19401"], "orders": ports["19402"], "pricing": ports["19403"],
             "currency": ports["19404"]}
    with Project(root, names).running() as project:
        yield project


def test_opentelemetry_carries_the_key_and_the_leak_is_named(shop: Project) -> None:
    sandbox = shop.json("sandbox", "apply", "-f", "sandbox-pricing.yaml", "--wait")
    assert sandbox["status"]["ready"]
    good = shop.json("request", "--sandbox", "pricing-promo", "GET",
                     shop.url("web") + "/buy?item=book")
    assert good["path"] == "web → orders → pricing@pricing-promo → currency"
    assert json.loads(good["body"])["quote"]["pricing"]["discount"] == "20%"
    hops = {h["service"]: h for h in good["hops"]}
    assert {name: hop["grpc_status"] for name, hop in hops.items()} == {
        "web": None, "orders": None, "pricing": 0, "currency": None}
    assert hops["pricing"]["path"] == "/shop.Pricing/Quote"
    # The fork's HTTP call to currency (on the baseline) still carried the key.
    assert hops["currency"]["routing_key"] == sandbox["routingKey"]

    legacy = shop.json("request", "--sandbox", "pricing-promo", "GET",
                       shop.url("orders") + "/quote-v1?item=book")
    assert legacy["path"] == "orders → pricing → currency"  # the fork was skipped
    leaks = shop.json("leaks", "--sandbox", "pricing-promo")
    assert [(leak["service"], leak["lost_at"]) for leak in leaks] == [("orders", "pricing")]
    assert leaks[0]["trace_id"] == legacy["trace_id"]

    result = shop.run("run", "--sandbox", "pricing-promo", "-o", "json", "--", sys.executable, "-m",
                      "pytest", "-q", "-p", "no:cacheprovider", "tests")
    report = json.loads(result.stdout)
    assert report["verdict"] == "passed"
    assert report["tests"]["tests"] == 2
    assert [leak["service"] for leak in report["leaks"]] == ["orders"]
    assert re.fullmatch(r"[0-9a-f]{32}", report["leaks"][0]["trace_id"])
