"""Contexts (`laneway.client.contexts`): the file, which one is selected, and their tokens."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from laneway.client import contexts
from laneway.client.contexts import Context, ContextError, Contexts, reach, select, selected


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LANEWAY_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LANEWAY_CONTEXT", raising=False)
    select(None)
    return tmp_path / "config"


def test_contexts_are_saved_private_and_read_back(config: Path) -> None:
    store = Contexts()
    store.add(Context("prod", url="https://laneway.example:8790", namespace="shop",
                      token="s3cret"))
    store.current = "prod"
    store.save()
    assert (config / "contexts.yaml").stat().st_mode & 0o777 == 0o600
    again = Contexts()
    assert again.current == "prod"
    assert again.get("prod").namespace == "shop"
    assert again.get("prod").token == "s3cret"


def test_which_context_is_selected() -> None:
    assert selected() is None  # nothing: the local environment
    store = Contexts()
    store.add(Context("a", url="http://127.0.0.1:1", token="t"))
    store.add(Context("b", url="http://127.0.0.1:2", token="t"))
    store.current = "a"
    store.save()
    assert selected() == "a"  # `laneway context use a`
    os.environ["LANEWAY_CONTEXT"] = "b"
    try:
        assert selected() == "b"  # the environment beats the file
        select("local")
        assert selected() is None  # `--context local` beats both
    finally:
        del os.environ["LANEWAY_CONTEXT"]
        select(None)


def test_bad_contexts_are_refused_with_what_to_do(config: Path) -> None:
    store = Contexts()
    with pytest.raises(ContextError, match="not a context name"):
        store.add(Context("has space", url="http://x", token="t"))
    with pytest.raises(ContextError, match=r"--url: 'localhost:8790' is not an http\(s\) URL"):
        store.add(Context("x", url="localhost:8790", token="t"))
    with pytest.raises(ContextError, match="give one of --token, --token-file"):
        store.add(Context("x", url="http://x", token="t", token_file="/f"))
    with pytest.raises(ContextError, match=r"no such context .*known: none yet"):
        store.get("nowhere")
    config.mkdir(parents=True, exist_ok=True)
    (config / "contexts.yaml").write_text("contexts: [1, 2\n")
    with pytest.raises(ContextError, match=r"contexts\.yaml: cannot read it"):
        Contexts()


def test_tokens_come_from_the_context_a_file_or_a_command(tmp_path: Path) -> None:
    store = Contexts()
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    store.add(Context("file", url="http://127.0.0.1:9/", token_file=str(token_file)))
    store.add(Context("cmd", url="http://127.0.0.1:9", token_command=(
        f"{sys.executable} -c \"print('from-a-command')\"")))
    store.add(Context("broken", url="http://127.0.0.1:9", token_command=(
        f"{sys.executable} -c \"import sys; sys.exit('no credentials')\"")))
    store.add(Context("none", url="http://127.0.0.1:9", namespace="shop"))
    store.save()
    reached = reach("file")
    assert (reached.url, reached.token) == ("http://127.0.0.1:9", "from-a-file")
    assert reached.headers == {contexts.NAMESPACE_HEADER: "default"}
    token_file.write_text("rotated\n")  # read at each use, as projected tokens rotate
    assert reach("file").token == "rotated"
    assert reach("cmd").token == "from-a-command"
    with pytest.raises(ContextError, match="exited 1: no credentials"):
        reach("broken")
    with pytest.raises(ContextError, match="has no token"):
        reach("none")


def test_a_port_forward_that_cannot_start_says_so(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    store = Contexts()
    store.add(Context("fwd", token="t"))  # no URL: kubectl port-forward
    store.save()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    if shutil.which("kubectl"):  # the real kubectl, with no cluster to forward to
        with pytest.raises(ContextError, match=r"context fwd: `kubectl port-forward -n "
                           r"laneway-system svc/laneway-operator :8790 .*did not forward"):
            reach("fwd")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(ContextError, match=r"cannot start kubectl .*give the operator's URL"):
        reach("fwd")


async def test_a_client_run_gets_the_operators_urls_unless_it_set_its_own(
        tmp_path: Path) -> None:
    """The operator knows the services by cluster DNS name; a URL the user set (a
    port-forward) says how to reach them from here, and wins."""
    from laneway.client.runner import execute

    report = {"id": "r1", "routing_key": "k3y0000000ab", "sandbox": "sb",
              "environment": {"LANEWAY_URL_WEB": "http://web.shop.svc:80",
                              "LANEWAY_URL_API": "http://api.shop.svc:80"}}
    show = [sys.executable, "-c", "import os; print(os.environ['LANEWAY_URL_WEB'], "
            "os.environ['LANEWAY_URL_API'], os.environ['LANEWAY_BAGGAGE'], "
            "os.environ['LANEWAY_SANDBOX'])"]
    env = {**os.environ, "LANEWAY_URL_WEB": "http://127.0.0.1:8080"}
    result = await execute(report, show, env=env, cwd=str(tmp_path))
    assert result["exit_code"] == 0
    assert result["output_tail"] == [
        "http://127.0.0.1:8080 http://api.shop.svc:80 laneway-key=k3y0000000ab sb"]
    assert result["junit"] is None
