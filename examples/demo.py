"""`make demo`: the shop's baseline, a sandbox that forks pricing, one request sent twice, and
the shop's tests run against the sandbox (whose report names a propagation leak in orders);
then an experiment that compares two approaches to the promo, tests and latency under load.
The chain is web → orders → pricing → currency over HTTP, except orders → pricing, a gRPC call:
the keyed request crosses HTTP → gRPC → HTTP with the fork on the gRPC side.

Everything goes through the `laneway` command as a user would type it; requests carry a
`traceparent` so that the path each one took can be read back from the recorded hops.
Set DEMO_KEEP=1 to leave the environment running and try it by hand.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from rich.columns import Columns
from rich.console import Console
from rich.panel import Panel

SHOP = Path(__file__).resolve().parent / "shop"
LANEWAY = str(Path(sys.executable).parent / "laneway")
WEB = "http://127.0.0.1:19401"
GRPC_CODES = {code.value[0]: code.name for code in grpc.StatusCode}  # 0: "OK", 14: "UNAVAILABLE"
console = Console(highlight=False)


def laneway(*args: str, capture: bool = False) -> str:
    result = subprocess.run([LANEWAY, *args], cwd=SHOP, text=True, check=False,
                            capture_output=capture)
    if result.returncode != 0:
        if capture:
            sys.stderr.write(result.stderr)
        raise SystemExit(f"demo: `laneway {' '.join(args)}` failed ({result.returncode})")
    return result.stdout if capture else ""


def request(key: str | None) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    if key:
        headers["baggage"] = f"laneway-key={key}"
    resp = httpx.get(f"{WEB}/buy", params={"item": "book", "currency": "EUR"},
                     headers=headers, timeout=10)
    if resp.status_code != 200:
        raise SystemExit(f"demo: GET /buy ({'key ' + key if key else 'no key'}) answered "
                         f"{resp.status_code}: {resp.text}")
    answer = resp.json()
    deadline = time.monotonic() + 5
    hops: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # hop records arrive in batches, within ~50 ms
        hops = json.loads(laneway("hops", "--trace", trace_id, "-o", "json", capture=True))
        if len(hops) >= 4:
            break
        time.sleep(0.05)
    return answer, trace_id, sorted(hops, key=lambda h: h["at"])  # in the order they started


def is_grpc(hop: dict[str, Any]) -> bool:
    return hop.get("grpc_status") is not None  # None for plain HTTP hops


def path_of(hops: list[dict[str, Any]]) -> str:
    def step(h: dict[str, Any]) -> str:
        name = h["service"] if h["destination"] == "baseline" \
            else f"[bold magenta]{h['service']}@{h['destination']}[/]"
        return f"{name} [cyan](gRPC)[/]" if is_grpc(h) else name
    return " → ".join(step(h) for h in hops)


def status_of(hop: dict[str, Any]) -> str:
    """The HTTP status, and for a gRPC call its grpc-status (HTTP is 200 even when it fails)."""
    if not is_grpc(hop):
        return str(hop["status"])
    code = hop["grpc_status"]
    return f"{hop['status']} grpc {GRPC_CODES.get(code, code)}"


def panel(title: str, answer: dict[str, Any], hops: list[dict[str, Any]]) -> Panel:
    quote = answer["quote"]
    body = (f"[bold]{answer['message']}[/]\n"
            f"discount: {quote['pricing']['discount']}   pricing: {quote['pricing']['pricing']}\n\n"
            f"path: {path_of(hops)}\n" +
            "\n".join(f"  {h['service']:<9} {h['destination']:<14} {status_of(h):<15} "
                      f"{h['duration_ms']:6.1f} ms" for h in hops))
    grpc_paths = sorted({h["path"] for h in hops if is_grpc(h)})
    if grpc_paths:
        body += "\n  gRPC method: " + ", ".join(grpc_paths)
    return Panel(body, title=title, width=64)


def key_crossed_grpc(sandbox: str, key: str, hops: list[dict[str, Any]]) -> bool:
    """The keyed request's gRPC hop reached the fork and succeeded, and the fork's own HTTP call
    (to currency, on the baseline) still carried the key."""
    grpc_hops = [i for i, h in enumerate(hops) if is_grpc(h)]
    if len(grpc_hops) != 1:
        return False
    i = grpc_hops[0]
    return (hops[i]["destination"] == sandbox and hops[i]["grpc_status"] == 0
            and i + 1 < len(hops) and hops[i + 1]["service"] == "currency"
            and hops[i + 1]["routing_key"] == key)


def preview_check(sandbox: dict[str, Any]) -> bool:
    """The sandbox's preview URL serves the shop's page, and the quote it fetches is the
    fork's: what a browser shows at that URL."""
    url = sandbox["previews"]["web"]
    console.print(f"\nIn a browser: [bold]{url}[/]\n(the shop's page, as pricing-promo sees "
                  "it; *.localhost needs no DNS)", soft_wrap=True)
    parts = httpx.URL(url)
    # What the browser does: loopback, with the preview host in `Host` (Python's resolver,
    # unlike browsers, does not map *.localhost to loopback by itself).
    via = f"http://127.0.0.1:{parts.port}"
    headers = {"host": f"{parts.host}:{parts.port}"}
    page = httpx.get(f"{via}/", headers=headers, timeout=10)
    quote = httpx.get(f"{via}/buy", params={"item": "book", "currency": "EUR"},
                      headers=headers, timeout=10)
    ok = page.status_code == 200 and "fetch(" in page.text and quote.status_code == 200 and \
        quote.json()["quote"]["pricing"]["pricing"] == "fork of pricing-promo"
    console.print(f"[green]✓ the preview's page fetches its quote from the fork: "
                  f"{quote.json()['message']}[/]" if ok else
                  "[red]✗ the preview URL did not reach the fork[/]")
    return ok


