"""Reconcile planning and route building, as pure functions over plain data."""

from __future__ import annotations

from dataclasses import replace

from laneway.core.plan import (
    DesiredSandbox,
    RouteGroupEntry,
    baseline_units,
    build_routes,
    desired_baseline,
    desired_forks,
    plan_actions,
)
from laneway.core.routes import RouteTable
from laneway.core.runtime import Phase, UnitState
from laneway.core.spec import parse_project, parse_route_group, parse_sandbox

PROJECT = parse_project({
    "name": "shop",
    "services": {
        "currency": {"run": "python c.py", "port": 19404},
        "pricing": {"run": "python p.py", "port": 19403, "depends_on": ["currency"],
                    "env": {"CURRENCY_URL": "${services.currency.url}"}},
        "web": {"run": "python w.py", "port": 19401, "depends_on": ["pricing"]},
    },
})


def sandbox(name: str, *forks: dict[str, object], labels: dict[str, str] | None = None,
            created: float = 0.0) -> DesiredSandbox:
    spec = parse_sandbox({"name": name, "forks": list(forks), "labels": labels or {}})
    return DesiredSandbox(spec, f"key{name}".ljust(12, "0")[:12], created)


def state(unit: str, phase: Phase, port: int = 30000, message: str = "") -> UnitState:
    service, _, rest = unit.partition("@")
    return UnitState(unit, service.partition("~")[0], rest.partition("#")[0] or None, phase,
                     port=port, message=message)


def baseline_ready() -> dict[str, UnitState]:
    return {name: state(name, "ready", 20000 + i) for i, name in enumerate(PROJECT.services)}


def test_baseline_starts_in_dependency_order() -> None:
    plan = plan_actions(PROJECT, [], {})
    assert [s.unit for s in plan.start] == ["currency"]
    plan = plan_actions(PROJECT, [], {"currency": state("currency", "starting")})
    assert plan.start == []
    plan = plan_actions(PROJECT, [], {"currency": state("currency", "ready")})
    assert [s.unit for s in plan.start] == ["pricing"]


def test_forks_get_interpolated_env_and_laneway_variables() -> None:
    sb = sandbox("sb-a", {"service": "pricing", "env": {"DISCOUNT": "20"}})
    (spec,) = desired_forks(PROJECT, sb).values()
    env = dict(spec.env)
    assert env["CURRENCY_URL"] == "http://127.0.0.1:19404"
    assert env["DISCOUNT"] == "20"
    assert env["LANEWAY_SANDBOX"] == "sb-a"
    assert env["LANEWAY_ROUTING_KEY"] == sb.routing_key
    assert env["LANEWAY_SERVICE"] == "pricing"
    assert spec.unit.startswith("pricing@sb-a#")


def test_fork_overrides_cwd_health_startup_timeout_and_shell() -> None:
    from pathlib import Path

    from laneway.core.spec import with_base_dir

    project = with_base_dir(PROJECT, Path("/work/app"))
    sb = sandbox("sb-a", {"service": "pricing", "cwd": "../other-checkout/pricing",
                          "health": "/ready", "startup_timeout": "90s", "shell": True,
                          "run": "python p.py --v2"})
    (spec,) = desired_forks(project, sb).values()
    assert spec.cwd == "/work/other-checkout/pricing"  # relative to the project's folder
    assert spec.health == "/ready"
    assert spec.startup_timeout == 90.0
    assert spec.argv == ("/bin/sh", "-c", "python p.py --v2")
    same = desired_forks(project, sandbox("sb-a", {"service": "pricing", "startup_timeout": 60,
                                                   "cwd": "/abs", "run": "python p.py"}))
    (other,) = same.values()
    assert other.cwd == "/abs"
    assert other.unit != spec.unit  # another definition, another unit
    (plain,) = desired_forks(project, sandbox("sb-a", {"service": "pricing"})).values()
    assert plain.cwd == "/work/app" and plain.health == "tcp"  # noqa: PT018


