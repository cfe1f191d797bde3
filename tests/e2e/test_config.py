"""Configuration as people write it: anchors and merge keys, `x-` fields, a project-wide `env`,
several sandboxes in one file, `laneway up` from a subfolder, a project inside a project."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.e2e.conftest import CHAIN, Project, free_ports


def anchored_yaml(ports: dict[str, int]) -> str:
    return f"""
name: anchored
x-defaults: &defaults
  health: /healthz
  startup_timeout: 3s
x-otel: &otel
  OTEL_SDK_DISABLED: "true"
  SHARED: from-anchor
env:                          # under every service's own env
  SHARED: from-project
  ONLY_PROJECT: "yes"
services:
  c:
    <<: *defaults
    x-note: the end of the chain
    run: [{sys.executable}, {CHAIN}]
    port: {ports['c']}
    env:
      <<: *otel
  b:
    <<: *defaults
    run: [{sys.executable}, {CHAIN}]
    port: {ports['b']}
    env:
      NEXT_URL: ${{services.c.url}}
      SHARED: from-b
    depends_on: [c]
  a:
    <<: *defaults
    run: [{sys.executable}, {CHAIN}]
    port: {ports['a']}
    env:
      NEXT_URL: ${{services.b.url}}
    depends_on: [b]
"""


def env_of(project: Project, sandbox: str, service: str) -> dict[str, Any]:
    out = project.run("sandbox", "env", sandbox, service, "--format", "json").stdout
    env: dict[str, Any] = json.loads(out)["env"]
    return env


def test_anchors_merge_keys_shared_env_and_multi_document_files(tmp_path: Path) -> None:
    a, b, c, api = free_ports(4)
    ports = {"a": a, "b": b, "c": c}
    low = 41000 + (api % 500) * 16
    project = Project(tmp_path, ports)
    project.write("laneway.yaml", anchored_yaml(ports) +
                  f"ports:\n  api: {api}\n  internal: {low}-{low + 63}\n")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    # `up` from a subfolder finds laneway.yaml above it, as every other command does.
    inner = Project(tmp_path / "sub" / "deeper", ports)
    inner.run("up", "--detach")
    try:
        status = project.json("status")
        assert [s["phase"] for s in status["services"]] == ["ready"] * 3
        # The API's port and the range of the processes' PORT, as laneway.yaml set them.
        info = json.loads((tmp_path / ".laneway" / "api.json").read_text())
        assert info["url"] == f"http://127.0.0.1:{api}"
        internal = [s["internalPort"] for s in status["services"]]
        assert all(low <= port <= low + 63 for port in internal), internal
        project.write("two.yaml", "name: one\nforks:\n  - service: c\n---\n"
                                  "name: two\nlabels: {n: '2'}\nforks:\n  - service: b\n")
        applied = project.run("sandbox", "apply", "-f", "two.yaml", "--wait").stdout
        assert "sandbox one created  generation 1" in applied
        assert "sandbox two created  generation 1" in applied
        assert {s["name"] for s in project.json("sandbox", "list")} == {"one", "two"}
        # Merge keys and the project's env, with the nearer value winning each time.
        c = env_of(project, "one", "c")
        assert c["OTEL_SDK_DISABLED"] == "true"
        assert c["SHARED"] == "from-anchor"
        assert c["ONLY_PROJECT"] == "yes"
        unforked = env_of(project, "two", "c")  # what c would get, forked in two
        assert unforked["SHARED"] == "from-anchor"
        assert unforked["LANEWAY_SANDBOX"] == "two"
        b = env_of(project, "two", "b")
        assert b["SHARED"] == "from-b"
        assert b["ONLY_PROJECT"] == "yes"
        # Several documents are all checked before any is applied.
        project.write("bad.yaml", "name: three\nforks:\n  - service: c\n---\n"
                                  "name: four\nforks:\n  - service: nope\n")
        refused = project.run("sandbox", "apply", "-f", "bad.yaml", check=False)
        assert refused.returncode == 1
        assert "bad.yaml (document 2): forks[0].service: unknown service 'nope'" \
            in refused.stderr
        assert "Traceback" not in refused.stderr
        assert {s["name"] for s in project.json("sandbox", "list")} == {"one", "two"}
        # Safe updates: what changed, with a diff; refusals that change nothing.
        project.write("one.yaml", "name: one\nforks:\n  - service: c\n")
        assert "sandbox one unchanged  generation 1" in \
            project.run("sandbox", "apply", "-f", "one.yaml").stdout
        project.write("one.yaml", "name: one\nforks:\n  - service: c\n"
                                  "    env: {VERSION: v2}\n")
        updated = project.run("sandbox", "apply", "-f", "one.yaml").stdout
        assert "sandbox one updated  generation 2" in updated
        assert "+    VERSION: v2" in updated
        stale = project.run("sandbox", "apply", "-f", "one.yaml", "--if-generation", "1",
                            check=False)
        assert stale.returncode == 1
        assert "is at generation 2, not 1" in stale.stderr
        taken = project.run("sandbox", "apply", "-f", "one.yaml", "--create-only",
                            check=False)
        assert taken.returncode == 1
        assert "exists already" in taken.stderr

        # Logs of a baseline service and of a fork, by the same command.
        assert "c baseline listening" in project.run("logs", "c", "--grep", "listening").stdout
        assert "b baseline listening" in \
            project.run("logs", "b", "--sandbox", "two", "--since", "1h").stdout
        missing = project.run("logs", "nope", check=False)
        assert missing.returncode == 1
        assert "service 'nope' not found; services: c, b, a" in missing.stderr

        # A project inside this one is its own: `down` there does not stop this one.
        nested = tmp_path / "nested"
        nested.mkdir()
        (nested / "laneway.yaml").write_text(anchored_yaml(dict(zip(
            "abc", free_ports(3), strict=True))).replace("anchored", "nested"))
        result = Project(nested, {}).run("down", check=False)
        assert result.returncode == 1
        assert f"laneway is not running for {nested}" in result.stderr
        assert project.json("status")["name"] == "anchored"
    finally:
        project.run("down", check=False)


def test_what_laneway_does_not_replace_is_an_error_not_a_literal(tmp_path: Path) -> None:
    ports = dict(zip("abc", free_ports(3), strict=True))
    project = Project(tmp_path, ports)
    project.write("laneway.yaml", anchored_yaml(ports).replace(
        "SHARED: from-b", "SHARED: from-b\n      LISTEN: ${PORT}"))
    result = project.run("up", "--detach", check=False)
    assert result.returncode == 2
    assert "services.b.env.LISTEN: ${PORT} is not something laneway replaces" in result.stderr
    assert "read $PORT there" in result.stderr
    project.write("laneway.yaml", anchored_yaml(ports).replace("health: /healthz",
                                                               "helth: /healthz"))
    result = project.run("up", "--detach", check=False)
    assert result.returncode == 2
    assert "helth: unknown field; did you mean 'health'?" in result.stderr
    project.write("laneway.yaml", anchored_yaml(ports) + "ports:\n  internal: 9000-9001\n")
    small = project.run("up", "--detach", check=False)
    assert small.returncode == 2
    assert "ports.internal: '9000-9001': at least 16 ports" in small.stderr
    # A set API port that is taken: one clear error, nothing left running.
    import socket

    api = free_ports(1)[0]
    holder = socket.socket()
    holder.bind(("127.0.0.1", api))
    holder.listen()
    try:
        project.write("laneway.yaml", anchored_yaml(ports) + f"ports:\n  api: {api}\n")
        taken = project.run("up", "--detach", check=False)
        assert taken.returncode == 1
        assert f"ports.api: cannot listen on 127.0.0.1:{api}" in taken.stderr
        assert not (tmp_path / ".laneway" / "api.json").exists()
    finally:
        holder.close()
