"""Experiments' reports, kept by the control plane as runs are: `/v1/experiments`.

An experiment is run by its client (the CLI or the MCP server: `client/experiments.py`), which
is where the test command and the load generator belong; the control plane keeps what the
client reports, so that it lasts (`laneway experiment list/get`, the UI). The client POSTs the
report when it starts, PUTs it about every 10 s while it runs and once at the end. A report
still `running` that has not been updated for a minute reads `interrupted`
(`core.experiment_report.as_read`): its client was killed.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from laneway.control.errors import Invalid, NotFound
from laneway.control.store import AuditEntry, Store
from laneway.core.experiment_report import as_read, render_markdown
from laneway.core.spec import format_loc

__all__ = ["ExperimentReport", "experiments_router"]

MAX_REPORT_BYTES = 8 << 20  # per-slice figures of a long step stay far below this


class ExperimentReport(BaseModel):
    """An experiment's report as its client sends it: these fields are checked, the rest
    (rows, load figures, per-slice data) is kept as sent."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63)
    status: Literal["running", "finished", "interrupted"]
    verdict: Literal["running", "passed", "failed", "error", "interrupted"]
    rows: list[dict[str, Any]] = Field(default_factory=list)
    started_at: float | None = None


def _validated(data: dict[str, Any]) -> dict[str, Any]:
    try:
        model = ExperimentReport.model_validate(data)
    except ValidationError as exc:
        errors = [(format_loc(tuple(e["loc"])), str(e["msg"])) for e in exc.errors()]
        raise Invalid("; ".join(f"{f}: {m}" for f, m in errors), field=errors[0][0],
                      errors=errors) from exc
    return model.model_dump()


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_REPORT_BYTES:
        raise Invalid(f"the report is {len(raw)} bytes, more than {MAX_REPORT_BYTES}")
    try:
        data = await request.json()
    except ValueError as exc:
        raise Invalid(f"the request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object")
    return data


def experiments_router(store: Store) -> APIRouter:
    router = APIRouter(tags=["experiments"])

    def _get(experiment_id: str) -> dict[str, Any]:
        report = store.get_experiment(experiment_id)
        if report is None:
            raise NotFound(f"experiment {experiment_id!r} not found; `laneway experiment list` "
                           "shows the experiments")
        return as_read(report)

    @router.post("/v1/experiments")
    async def create_experiment(request: Request) -> JSONResponse:
        """Keep a new experiment's report (its client runs it); answers it with its `id`."""
        report = _validated(await _body(request))
        now = time.time()
        report.update(id="x" + secrets.token_hex(4), started_at=report["started_at"] or now,
                      updated_at=now)
        store.put_experiment(report)
        store.audit(AuditEntry(now, getattr(request.state, "principal", "local"),
                               "experiment", "experiment", report["name"], {"id": report["id"]}))
        return JSONResponse(report, status_code=201)

    @router.put("/v1/experiments/{experiment_id}")
    async def update_experiment(experiment_id: str, request: Request) -> dict[str, Any]:
        """Replace a running experiment's report (progress, then the final one)."""
        old = store.get_experiment(experiment_id)
        if old is None:
            raise NotFound(f"experiment {experiment_id!r} not found; POST /v1/experiments "
                           "first")
        if old["status"] != "running":
            raise Invalid(f"experiment {experiment_id} is {old['status']}: its report is final",
                          field="status", errors=[("status", "the report is final")])
        report = _validated(await _body(request))
        report.update(id=experiment_id, started_at=old["started_at"], updated_at=time.time())
        store.put_experiment(report)
        return report

    @router.get("/v1/experiments")
    async def list_experiments(limit: int = Query(20, ge=1, le=1000)) -> list[dict[str, Any]]:
        """The newest experiments, newest first, without their per-slice figures."""
        out = []
        for report in store.experiments(limit):
            shown = as_read(report)
            load = shown.get("load")
            if isinstance(load, dict):
                shown = {**shown, "load": {k: v for k, v in load.items() if k != "slices"}}
            out.append(shown)
        return out

    @router.get("/v1/experiments/{experiment_id}")
    async def get_experiment(experiment_id: str,
                             format: str = Query("json", pattern="^(json|md)$")) -> Response:
        report = _get(experiment_id)
        if format == "md":
            return Response(render_markdown(report), media_type="text/markdown")
        return JSONResponse(report)

    return router