def test_a_fork_at_an_address_is_watched_not_started_and_never_blocks_the_switch() -> None:
    sb = sandbox("sb-a", {"service": "pricing", "address": "localhost:9000"},
                 {"service": "web"})
    specs = desired_forks(PROJECT, sb)
    watched = next(s for s in specs.values() if s.service == "pricing")
    assert watched.address == "127.0.0.1:9000"
    assert watched.argv == ()
    actual = baseline_ready()
    for unit, spec in specs.items():
        actual[unit] = state(unit, "unhealthy" if spec.address else "ready",
                             9000 if spec.address else 31000,
                             "nothing healthy at 127.0.0.1:9000 (refused)")
    table, statuses, _ = build_routes(1, PROJECT, [sb], [], actual)
    # The other fork serves; the address's key gets a 503 that says why, never the baseline.
    assert table.forks["web"][sb.routing_key].ready
    down = table.forks["pricing"][sb.routing_key]
    assert not down.ready
    assert "nothing healthy at 127.0.0.1:9000" in down.reason
    assert not statuses["sb-a"].ready
    assert "nothing healthy" in statuses["sb-a"].message
    # An update whose new forks are ready switches even while the address is down: the
    # developer's process must not hold back the rest (nor keep the old version serving).
    old = sandbox("sb-a", {"service": "web", "env": {"V": "1"}})
    old_unit = next(iter(desired_forks(PROJECT, old)))
    before = {**baseline_ready(), old_unit: state(old_unit, "ready", 32000)}
    previous, _, _ = build_routes(1, PROJECT, [old], [], before)
    actual[old_unit] = before[old_unit]
    table, _, _ = build_routes(2, PROJECT, [sb], [], actual, previous=previous)
    assert table.forks["web"][sb.routing_key].fork != old_unit
    assert table.forks["web"][sb.routing_key].ready
    del actual[old_unit]
    actual[watched.unit] = state(watched.unit, "ready", 9000)
    table, statuses, _ = build_routes(2, PROJECT, [sb], [], actual)
    assert table.forks["pricing"][sb.routing_key].upstream.port == 9000  # type: ignore[union-attr]
    assert statuses["sb-a"].ready


def test_fork_addresses_are_checked() -> None:
    import pytest

    from laneway.core.spec import SpecError

    for address, says in (("example.com:80", "must be on this machine"),
                          ("127.0.0.1:0", "port from 1 to 65535"),
                          ("nope", "is not HOST:PORT")):
        with pytest.raises(SpecError, match=says):
            parse_sandbox({"name": "s", "forks": [{"service": "web", "address": address}]})
    with pytest.raises(SpecError, match="leave out `run` and `shell`"):
        parse_sandbox({"name": "s", "forks": [{"service": "web", "address": "9000",
                                               "run": "python x.py"}]})


def test_fork_unit_changes_only_when_the_fork_changes() -> None:
    one = desired_forks(PROJECT, sandbox("s", {"service": "pricing"}, {"service": "web"}))
    two = desired_forks(PROJECT, sandbox("s", {"service": "pricing", "env": {"X": "1"}},
                                         {"service": "web"}))
    assert [u for u in one if u.startswith("web")] == [u for u in two if u.startswith("web")]
    assert [u for u in one if u.startswith("pricing")] != \
        [u for u in two if u.startswith("pricing")]


def test_new_and_deleted_sandboxes() -> None:
    actual = baseline_ready()
    sb = sandbox("sb-a", {"service": "pricing"})
    plan = plan_actions(PROJECT, [sb], actual)
    (unit,) = [s.unit for s in plan.start]
    assert plan.stop == []
    actual[unit] = state(unit, "ready", 31000)
    assert plan_actions(PROJECT, [sb], actual).empty
    plan = plan_actions(PROJECT, [], actual)
    assert plan.stop == [unit]


def serving_table(sb: DesiredSandbox, actual: dict[str, UnitState]) -> RouteTable:
    """The routes the routers hold once `sb` is applied and every fork of it is ready."""
    for unit in desired_forks(PROJECT, sb):
        actual.setdefault(unit, state(unit, "ready", 31000 + len(actual)))
    table, statuses, _ = build_routes(1, PROJECT, [sb], [], actual)
    assert statuses[sb.spec.name].ready
    return table


def test_update_is_made_before_the_old_fork_is_broken() -> None:
    actual = baseline_ready()
    old = sandbox("sb-a", {"service": "pricing"})
    (old_unit,) = desired_forks(PROJECT, old)
    previous = serving_table(old, actual)
    new = sandbox("sb-a", {"service": "pricing", "env": {"V": "2"}})
    (new_unit,) = desired_forks(PROJECT, new)

    plan = plan_actions(PROJECT, [new], actual, previous=previous)
    assert [s.unit for s in plan.start] == [new_unit]
    assert plan.stop == []  # the old fork keeps serving while the new one starts

    actual[new_unit] = state(new_unit, "starting", 32000)
    assert plan_actions(PROJECT, [new], actual, previous=previous).stop == []
    table, statuses, _ = build_routes(2, PROJECT, [new], [], actual, previous=previous)
    route = table.forks["pricing"][new.routing_key]
    assert route.ready
    assert route.fork == old_unit
    assert not statuses["sb-a"].ready
    assert "updating" in statuses["sb-a"].message

    actual[new_unit] = state(new_unit, "ready", 32000)
    table, statuses, _ = build_routes(3, PROJECT, [new], [], actual, previous=table)
    route = table.forks["pricing"][new.routing_key]
    assert route.upstream is not None
    assert route.upstream.port == 32000
    assert statuses["sb-a"].ready
    # Once the routes name only the new fork, the old one goes (the data plane drains it).
    assert plan_actions(PROJECT, [new], actual, previous=table).stop == [old_unit]


