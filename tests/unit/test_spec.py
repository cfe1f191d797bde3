"""Specs: every error names its field path; forks inherit and override the baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from laneway.core.duration import format_duration, parse_duration
from laneway.core.keys import is_routing_key, new_routing_key
from laneway.core.plan import DesiredSandbox, desired_baseline, desired_forks
from laneway.core.spec import (
    SpecError,
    check_sandbox_against_project,
    interpolate,
    load_project,
    parse_project,
    parse_route_group,
    parse_sandbox,
)

PROJECT = {
    "name": "shop",
    "services": {
        "currency": {"run": ["python", "c.py"], "port": 19404, "health": "/healthz"},
        "pricing": {"run": "python p.py --flag 'a b'", "port": 19403,
                    "env": {"CURRENCY_URL": "${services.currency.url}", "N": 3, "DEBUG": True},
                    "depends_on": ["currency"]},
    },
}


def _issues(exc: pytest.ExceptionInfo[SpecError]) -> dict[str, str]:
    return dict(exc.value.issues)


def test_project_parses_and_splits_commands_like_a_shell() -> None:
    project = parse_project(PROJECT)
    pricing = project.services["pricing"]
    assert pricing.run == ["python", "p.py", "--flag", "a b"]
    assert pricing.env == {"CURRENCY_URL": "${services.currency.url}", "N": "3",
                           "DEBUG": "true"}
    assert pricing.health == "tcp" or pricing.health.startswith("/")
    assert project.start_order() == ["currency", "pricing"]
    assert interpolate(pricing.env["CURRENCY_URL"], project) == "http://127.0.0.1:19404"


def test_shell_true_runs_the_line_through_sh() -> None:
    project = parse_project({"name": "x", "services": {
        "a": {"run": "echo $HOME | cat", "shell": True, "port": 1}}})
    assert project.services["a"].argv() == ["/bin/sh", "-c", "echo $HOME | cat"]


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        ({"port": 70000}, "services.pricing.port", "less than or equal to 65535"),
        ({"port": 19404}, "services.pricing.port", "already used by service 'currency'"),
        ({"depends_on": ["nope"]}, "services.pricing.depends_on[0]", "unknown service 'nope'"),
        ({"health": "healthz"}, "services.pricing.health", "starting with '/'"),
        ({"health": "healthz"}, "services.pricing.health", "'grpc:<service>'"),
        ({"health": "GRPC"}, "services.pricing.health", "'tcp', an HTTP path"),
        ({"health": "grpc:"}, "services.pricing.health", "after 'grpc:' comes the gRPC service"),
        ({"health": "grpc:shop Pricing"}, "services.pricing.health", "e.g. grpc:shop.Pricing"),
        ({"protocol": "grcp"}, "services.pricing.protocol",
         "must be http (HTTP/1.1), h2c (HTTP/2 with prior knowledge) or grpc, got 'grcp'"),
        ({"protocol": "HTTP"}, "services.pricing.protocol", "got 'HTTP'"),
        ({"protocol": 2}, "services.pricing.protocol", "got 2"),
        ({"run": []}, "services.pricing.run", "must name a command"),
        ({"run": "python 'unclosed"}, "services.pricing.run", "cannot split"),
        ({"startup_timeout": "soon"}, "services.pricing.startup_timeout", "not a duration"),
        ({"colour": "red"}, "services.pricing.colour", "unknown field; the fields here are: "),
        ({"helth": "/x"}, "services.pricing.helth", "unknown field; did you mean 'health'?"),
        ({"dependson": []}, "services.pricing.dependson", "did you mean 'depends_on'?"),
        ({"env": {"U": "${services.ghost.url}"}}, "services.pricing.env.U", "unknown service"),
    ],
)
def test_project_errors_name_the_field(change: dict[str, object], path: str,
                                       fragment: str) -> None:
    data = {**PROJECT, "services": {**PROJECT["services"],  # type: ignore[dict-item]
                                    "pricing": {**PROJECT["services"]["pricing"],  # type: ignore[index]
                                                **change}}}
    with pytest.raises(SpecError) as exc:
        parse_project(data)
    issues = _issues(exc)
    assert path in issues, issues
    assert fragment in issues[path]


def test_dependency_cycles_are_reported() -> None:
    with pytest.raises(SpecError, match="cycle: a -> b -> a"):
        parse_project({"name": "x", "services": {
            "a": {"run": "a", "port": 1, "depends_on": ["b"]},
            "b": {"run": "b", "port": 2, "depends_on": ["a"]}}})


def test_load_project_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "laneway.yaml"
    path.write_text("name: x\nservices:\n  a: {run: [x, port: 1\n")
    with pytest.raises(SpecError) as exc:
        load_project(path)
    assert str(path) in exc.value.render()
    assert "invalid YAML: line 4, column 1" in exc.value.render()
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_project(path)


def test_services_run_beside_laneway_yaml(tmp_path: Path) -> None:
    path = tmp_path / "laneway.yaml"
    path.write_text("name: x\nservices:\n  a: {run: x, port: 1}\n  b: {run: y, port: 2, "
                    "cwd: sub}\n")
    project = load_project(path)
    assert project.services["a"].cwd == str(tmp_path)
    assert project.services["b"].cwd == str(tmp_path / "sub")


def test_sandbox_spec_errors() -> None:
    with pytest.raises(SpecError) as exc:
        parse_sandbox({"name": "Not_A_Label", "ttl": "3 weeks",
                       "forks": [{"service": "a", "color": 1}]})
    issues = _issues(exc)
    assert "DNS label" in issues["name"]
    assert "not a duration" in issues["ttl"]
    assert "forks[0].color" in issues
    with pytest.raises(SpecError, match="at most 40"):
        parse_sandbox({"name": "a" * 41})
    with pytest.raises(SpecError) as exc:
        parse_sandbox({"name": "ok", "forks": [{"service": "a"}, {"service": "a"}]})
    assert "already forked by forks[0]" in _issues(exc)["forks[1].service"]


def test_sandbox_against_project() -> None:
    project = parse_project(PROJECT)
    spec = parse_sandbox({"name": "sb", "forks": [{"service": "pricing"},
                                                  {"service": "ghost"}]})
    with pytest.raises(SpecError) as exc:
        check_sandbox_against_project(spec, project)
    assert "unknown service 'ghost'" in _issues(exc)["forks[1].service"]
    assert "currency, pricing" in _issues(exc)["forks[1].service"]


def test_fork_inherits_and_env_merges() -> None:
    project = parse_project(PROJECT)
    spec = parse_sandbox({"name": "sb", "forks": [
        {"service": "pricing", "env": {"N": "4", "NEW": "1"}}]})
    resolved = spec.forks[0].resolve(project.services["pricing"])
    assert resolved.run == project.services["pricing"].run
    assert resolved.env["N"] == "4"
    assert resolved.env["NEW"] == "1"
    assert resolved.env["CURRENCY_URL"] == "${services.currency.url}"
    other = parse_sandbox({"name": "sb", "forks": [{"service": "pricing",
                                                    "run": "python p2.py"}]})
    assert other.forks[0].resolve(project.services["pricing"]).run == ["python", "p2.py"]


def test_route_group_needs_a_label_match() -> None:
    with pytest.raises(SpecError) as exc:
        parse_route_group({"name": "g", "match": {"labels": {}}})
    assert "match.labels" in _issues(exc)
    group = parse_route_group({"name": "g", "match": {"labels": {"feature": "promo-*"}}})
    assert group.match.labels == {"feature": "promo-*"}


@pytest.mark.parametrize(("text", "seconds"), [("45s", 45), ("30m", 1800), ("2h", 7200),
                                               ("1d", 86400), ("1h30m", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 parsecs", "0s", "-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than zero"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(59) == "59s"
    assert format_duration(3600 + 120) == "1h02m"
    assert format_duration(86400 * 2) == "2d"


def test_routing_keys_are_random_and_well_formed() -> None:
    keys = {new_routing_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(is_routing_key(k) for k in keys)


def test_duplicate_names_in_yaml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "laneway.yaml"
    path.write_text("name: x\nservices:\n  a: {run: x, port: 1}\n  a: {run: y, port: 2}\n")
    with pytest.raises(SpecError, match="line 4, column 3: duplicate key 'a'"):
        load_project(path)


@pytest.mark.parametrize("protocol", ["http", "h2c", "grpc"])
@pytest.mark.parametrize("health", ["tcp", "/healthz", "grpc", "grpc:shop.Pricing",
                                    "grpc:grpc.health.v1.Health", "grpc:my_svc-2"])
def test_protocol_and_health_forms_are_accepted(protocol: str, health: str) -> None:
    svc = parse_project({"name": "x", "services": {
        "a": {"run": "x", "port": 1, "protocol": protocol, "health": health}}}).services["a"]
    assert (svc.protocol, svc.health) == (protocol, health)


def test_protocol_defaults_to_http_and_forks_keep_the_services_protocol_and_health() -> None:
    assert parse_project(PROJECT).services["pricing"].protocol == "http"
    project = parse_project({"name": "shop", "services": {
        "pricing": {"run": "python p.py", "port": 19403, "protocol": "grpc",
                    "health": "grpc:shop.Pricing"}}})
    # A fork is the same service behind the same router: it cannot change how it is reached.
    with pytest.raises(SpecError) as exc:
        parse_sandbox({"name": "sb", "forks": [{"service": "pricing", "protocol": "http"}]})
    assert "unknown field" in _issues(exc)["forks[0].protocol"]
    spec = parse_sandbox({"name": "sb", "forks": [{"service": "pricing", "run": "python q.py"}]})
    resolved = spec.forks[0].resolve(project.services["pricing"])
    assert (resolved.protocol, resolved.health) == ("grpc", "grpc:shop.Pricing")
    # The health check the supervisor runs, for the baseline process and for the fork's.
    assert desired_baseline(project)["pricing"].health == "grpc:shop.Pricing"
    (fork,) = desired_forks(project, DesiredSandbox(spec, "k" * 12, 0.0)).values()
    assert fork.unit.startswith("pricing@sb#")
    assert fork.health == "grpc:shop.Pricing"


def test_the_diff_noise_rule_is_set_in_laneway_yaml_and_checked() -> None:
    assert parse_project(PROJECT).diff.relative == 0.2
    tuned = parse_project({**PROJECT, "diff": {"relative": 0.5, "absolute": 0.01}})
    assert (tuned.diff.relative, tuned.diff.absolute) == (0.5, 0.01)
    with pytest.raises(SpecError) as exc:
        parse_project({**PROJECT, "diff": {"relative": 1.5, "absolut": 0}})
    issues = _issues(exc)
    assert "diff.relative" in issues, issues
    assert "diff.absolut" in issues, issues


@pytest.mark.parametrize(("data", "path", "says"), [
    ({"name": "s", "ttll": "1h"}, "ttll", "did you mean 'ttl'?"),
    ({"name": "s", "forks": [{"service": "web", "helth": "/x"}]}, "forks[0].helth",
     "did you mean 'health'?"),
    ({"name": "s", "forks": [{"service": "web", "adress": "9000"}]}, "forks[0].adress",
     "did you mean 'address'?"),
    ({"name": "s", "resources": [{"name": "db", "plugin": "sqlite", "parms": {}}]},
     "resources[0].parms", "did you mean 'params'?"),
])
def test_unknown_fields_suggest_the_nearest_valid_one(data: dict[str, object], path: str,
                                                      says: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_sandbox(data)
    assert says in _issues(exc)[path]
