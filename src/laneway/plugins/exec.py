"""`exec`: user-supplied create and delete commands, for any other kind of state.

`create` runs with LANEWAY_SANDBOX, LANEWAY_RESOURCE and LANEWAY_ROUTING_KEY set and must print
one JSON object of string outputs on stdout (its last line); `delete` gets the same variables
plus the outputs as LANEWAY_OUTPUT_<NAME>. A failing create is followed by its delete.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from laneway.core.resources import PluginError, ResourceContext

__all__ = ["ExecPlugin"]


class ExecParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    create: str | list[str] = Field(description="command that makes it; prints JSON outputs")
    delete: str | list[str] = Field(description="command that removes it")
    timeout: float = Field(default=120.0, gt=0)


async def _run(command: str | list[str], env: dict[str, str],
               timeout: float) -> tuple[int, str, str]:
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env={**os.environ, **env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise PluginError(f"exec: cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise PluginError(f"exec: {shlex.join(argv)} did not finish within {timeout:g}s") \
            from exc
    return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


class ExecPlugin:
    name = "exec"
    params_model = ExecParams

    @staticmethod
    def _env(ctx: ResourceContext) -> dict[str, str]:
        return {"LANEWAY_SANDBOX": ctx.sandbox, "LANEWAY_RESOURCE": ctx.resource,
                "LANEWAY_ROUTING_KEY": ctx.routing_key}

    async def create(self, ctx: ResourceContext, params: Any) -> tuple[dict[str, str],
                                                                          dict[str, Any]]:
        code, out, err = await _run(params.create, self._env(ctx), params.timeout)
        if code != 0:
            detail = (err or out).strip().splitlines()[-3:]
            raise PluginError(f"exec: create exited with code {code}: {' | '.join(detail)}")
        lines = [ln for ln in out.strip().splitlines() if ln.strip()]
        try:
            outputs = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            outputs = None
        if not isinstance(outputs, dict):
            raise PluginError("exec: create must print a JSON object of outputs as its last "
                              f"line; it printed: {lines[-1][:200] if lines else 'nothing'}")
        values = {str(k): str(v) for k, v in outputs.items()}
        return values, {"outputs": values}

    async def delete(self, ctx: ResourceContext, params: Any, state: dict[str, Any]) -> None:
        env = self._env(ctx)
        for key, value in (state.get("outputs") or {}).items():
            env[f"LANEWAY_OUTPUT_{key.upper()}"] = value
        code, out, err = await _run(params.delete, env, params.timeout)
        if code != 0:
            detail = (err or out).strip().splitlines()[-3:]
            raise PluginError(f"exec: delete exited with code {code}: {' | '.join(detail)}")