def experiment() -> bool:
    """Two approaches to the promo in one command: pricing-promo, and pricing-slow (the same
    discount, 100 ms slower per quote). Both pass their tests; under load, against the baseline
    measured in the same slices, only the slow one fails its latency budget."""
    console.print("\n$ laneway sandbox apply -f sandbox-pricing-slow.yaml --wait   (the same "
                  "discount, computed 100 ms slower)")
    laneway("sandbox", "apply", "-f", "sandbox-pricing-slow.yaml", "--wait", capture=True)
    console.print("$ laneway experiment run -f experiment.yaml\n(each approach's tests as a "
                  "run with a diff, then GET /buy under load: the baseline and both sandboxes "
                  "at 30/s, interleaved in 0.25 s slices)\n")
    sys.stdout.flush()
    result = subprocess.run([LANEWAY, "experiment", "run", "-f", "experiment.yaml"], cwd=SHOP,
                            text=True, stdout=subprocess.PIPE, check=False)
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    listed = json.loads(laneway("experiment", "list", "--limit", "1", "-o", "json",
                                capture=True))
    verdicts = {r["target"]: r.get("verdict") for r in listed[0]["rows"]} if listed else {}
    slow = next((r for r in listed[0]["rows"] if r["target"] == "pricing-slow"), {}) \
        if listed else {}
    ok = result.returncode == 1 and verdicts.get("pricing-promo") == "passed" and \
        verdicts.get("pricing-slow") == "failed" and \
        "latency" in (slow.get("budget") or {}).get("failed", [])
    console.print("[green]✓ one approach passes; the slow one fails its latency budget "
                  "under load (exit code 1)[/]" if ok else
                  f"[red]✗ the experiment did not come out as expected: {verdicts}, exit "
                  f"{result.returncode}[/]")
    return ok


