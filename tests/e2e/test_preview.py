"""Preview URLs end to end: `laneway up` serves the preview edge, `sandbox apply` and `get` name
the URLs, and a request to `<sandbox>--<service>.localhost` gets the sandbox's forks."""

from __future__ import annotations

import socket
from typing import Any

import httpx

from tests.e2e.conftest import Project, chain_yaml, free_ports


def versions(body: dict[str, Any]) -> list[str]:
    out = []
    while body:
        out.append(f"{body['service']}:{body['version']}")
        body = body["next"]
    return out


def preview_get(port: int, host: str, **headers: str) -> httpx.Response:
    # What a browser does for http://<host>:<port>/: loopback, with the name in `Host`.
    return httpx.get(f"http://127.0.0.1:{port}/", headers={"host": f"{host}:{port}", **headers},
                     timeout=10)


def test_preview_urls_from_apply_to_delete(tmp_path: Any) -> None:
    ports = dict(zip("abce", free_ports(4), strict=True))
    edge = ports.pop("e")
    proj = Project(tmp_path, ports)
    proj.write("laneway.yaml", chain_yaml(ports, f"preview:\n  port: {edge}\n"))
    with proj.running():
        assert proj.json("status")["preview"]["port"] == edge
        proj.write("sb.yaml", "name: sb-b\nforks:\n  - service: b\n    env: {VERSION: v2}\n")
        applied = proj.run("sandbox", "apply", "-f", "sb.yaml", "--wait").stdout
        url = f"http://sb-b--b.localhost:{edge}/"
        assert f"preview b  {url}" in applied
        assert f"http://sb-b--a.localhost:{edge}/" in applied
        view = proj.json("sandbox", "get", "sb-b")
        assert view["previews"] == {s: f"http://sb-b--{s}.localhost:{edge}/" for s in "abc"}
        assert f"preview a  http://sb-b--a.localhost:{edge}/" in \
            proj.run("sandbox", "get", "sb-b").stdout

        resp = preview_get(edge, "sb-b--a.localhost", baggage="session=7")
        assert resp.status_code == 200
        assert versions(resp.json()) == ["a:baseline", "b:v2", "c:baseline"]
        assert resp.headers["laneway-served-by"] == "a"
        assert versions(preview_get(edge, "a.localhost").json()) == \
            ["a:baseline", "b:baseline", "c:baseline"]
        hops = proj.json("hops", "--sandbox", "sb-b")
        assert ("b", "sb-b") in {(h["service"], h["destination"]) for h in hops}

        proj.run("sandbox", "delete", "sb-b")
        gone = preview_get(edge, "sb-b--a.localhost", accept="text/html")
        assert gone.status_code == 404
        assert "no sandbox or route group named &#x27;sb-b&#x27;" in gone.text


def test_the_default_preview_port_gives_way_and_a_set_one_is_an_error(tmp_path: Any) -> None:
    ports = dict(zip("abce", free_ports(4), strict=True))
    edge = ports.pop("e")
    holder = socket.socket()
    holder.bind(("127.0.0.1", edge))
    holder.listen()
    try:
        proj = Project(tmp_path, ports)
        proj.write("laneway.yaml", chain_yaml(ports, f"preview:\n  port: {edge}\n"))
        result = proj.run("up", "--detach", check=False)
        assert result.returncode == 1
        assert f"cannot serve previews on 127.0.0.1:{edge}" in result.stderr
        assert "preview.port" in result.stderr
        proj.write("laneway.yaml", chain_yaml(ports, f"preview:\n  port: {ports['a']}\n"))
        result = proj.run("up", "--detach", check=False)
        assert result.returncode == 2
        assert "preview.port: port" in result.stderr
        assert "the preview edge needs its own port" in result.stderr
        # Not set: the default port (perhaps another project's) gives way to a free one.
        proj.write("laneway.yaml", chain_yaml(ports))
        with proj.running():
            status = proj.json("status")
            assert status["preview"]["port"] not in (edge, *ports.values())
            listed = preview_get(status["preview"]["port"], "localhost", accept="text/html")
            assert listed.status_code == 200
            assert "laneway previews" in listed.text
    finally:
        holder.close()
