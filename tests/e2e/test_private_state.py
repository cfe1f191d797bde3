"""Secrets at rest and in views, as a user meets them: `.laneway/` is private to its user
(folders 0700, files 0600), and secret-looking env values are masked in every CLI and MCP view
unless asked for, while the forks themselves get the real values."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import httpx
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from laneway.core.layout import make_private
from tests.e2e.conftest import LANEWAY, Project, chain_yaml, free_ports

SECRET = "hunter2"
SANDBOX = f"""name: vault
forks:
  - service: b
    env:
      DB_PASSWORD: {SECRET}
      DATABASE_URL: postgres://app:{SECRET}@127.0.0.1/db
      VERSION: redis://:{SECRET}@127.0.0.1/0
"""
MASKED_ENV = {"DB_PASSWORD": "***", "DATABASE_URL": "postgres://app:***@127.0.0.1/db",
              "VERSION": "redis://:***@127.0.0.1/0"}
RAW_ENV = {"DB_PASSWORD": SECRET, "DATABASE_URL": f"postgres://app:{SECRET}@127.0.0.1/db",
           "VERSION": f"redis://:{SECRET}@127.0.0.1/0"}


def readable_by_others(root: Path) -> list[str]:
    """Every entry under `root` (itself included) with a group or other permission bit."""
    found = []
    for folder, dirs, files in os.walk(root):
        for path in [Path(folder), *(Path(folder) / n for n in dirs + files)]:
            info = path.lstat()
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
                found.append(f"{path.relative_to(root.parent)} {stat.filemode(info.st_mode)}")
    return sorted(set(found))


def test_state_is_private_and_views_mask_secrets(project: Project) -> None:
    project.write("vault.yaml", SANDBOX)
    outputs = [project.run("sandbox", "apply", "-f", "vault.yaml", "--wait")]

    # The fork runs with the real values: masking is for views only.
    key = project.json("sandbox", "get", "vault")["routingKey"]
    answer = httpx.get(project.url("a"), headers={"baggage": f"laneway-key={key}"},
                       timeout=10).json()
    assert answer["next"]["version"] == RAW_ENV["VERSION"]

    state = project.root / ".laneway"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert {p.name for p in state.iterdir()} >= {"state.db", "token", "daemon.log", "api.json"}
    assert readable_by_others(state) == []

    view = project.json("sandbox", "get", "vault")
    assert view["forks"] == [{"service": "b", "env": MASKED_ENV}]
    listed = project.json("sandbox", "list")
    assert [sb["forks"] for sb in listed] == [[{"service": "b", "env": MASKED_ENV}]]
    revealed = project.json("sandbox", "get", "vault", "--show-secrets")
    assert revealed["forks"] == [{"service": "b", "env": RAW_ENV}]
    assert project.json("sandbox", "list", "--show-secrets")[0]["forks"] == revealed["forks"]
    applied = project.json("sandbox", "apply", "-f", "vault.yaml", "--show-secrets")
    assert applied["forks"] == revealed["forks"]

    table = project.run("sandbox", "get", "vault")
    assert "env of b@vault: DB_PASSWORD=***, DATABASE_URL=postgres://app:***@127.0.0.1/db" \
        in table.stdout
    assert SECRET in project.run("sandbox", "get", "vault", "--show-secrets").stdout

    outputs += [table, project.run("sandbox", "list"), project.run("status"),
                project.run("sandbox", "apply", "-f", "vault.yaml"),
                project.run("sandbox", "apply", "-f", "vault.yaml", "-o", "json"),
                *(project.run(*args, "-o", "json") for args in (
                    ["sandbox", "get", "vault"], ["sandbox", "list"], ["status"],
                    ["hops", "--sandbox", "vault"]))]
    for result in outputs:
        assert SECRET not in result.stdout + result.stderr, result.args
    # laneway's own logs do not print env values either (the fork's log is the fork's own).
    for log in state.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace"), log

    # Everything written since (logs grew, the store changed) is still private.
    assert readable_by_others(state) == []


async def test_mcp_results_mask_secrets_unless_asked(project: Project) -> None:
    project.write("vault.yaml", SANDBOX)
    project.run("sandbox", "apply", "-f", "vault.yaml", "--wait")
    params = StdioServerParameters(command=LANEWAY, args=["mcp"], cwd=str(project.root))
    async with Client(params) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        reveal = tools["get_sandbox"].input_schema["properties"]["reveal_secrets"]
        assert reveal["type"] == "boolean"
        assert reveal["default"] is False
        assert "masked" in reveal["description"]

        async def result(tool: str, **arguments: Any) -> Any:
            answer = await client.call_tool(tool, arguments)
            assert not answer.is_error, answer.content
            return answer.structured_content

        sandbox = await result("get_sandbox", name="vault")
        assert sandbox["forks"][0]["env"] == MASKED_ENV
        listed = await result("list_sandboxes")
        applied = await result("apply_sandbox", name="vault", forks=[
            {"service": "b", "env": RAW_ENV}])
        assert applied["forks"][0]["env"] == MASKED_ENV
        for shown in (sandbox, listed, applied):
            assert SECRET not in repr(shown)
        revealed = await result("get_sandbox", name="vault", reveal_secrets=True)
        assert revealed["forks"][0]["env"] == RAW_ENV


def test_up_makes_an_older_state_folder_private(tmp_path: Path) -> None:
    """A `.laneway/` left by an older version (0755 folders, 0644 files) is fixed by `up`,
    without following links out of it."""
    ports = dict(zip("abc", free_ports(3), strict=True))
    project = Project(tmp_path / "app", ports)
    project.root.mkdir()
    project.write("laneway.yaml", chain_yaml(ports))
    state = project.root / ".laneway"
    (state / "logs").mkdir(parents=True)
    (state / "old.db").write_text("env values of an older version")
    (state / "logs" / "b.log").write_text("a log")
    outside = tmp_path / "outside.txt"
    outside.write_text("not laneway's")
    (state / "link").symlink_to(outside)
    for path, mode in ((state, 0o755), (state / "logs", 0o755), (state / "old.db", 0o644),
                       (state / "logs" / "b.log", 0o644), (outside, 0o644)):
        path.chmod(mode)
    assert len(readable_by_others(state)) == 4

    with project.running():
        assert readable_by_others(state) == []
        assert stat.S_IMODE((state / "old.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((state / "logs").stat().st_mode) == 0o700
        assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # the link was not followed
        assert (state / "link").is_symlink()


def test_make_private_creates_and_fixes_folders(tmp_path: Path) -> None:
    fresh = tmp_path / "project" / ".laneway"
    assert make_private(fresh) == []
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700

    deep = fresh / "resources" / "db" / "data"
    deep.mkdir(parents=True, mode=0o777)
    (deep / "tool").write_text("#!/bin/sh\n")
    (deep / "tool").chmod(0o755)
    (deep / "page").write_text("")
    (deep / "page").chmod(0o444)
    (fresh / "run").mkdir(mode=0o750)
    assert make_private(fresh) == []
    assert readable_by_others(fresh) == []
    # Owner bits are kept as they were: an executable stays executable, read-only stays so.
    assert stat.S_IMODE((deep / "tool").stat().st_mode) == 0o700
    assert stat.S_IMODE((deep / "page").stat().st_mode) == 0o400
    assert stat.S_IMODE((fresh / "resources" / "db").stat().st_mode) == 0o700
