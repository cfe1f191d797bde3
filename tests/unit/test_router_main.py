"""The router's command line (`python -m laneway.router`): `--listen SERVICE=PORT[/PROTOCOL]`,
and that what router mode renders for the Kubernetes sidecar parses back to what it meant."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from laneway.core.kubernetes import render_sandbox
from laneway.core.kubernetes.objects import table_service
from laneway.core.kubernetes.router_mode import router_protocol
from laneway.router.__main__ import parser
from tests.unit.test_kubernetes import GRPC, GRPC_SANDBOX, KEY

ROUTES = ["--routes", "http://127.0.0.1:1/v1/routes"]


def test_listen_takes_an_optional_protocol() -> None:
    args = parser.parse_args(["--listen", "pricing.shop=15080",
                              "--listen", "orders.shop:grpc=15081/grpc",
                              "--listen", "orders.shop:http2-x=15082/h2c",
                              "--listen", "web=8080/http", *ROUTES])
    assert args.listen == [("pricing.shop", 15080, "http"), ("orders.shop:grpc", 15081, "grpc"),
                           ("orders.shop:http2-x", 15082, "h2c"), ("web", 8080, "http")]


@pytest.mark.parametrize("value", ["a=15080/spdy", "a=15080/", "a=15080/GRPC", "a=/grpc",
                                   "=15080/grpc", "a=70000/grpc", "a=15080:grpc", "a15080"])
def test_listen_rejects_what_it_cannot_read(value: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--listen", value, *ROUTES])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{value!r}: expected SERVICE=PORT or SERVICE=PORT/PROTOCOL with PROTOCOL one of " \
           "http, h2c, grpc, e.g. orders=15080 or orders=15081/grpc" in err


def test_the_rendered_sidecar_command_line_parses_to_each_ports_protocol() -> None:
    baseline = list(yaml.safe_load_all(GRPC))
    objects = render_sandbox(GRPC_SANDBOX, baseline, KEY, mode="router")
    pod = next(o for o in objects if o["kind"] == "Deployment"
               and o["metadata"]["name"] == "catalog")["spec"]["template"]["spec"]
    router = pod["containers"][-1]
    args = parser.parse_args(router["args"])
    expected: list[tuple[str, str]] = []
    services: list[dict[str, Any]] = sorted(
        (o for o in baseline if o["kind"] == "Service"), key=lambda o: o["metadata"]["name"])
    for svc in services:
        for port in svc["spec"]["ports"]:
            protocol = router_protocol(port)[0]
            if protocol is not None:
                expected.append((table_service(svc, port), protocol))
    assert [(service, protocol) for service, _, protocol in args.listen] == expected
    assert {p for _, p in expected} == {"http", "h2c", "grpc"}
    assert [port for _, port, _ in args.listen] == [p["containerPort"] for p in router["ports"]]
    assert [service for service, _ in args.baseline] == [service for service, _ in expected]