def test_two_forks_switch_together() -> None:
    actual = baseline_ready()
    old = sandbox("sb-a", {"service": "pricing"}, {"service": "web"})
    previous = serving_table(old, actual)
    old_units = set(desired_forks(PROJECT, old))
    new = sandbox("sb-a", {"service": "pricing", "env": {"V": "2"}},
                  {"service": "web", "env": {"V": "2"}})
    new_pricing, new_web = desired_forks(PROJECT, new)
    actual[new_pricing] = state(new_pricing, "ready", 32000)
    actual[new_web] = state(new_web, "starting", 32001)
    table, statuses, _ = build_routes(2, PROJECT, [new], [], actual, previous=previous)
    served = {table.forks[s][new.routing_key].fork for s in ("pricing", "web")}
    assert served == old_units  # one new fork ready is not enough: no mixed versions
    assert not statuses["sb-a"].ready
    assert plan_actions(PROJECT, [new], actual, previous=table).stop == []

    actual[new_web] = state(new_web, "ready", 32001)
    table, statuses, _ = build_routes(3, PROJECT, [new], [], actual, previous=table)
    served = {table.forks[s][new.routing_key].fork for s in ("pricing", "web")}
    assert served == {new_pricing, new_web}
    assert statuses["sb-a"].ready
    assert sorted(plan_actions(PROJECT, [new], actual, previous=table).stop) == \
        sorted(old_units)


def test_an_old_fork_that_crashes_during_an_update_is_a_503_not_the_baseline() -> None:
    actual = baseline_ready()
    old = sandbox("sb-a", {"service": "pricing"}, {"service": "web"})
    previous = serving_table(old, actual)
    old_pricing, old_web = desired_forks(PROJECT, old)
    new = sandbox("sb-a", {"service": "pricing", "env": {"V": "2"}},
                  {"service": "web", "env": {"V": "2"}})
    for unit in desired_forks(PROJECT, new):
        actual[unit] = state(unit, "starting", 33000)
    actual[old_web] = state(old_web, "crashed", message="killed by signal 9")
    for version in (2, 3):  # and again, from the table that already says 503
        previous, statuses, _ = build_routes(version, PROJECT, [new], [], actual,
                                             previous=previous)
        assert "updating" in statuses["sb-a"].message
        web = previous.forks["web"][new.routing_key]
        assert not web.ready
        assert web.fork == old_web
        assert "killed by signal 9" in web.reason
        assert previous.forks["pricing"][new.routing_key].fork == old_pricing
        assert old_web not in plan_actions(PROJECT, [new], actual, previous=previous).stop


def test_failed_update_leaves_the_old_version_serving() -> None:
    actual = baseline_ready()
    old = sandbox("sb-a", {"service": "pricing"})
    (old_unit,) = desired_forks(PROJECT, old)
    previous = serving_table(old, actual)
    new = sandbox("sb-a", {"service": "pricing", "run": "python broken.py"})
    (new_unit,) = desired_forks(PROJECT, new)
    actual[new_unit] = state(new_unit, "crashed", message="exited with code 1")
    table, statuses, _ = build_routes(2, PROJECT, [new], [], actual, previous=previous)
    route = table.forks["pricing"][new.routing_key]
    assert route.ready
    assert route.fork == old_unit
    status = statuses["sb-a"]
    assert not status.ready
    assert status.failed
    assert "update failed" in status.message
    assert "exited with code 1" in status.message
    assert "previous version" in status.message
    assert plan_actions(PROJECT, [new], actual, previous=table).stop == []


def test_a_new_sandbox_with_a_failing_fork_is_a_503() -> None:
    actual = baseline_ready()
    sb = sandbox("sb-a", {"service": "pricing", "run": "python broken.py"})
    (unit,) = desired_forks(PROJECT, sb)
    actual[unit] = state(unit, "crashed", message="exited with code 1")
    table, statuses, _ = build_routes(1, PROJECT, [sb], [], actual)
    route = table.forks["pricing"][sb.routing_key]
    assert not route.ready
    assert "exited with code 1" in route.reason
    assert statuses["sb-a"].failed


