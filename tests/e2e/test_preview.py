"""The preview edge's port from `laneway up`: the default gives way, a set one is the project's
(the edge itself in a browser: test_ui.py; on sockets: integration/test_preview_edge.py)."""

from __future__ import annotations

import socket
from typing import Any

import httpx

from tests.e2e.conftest import Project, chain_yaml, free_ports


def preview_get(port: int, host: str, **headers: str) -> httpx.Response:
    # What a browser does for http://<host>:<port>/: loopback, with the name in `Host`.
    return httpx.get(f"http://127.0.0.1:{port}/", headers={"host": f"{host}:{port}", **headers},
                     timeout=10)


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
