"""The test API server's own semantics, where they are ours and not KMock's: label selectors
and the two merge patches, as the Kubernetes API server has them."""

from __future__ import annotations

from tests.k8s.apiserver import merge_patch, selector_matches, strategic_merge


def test_label_selectors() -> None:
    labels = {"app": "web", "laneway.dev/sandbox": "sb-a"}
    assert selector_matches("", labels)
    assert selector_matches("app=web", labels)
    assert selector_matches("app==web,laneway.dev/sandbox", labels)
    assert not selector_matches("!laneway.dev/sandbox", labels)
    assert selector_matches("!laneway.dev/router", labels)
    assert not selector_matches("app!=web", labels)
    assert not selector_matches("laneway.dev/sandbox=sb-b", labels)


def test_merge_patch_replaces_lists_and_null_removes() -> None:
    old = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"env": [{"name": "A"}]}}
    new = merge_patch(old, {"metadata": {"labels": {"b": None}}, "spec": {"env": [{"name": "B"}]}})
    assert new == {"metadata": {"labels": {"a": "1"}}, "spec": {"env": [{"name": "B"}]}}


def test_strategic_merge_merges_named_items() -> None:
    old = {"containers": [{"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}]},
                          {"name": "metrics", "image": "m"}]}
    new = strategic_merge(old, {"containers": [
        {"name": "app", "env": [{"name": "B", "value": "2"}]}, {"name": "router", "image": "r"}]})
    assert [c["name"] for c in new["containers"]] == ["app", "metrics", "router"]
    assert new["containers"][0]["image"] == "a:1"
    assert new["containers"][0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
