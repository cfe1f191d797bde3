"""Printing: JSON for machines (`-o json`), rich tables for people."""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from laneway.core.duration import format_duration

__all__ = ["Output", "console", "print_json", "since", "table"]

# Piped output is read by scripts and pasted into issues: do not wrap it at 80 columns.
console = Console(highlight=False, soft_wrap=True,
                  width=None if sys.stdout.isatty() else 240)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Output(StrEnum):
    table = "table"
    json = "json"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(*columns: str) -> Table:
    out = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        out.add_column(column)
    return out


def since(at: float | None) -> str:
    if not at:
        return "-"
    return format_duration(time.time() - at) + " ago"


def phase_style(phase: str) -> str:
    colour = {"ready": "green", "pending": "yellow", "starting": "yellow",
              "failed": "red", "crashed": "red", "unhealthy": "red"}.get(phase, "white")
    return f"[{colour}]{phase}[/{colour}]"


# The options of every command that prints a log (`laneway logs`, `laneway sandbox logs`).
FollowOption = Annotated[bool, typer.Option("--follow", "-F", help="Keep printing new lines")]
TailOption = Annotated[int, typer.Option(help="Lines from the end")]
SinceOption = Annotated[str | None, typer.Option(
    help="Only lines since: 5m, 1h, or an ISO time")]
GrepOption = Annotated[str | None, typer.Option(help="Only lines matching this regex")]