def main() -> None:
    console.rule("laneway demo: the shop")
    laneway("down", capture=True) if (SHOP / ".laneway" / "api.json").exists() else None
    laneway("up", "--detach")
    try:
        console.print("\n$ laneway sandbox apply -f sandbox-pricing.yaml --wait")
        sandbox = json.loads(laneway("sandbox", "apply", "-f", "sandbox-pricing.yaml",
                                     "--wait", "-o", "json", capture=True))
        key = sandbox["routingKey"]
        console.print(f"sandbox [bold]{sandbox['name']}[/] forks pricing (PRICING_DISCOUNT=20); "
                      f"routing key [bold]{key}[/]\n")
        console.print("The same request, GET /buy?item=book at web, without and with the key "
                      "(after one warm-up request each):")
        request(None)
        request(key)
        plain, _, plain_hops = request(None)
        keyed, _, keyed_hops = request(key)
        console.print(Columns([
            panel("no key → baseline", plain, plain_hops),
            panel(f"baggage: laneway-key={key}", keyed, keyed_hops),
        ]))
        ok = plain["quote"]["pricing"]["pricing"] == "baseline" and \
            keyed["quote"]["pricing"]["pricing"] == "fork of pricing-promo"
        console.print("[green]✓ only the keyed request reached the fork[/]" if ok else
                      "[red]✗ routing did not behave as expected[/]")
        crossed = key_crossed_grpc(sandbox["name"], key, keyed_hops)
        console.print("[green]✓ the key crossed HTTP → gRPC → HTTP: fork answered OK, "
                      "currency got the key[/]"
                      if crossed else
                      "[red]✗ the keyed request did not cross the gRPC hop as expected[/]")
        ok = ok and crossed
        previewed = preview_check(sandbox)
        ok = ok and previewed
        console.print("\n$ laneway run --sandbox pricing-promo --diff -o md -- "
                      "python -m pytest -q examples/shop/tests")
        console.print("(the shop's own tests, unaware of laneway; the run proxy adds the key; "
                      "--diff replays their requests against the baseline too)\n")
        run = subprocess.run([LANEWAY, "run", "--sandbox", "pricing-promo", "--diff", "-o",
                              "md", "--",
                              sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests"], cwd=SHOP, text=True, capture_output=True, check=False)
        sys.stdout.write(run.stdout)
        sys.stdout.flush()
        ok = ok and run.returncode == 0 and "`orders` called `pricing`" in run.stdout
        diffed = "Diff against the baseline" in run.stdout and " 0 red and " in run.stdout
        console.print("[green]✓ the diff: the fork's discount changes values (yellow), "
                      "nothing red[/]" if diffed else
                      "[red]✗ the diff against the baseline is not what the fork changed[/]")
        ok = ok and diffed
        console.print("\n$ laneway sandbox apply -f sandbox-pricing-rename.yaml --wait   "
                      "(a fork of pricing that renames `discount` to `rebate`)")
        laneway("sandbox", "apply", "-f", "sandbox-pricing-rename.yaml", "--wait",
                capture=True)
        console.print("$ laneway run --sandbox pricing-rename --diff -- python -m pytest -q "
                      "examples/shop/tests\n")
        renamed = subprocess.run([LANEWAY, "run", "--sandbox", "pricing-rename", "--diff",
                                  "-o", "json", "--", sys.executable, "-m", "pytest", "-q",
                                  "-p", "no:cacheprovider", "tests"], cwd=SHOP, text=True,
                                 capture_output=True, check=False)
        found = json.loads(renamed.stdout)["diff"] if renamed.stdout.strip() else {}
        for finding in found.get("findings", []):
            console.print(f"  [{'red' if finding['risk'] == 'red' else 'yellow'}]"
                          f"{finding['risk']}[/] {finding['endpoint']} {finding['path']} "
                          f"({finding['kind']})")
        red = [(f["endpoint"], f["path"]) for f in found.get("findings", [])
               if f["risk"] == "red"]
        broke = red == [("GET /buy", "$.quote.pricing.discount")]
        console.print("[green]✓ the tests pass, and the diff shows the broken contract: "
                      "`discount` missing, red[/]" if broke else
                      "[red]✗ the renamed field was not reported red[/]")
        ok = ok and broke
        ok = experiment() and ok
        link = laneway("ui", "--no-open", capture=True).strip().splitlines()[-1]
        console.print(f"\n$ laneway ui\nThe web UI: [bold]{link}[/]\n(a one-time link, valid "
                      "for two minutes; `laneway ui` prints a new one)", soft_wrap=True)
        if os.environ.get("DEMO_KEEP"):
            console.print("\nDEMO_KEEP=1: still running. Try:\n"
                          f"  open {sandbox['previews']['web']}   (the shop as pricing-promo "
                          "sees it)\n"
                          f"  curl '{WEB}/buy?item=book'\n"
                          f"  curl -H 'baggage: laneway-key={key}' '{WEB}/buy?item=book'\n"
                          f"  cd {SHOP} && {LANEWAY} ui\n"
                          f"  cd {SHOP} && {LANEWAY} status\n"
                          f"  cd {SHOP} && {LANEWAY} down", soft_wrap=True)
            return
        if not ok:
            raise SystemExit(1)
    except BaseException:
        if not os.environ.get("DEMO_KEEP"):
            laneway("down", capture=True)
        raise
    console.print("\n$ laneway down")
    laneway("down")


if __name__ == "__main__":
    main()