def test_a_re_created_sandbox_never_reaches_the_deleted_ones_processes() -> None:
    actual = baseline_ready()
    first = DesiredSandbox(parse_sandbox({"name": "sb", "forks": [{"service": "pricing"}]}),
                           "keyfirst0000", 0, uid="aaaaaaaaaaaa")
    (first_unit,) = desired_forks(PROJECT, first)
    previous = serving_table(first, actual)
    again = DesiredSandbox(first.spec, "keyagain0000", 0, uid="bbbbbbbbbbbb")
    (again_unit,) = desired_forks(PROJECT, again)
    assert again_unit != first_unit  # same spec, another incarnation: another process
    table, statuses, _ = build_routes(2, PROJECT, [again], [], actual, previous=previous)
    assert "keyfirst0000" not in table.forks["pricing"]
    assert not table.forks["pricing"]["keyagain0000"].ready
    assert not statuses["sb"].ready
    assert plan_actions(PROJECT, [again], actual, previous=table).stop == [first_unit]


def test_a_sandbox_that_no_longer_fits_the_baseline_is_failed_not_fatal() -> None:
    actual = baseline_ready()
    spec = parse_sandbox({"name": "sb", "forks": [{"service": "pricing"},
                                                  {"service": "gone"}]})
    sb = DesiredSandbox(spec, "keyofsb00000", 0, problem="it forks 'gone', no longer a "
                        "service of laneway.yaml; re-apply it without that fork")
    assert desired_forks(PROJECT, sb) == {}
    table, statuses, _ = build_routes(1, PROJECT, [sb], [], actual)
    assert not table.forks["pricing"]["keyofsb00000"].ready  # a 503, never the baseline
    assert "gone" not in table.forks
    assert statuses["sb"].failed
    assert "'gone'" in statuses["sb"].message


def test_crashed_and_starting_forks_route_to_503_with_reason() -> None:
    actual = baseline_ready()
    sb = sandbox("sb-a", {"service": "pricing"}, {"service": "web"})
    units = list(desired_forks(PROJECT, sb))
    actual[units[0]] = state(units[0], "crashed", message="exited with code 3")
    table, statuses, _ = build_routes(1, PROJECT, [sb], [], actual)
    pricing = table.forks["pricing"][sb.routing_key]
    web = table.forks["web"][sb.routing_key]
    assert pricing.reason == "fork pricing@sb-a is crashed: exited with code 3"
    assert "not started" in web.reason
    assert "currency" in table.baseline
    assert table.forks["currency"] == {}

    # Restarted after the crash: still says why it went down, not merely "starting".
    actual[units[0]] = state(units[0], "starting", message=(
        "waiting for the health check; last time: exited with code 3"))
    actual[units[0]].restarts = 2
    table, _, _ = build_routes(2, PROJECT, [sb], [], actual)
    assert table.forks["pricing"][sb.routing_key].reason == (
        "fork pricing@sb-a is restarting (2), waiting for the health check; last time: "
        "exited with code 3")
    assert statuses["sb-a"].forks[0]["phase"] == "crashed"


def test_route_groups_span_matching_sandboxes_and_report_conflicts() -> None:
    actual = baseline_ready()
    a = sandbox("sb-a", {"service": "pricing"}, labels={"feature": "promo"}, created=1)
    b = sandbox("sb-b", {"service": "web"}, labels={"feature": "promo-2"}, created=2)
    c = sandbox("sb-c", {"service": "web"}, labels={"feature": "other"}, created=3)
    for sb in (a, b, c):
        for unit in desired_forks(PROJECT, sb):
            actual[unit] = state(unit, "ready", 31000 + len(actual))
    group = RouteGroupEntry(parse_route_group({"name": "g", "match": {"labels": {
        "feature": "promo*"}}}), "groupkey0000")
    table, _, groups = build_routes(1, PROJECT, [a, b, c], [group], actual)
    assert table.forks["pricing"]["groupkey0000"].sandbox == "sb-a"
    assert table.forks["web"]["groupkey0000"].sandbox == "sb-b"
    assert groups["g"].sandboxes == ["sb-a", "sb-b"]
    assert groups["g"].ready
    # The preview edge finds sandboxes and groups by name.
    assert table.names == {"sb-a": a.routing_key, "sb-b": b.routing_key,
                           "sb-c": c.routing_key, "g": "groupkey0000"}

    wide = RouteGroupEntry(parse_route_group({"name": "w", "match": {"labels": {
        "feature": "*"}}}), "widekey00000")
    table, _, groups = build_routes(2, PROJECT, [a, b, c], [wide], actual)
    assert groups["w"].conflicts == [{"service": "web", "sandboxes": ["sb-b", "sb-c"]}]
    assert not groups["w"].ready
    conflicted = table.forks["web"]["widekey00000"]
    assert not conflicted.ready
    assert "sb-b, sb-c" in conflicted.reason
    assert table.forks["pricing"]["widekey00000"].ready


