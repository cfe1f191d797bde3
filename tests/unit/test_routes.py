"""The routing table's versioned changes and the decision."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laneway.core.feed import RoutesBroadcaster
from laneway.core.routes import (
    ForkRoute,
    RouteChanges,
    RouteTable,
    Upstream,
    apply_changes,
    decide,
    diff_tables,
)

_services = st.sampled_from(["web", "orders", "pricing", "currency"])
_keys = st.text(alphabet="abc123", min_size=2, max_size=3)


@st.composite
def tables(draw: st.DrawFn) -> RouteTable:
    table = RouteTable(version=draw(st.integers(0, 100)))
    for service in draw(st.sets(_services)):
        table.baseline[service] = Upstream("127.0.0.1", draw(st.integers(1000, 1010)))
    for service in draw(st.sets(_services)):
        table.forks[service] = {
            key: ForkRoute(service, f"sb-{key}",
                           Upstream("127.0.0.1", draw(st.integers(2000, 2003))),
                           draw(st.booleans()), draw(st.sampled_from(["", "crashed"])))
            for key in draw(st.sets(_keys, max_size=4))
        }
    table.captured = frozenset(draw(st.sets(_keys, max_size=2)))
    table.callers = draw(st.dictionaries(st.sampled_from(["10.0.0.1", "10.0.0.2"]), _services))
    table.names = draw(st.dictionaries(st.sampled_from(["sb-a", "sb-b", "team"]), _keys))
    return table


def _normal(table: RouteTable) -> tuple[object, ...]:
    return (table.baseline, {s: k for s, k in table.forks.items() if k}, table.captured,
            table.callers, table.names)


@given(tables(), tables())
def test_applying_the_diff_yields_the_new_table(old: RouteTable, new: RouteTable) -> None:
    new.version = old.version + 1
    changes = diff_tables(old, new)
    patched = copy.deepcopy(old)
    apply_changes(patched, RouteChanges.from_json(changes.to_json()))
    assert patched.version == new.version
    assert _normal(patched) == _normal(new)


@given(tables())
def test_table_json_round_trip(table: RouteTable) -> None:
    assert RouteTable.from_json(table.to_json()) == table


def test_changes_for_another_version_are_refused() -> None:
    table = RouteTable(version=3)
    changes = RouteChanges(since=1, version=2, baseline={}, upserts={}, removals=frozenset())
    with pytest.raises(ValueError, match="since v1 do not apply to table v3"):
        apply_changes(table, changes)


@given(st.dictionaries(_keys, st.booleans(), max_size=50), st.one_of(st.none(), _keys))
def test_decision_order(entries: dict[str, bool], key: str | None) -> None:
    routes = {k: ForkRoute("pricing", f"sb-{k}", Upstream("127.0.0.1", 1) if ready else None,
                           ready, "" if ready else "crashed") for k, ready in entries.items()}
    route = decide(routes, key)
    if key is None or key not in entries:
        assert route is None  # baseline
    else:
        assert route is not None
        assert route.sandbox == f"sb-{key}"
        assert route.ready == entries[key]  # a broken fork is never the baseline


async def test_broadcaster_serves_changes_then_snapshot_when_behind() -> None:
    feed = RoutesBroadcaster(history=2)
    first = RouteTable(baseline={"web": Upstream("127.0.0.1", 1)})
    feed.publish(first)
    snapshot = feed.changes_since(None)
    assert isinstance(snapshot, RouteTable)
    assert snapshot.version == 1
    assert feed.changes_since(1) is None
    assert feed.publish(RouteTable(baseline={"web": Upstream("127.0.0.1", 1)})) is None
    for port in (2, 3, 4):
        feed.publish(RouteTable(baseline={"web": Upstream("127.0.0.1", port)}))
    recent = feed.changes_since(3)
    assert isinstance(recent, list)
    assert [c.version for c in recent] == [4]
    assert isinstance(feed.changes_since(1), RouteTable)  # history no longer reaches back
    assert await feed.next_update(4, timeout=0.01) is None
