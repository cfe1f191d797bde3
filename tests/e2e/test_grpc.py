"""gRPC end to end, as a user runs it: three grpcio services under OpenTelemetry's gRPC
instrumentation declared `protocol: grpc` and `health: grpc` in laneway.yaml, `laneway up`, a
sandbox forking the middle one, calls on the public ports. Keyed calls reach the fork, unkeyed
ones the baseline; hops carry the gRPC status; `laneway run` counts gRPC hops as forks reached;
a fork that cannot start, and one that crashes mid-call, answer UNAVAILABLE with the reason."""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.conftest import Project, free_ports
from tests.grpcapps import decode, encode

APP = str(Path(__file__).parents[1] / "apps" / "grpc_chain.py")

CLIENT = """
import json, os, sys
import grpc
channel = grpc.insecure_channel(os.environ["TARGET"])
path = channel.unary_unary("/chain.Hop/Path", request_serializer=lambda m: json.dumps(m).encode(),
                           response_deserializer=json.loads)
print(path({}, metadata=[("baggage", os.environ["LANEWAY_BAGGAGE"])], timeout=10)["path"])
"""


def _yaml(ports: dict[str, int]) -> str:
    def service(name: str, nxt: str | None) -> str:
        env = f"\n      NEXT: ${{services.{nxt}.host}}:${{services.{nxt}.port}}" if nxt else ""
        return (f"  {name}:\n    run: [{sys.executable}, {APP}]\n    port: {ports[name]}\n"
                f"    protocol: grpc\n    health: grpc\n    env:\n      NAME: {name}{env}\n")
    return "name: grpcchain\nservices:\n" + service("c", None) + service("b", "c") + \
        service("a", "b")


@pytest.fixture
def grpc_project(tmp_path: Path) -> Iterator[Project]:
    ports = dict(zip("abc", free_ports(3), strict=True))
    proj = Project(tmp_path, ports)
    proj.write("laneway.yaml", _yaml(ports))
    with proj.running():
        yield proj


def _fork(project: Project, name: str, env: str) -> dict[str, Any]:
    project.write(f"{name}.yaml", f"name: {name}\nforks:\n  - service: b\n    env: {env}\n")
    result = project.run("sandbox", "apply", "-f", f"{name}.yaml", "--wait", "-o", "json",
                         check=False)
    return dict(json.loads(result.stdout)) if result.stdout.strip() else {}


def _call(project: Project, method: str, request: dict[str, Any], key: str | None,
          trace_id: str | None = None, timeout: float = 10) -> Any:
    metadata = []
    if key:
        metadata.append(("baggage", f"laneway-key={key}"))
    if trace_id:
        metadata.append(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"))
    with grpc.insecure_channel(f"127.0.0.1:{project.ports['a']}") as channel:
        call = channel.unary_unary(f"/chain.Hop/{method}", request_serializer=encode,
                                   response_deserializer=decode)
        return call(request, metadata=metadata, timeout=timeout)


def _hops(project: Project, trace_id: str, count: int) -> list[dict[str, Any]]:
    hops: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        hops = project.json("hops", "--trace", trace_id)
        if len(hops) >= count:
            break
        time.sleep(0.1)
    return hops


def test_grpc_services_route_by_key_through_laneway(grpc_project: Project) -> None:
    status = grpc_project.json("status")
    assert {s["name"]: s["protocol"] for s in status["services"]} == \
        {"a": "grpc", "b": "grpc", "c": "grpc"}
    view = _fork(grpc_project, "sb", "{NAME: b@sb}")
    assert view["status"]["phase"] == "ready", view
    key = view["routingKey"]

    keyed_trace, plain_trace = secrets.token_hex(16), secrets.token_hex(16)
    assert _call(grpc_project, "Path", {}, key, keyed_trace)["path"] == ["a", "b@sb", "c"]
    assert _call(grpc_project, "Path", {}, None, plain_trace)["path"] == ["a", "b", "c"]
    hops = _hops(grpc_project, keyed_trace, 3)
    assert sorted((h["service"], h["destination"], h["grpc_status"]) for h in hops) == [
        ("a", "baseline", 0), ("b", "sb", 0), ("c", "baseline", 0)]
    assert {h["path"] for h in hops} == {"/chain.Hop/Path"}
    # Each hop names the process that made the call (issue 13): the test, a, the fork of b.
    assert sorted((h["service"], h["caller"]) for h in hops) == [
        ("a", "external"), ("b", "a"), ("c", "b@sb")]
    table = grpc_project.run("hops", "--trace", keyed_trace).stdout
    assert "200 OK" in table

    grpc_project.write("client.py", CLIENT)
    result = grpc_project.run("run", "-o", "json", "--sandbox", "sb", "--", "sh", "-c",
                              "TARGET=$LANEWAY_ADDR_A "
                              f"{sys.executable} client.py", check=False)
    report = json.loads(result.stdout)
    assert report["verdict"] == "passed", report
    assert report["forks_reached"]["b@sb"] >= 1


def test_a_fork_that_cannot_start_or_crashes_mid_call_is_unavailable(
        grpc_project: Project) -> None:
    broken = _fork(grpc_project, "broken", "{CRASH_AT_START: '1'}")
    assert broken["status"]["phase"] != "ready"
    with pytest.raises(grpc.RpcError) as err:
        _call(grpc_project, "Path", {}, broken["routingKey"])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    details = err.value.details()
    assert "broken" in details  # the sandbox is named, with the fork's trouble
    assert "b@broken" in details or "exit" in details, details

    crashing = _fork(grpc_project, "crashing", "{NAME: b@crashing}")
    with pytest.raises(grpc.RpcError) as err:
        _call(grpc_project, "Crash", {"crash": ["b@crashing"]}, crashing["routingKey"])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "b@crashing" in err.value.details()
    # The baseline never answered in the fork's place, and serves unkeyed calls throughout.
    assert _call(grpc_project, "Path", {}, None)["path"] == ["a", "b", "c"]