def test_route_lookup_does_not_depend_on_sandbox_count() -> None:
    actual = baseline_ready()
    many = [sandbox(f"sb-{i}", {"service": "pricing"}) for i in range(300)]
    for sb in many:
        for unit in desired_forks(PROJECT, sb):
            actual[unit] = state(unit, "ready", 40000)
    table, statuses, _ = build_routes(1, PROJECT, many, [], actual)
    assert len(table.forks["pricing"]) == len({sb.routing_key for sb in many})
    assert all(s.ready for s in statuses.values())


def test_a_baseline_process_laneway_yaml_changed_is_replaced_make_before_break() -> None:
    actual = baseline_ready()
    desired = desired_baseline(PROJECT)
    assert plan_actions(PROJECT, [], actual, running=desired).empty
    changed = dict(desired)
    changed["pricing"] = replace(desired["pricing"], argv=("python", "old-pricing.py"))
    plan = plan_actions(PROJECT, [], actual, running=changed)
    # A new revision starts beside the old one, which keeps serving meanwhile.
    assert [s.unit for s in plan.start] == ["pricing~1"]
    assert plan.start[0].argv == desired["pricing"].argv
    assert plan.stop == []
    actual["pricing~1"] = state("pricing~1", "starting", 31000)
    running = {**changed, "pricing~1": plan.start[0]}
    assert plan_actions(PROJECT, [], actual, running=running).empty
    table, _, _ = build_routes(1, PROJECT, [], [], actual,
                               baseline=baseline_units(PROJECT, actual, running))
    assert table.baseline["pricing"].port == actual["pricing"].port
    # Ready: the routes name the new one, and the old one is no longer wanted.
    actual["pricing~1"] = state("pricing~1", "ready", 31000)
    units = baseline_units(PROJECT, actual, running)
    table, _, _ = build_routes(2, PROJECT, [], [], actual, baseline=units)
    assert table.baseline["pricing"].port == 31000
    assert plan_actions(PROJECT, [], actual, running=running).stop == ["pricing"]


def test_a_new_baseline_process_that_fails_never_takes_the_traffic() -> None:
    actual = baseline_ready()
    running = dict(desired_baseline(PROJECT))
    plan = plan_actions(PROJECT, [], actual, running=running, retiring={"pricing"})
    assert [s.unit for s in plan.start] == ["pricing~1"]
    actual["pricing~1"] = state("pricing~1", "crashed", 31000, "exited with code 1")
    running["pricing~1"] = plan.start[0]
    units = baseline_units(PROJECT, actual, running, {"pricing"})
    assert units["pricing"].serving == "pricing"
    assert units["pricing"].replacing
    table, _, _ = build_routes(1, PROJECT, [], [], actual, baseline=units)
    assert table.baseline["pricing"].port == actual["pricing"].port
    assert plan_actions(PROJECT, [], actual, running=running, retiring={"pricing"}).empty


def test_a_restart_of_a_crashed_baseline_process_does_not_wait_for_it() -> None:
    actual = baseline_ready()
    actual["pricing"] = state("pricing", "crashed")
    running = dict(desired_baseline(PROJECT))
    plan = plan_actions(PROJECT, [], actual, running=running, retiring={"pricing"})
    # Nothing to keep serving: the new one starts, the crashed one stops at once.
    assert [s.unit for s in plan.start] == ["pricing~1"]
    assert plan.stop == ["pricing"]


def test_a_service_laneway_yaml_no_longer_has_is_stopped_and_unrouted() -> None:
    actual = {**baseline_ready(), "legacy": state("legacy", "ready", 29999)}
    assert plan_actions(PROJECT, [], actual).stop == ["legacy"]
    table, _, _ = build_routes(1, PROJECT, [], [], actual)
    assert "legacy" not in table.baseline


def test_a_dependency_being_replaced_still_counts_as_ready() -> None:
    actual = {"currency": state("currency", "ready"),
              "currency~1": state("currency~1", "starting")}
    plan = plan_actions(PROJECT, [], actual)
    assert [s.unit for s in plan.start] == ["pricing"]
