"""The routes feed: a versioned snapshot of the routing table, then its changes.

The control plane publishes whole tables; subscribers (routers) ask for what is new since the
version they hold and get either the changes or, when they are too far behind or new, a snapshot.
This in-memory broadcaster serves routers in the same process and backs the HTTP feed endpoint.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from laneway.core.routes import RouteChanges, RouteTable, diff_tables

__all__ = ["FeedUpdate", "RoutesBroadcaster", "RoutesFeed", "update_from_json", "update_to_json"]

FeedUpdate = RouteTable | list[RouteChanges]


class RoutesFeed(Protocol):
    async def next_update(self, since: int | None, timeout: float) -> FeedUpdate | None:
        """What is new after `since` (None: a snapshot); None when nothing changed in time."""


class RoutesBroadcaster:
    def __init__(self, history: int = 256, first_version: int = 0) -> None:
        # A feed that may restart while its routers keep running (the operator's) starts from a
        # version above any it served before (a clock reading), so a router's `since` from the
        # old run never names a version of the new history: it gets a snapshot.
        self._table = RouteTable(version=first_version)
        self._changes: deque[RouteChanges] = deque(maxlen=history)
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        return self._table.version

    def snapshot(self) -> RouteTable:
        return copy.deepcopy(self._table)

    def publish(self, table: RouteTable) -> RouteChanges | None:
        """Make `table` current; returns the changes, or None when nothing changed."""
        table.version = self._table.version + 1
        changes = diff_tables(self._table, table)
        if changes.empty:
            table.version = self._table.version
            return None
        self._table = table
        self._changes.append(changes)
        self._changed.set()
        self._changed = asyncio.Event()
        return changes

    def changes_since(self, since: int | None) -> FeedUpdate | None:
        if since is None or since > self._table.version:
            return self.snapshot()
        if since == self._table.version:
            return None
        pending = [c for c in self._changes if c.since >= since]
        if not pending or pending[0].since != since:
            return self.snapshot()  # too far behind: the history no longer reaches back
        return pending

    async def next_update(self, since: int | None, timeout: float) -> FeedUpdate | None:
        update = self.changes_since(since)
        if update is not None:
            return update
        waiter = self._changed
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except TimeoutError:
            return None
        return self.changes_since(since)


def update_to_json(update: FeedUpdate | None, version: int) -> dict[str, Any]:
    """The feed's wire format (GET /v1/routes): a snapshot, the changes, or nothing new."""
    if update is None:
        return {"version": version, "changes": []}
    if isinstance(update, RouteTable):
        return {"version": update.version, "snapshot": update.to_json()}
    return {"version": update[-1].version, "changes": [c.to_json() for c in update]}


def update_from_json(data: Mapping[str, Any]) -> FeedUpdate | None:
    if "snapshot" in data:
        return RouteTable.from_json(data["snapshot"])
    changes = [RouteChanges.from_json(c) for c in data.get("changes", [])]
    return changes or None
