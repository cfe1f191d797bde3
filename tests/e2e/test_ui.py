"""The web UI and preview URLs in a real browser (Debian's Chromium, headless, via Playwright):
sign in through `laneway ui`'s link, see and open sandboxes, follow a preview link and see the
fork's answer on the page, apply and delete a sandbox through the UI, see a run's verdict.

Screenshots of each view go to $LANEWAY_SCREENSHOTS when it is set (`make screenshots` writes
the ones under docs/ that the README shows), else to the test's own folder."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Project, free_ports

PAGES = str(Path(__file__).parents[1] / "apps" / "pages.py")


def pages_yaml(ports: dict[str, int], preview: int) -> str:
    return f"""
name: pages
preview:
  port: {preview}
services:
  data:
    run: [{sys.executable}, {PAGES}]
    port: {ports['data']}
    health: /healthz
    env: {{ROLE: data}}
  web:
    run: [{sys.executable}, {PAGES}]
    port: {ports['web']}
    health: /healthz
    env:
      ROLE: web
      DATA_URL: ${{services.data.url}}
    depends_on: [data]
"""


@pytest.fixture
def pages(tmp_path: Path) -> Iterator[tuple[Project, int]]:
    data, web, preview = free_ports(3)
    proj = Project(tmp_path, {"data": data, "web": web})
    proj.write("laneway.yaml", pages_yaml(proj.ports, preview))
    with proj.running():
        yield proj, preview


class Console:
    """Console errors and failed requests of every page the test opens."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Any) -> Any:
        page.on("console", lambda msg: self.errors.append(f"{page.url}: {msg.text}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        return page


@pytest.mark.timeout(240)  # a browser, a project and many pages: the slowest test by far
async def test_the_ui_and_previews_in_a_browser(pages: tuple[Project, int], chromium: Any,
                                                tmp_path: Path) -> None:
    proj, edge = pages
    shots = Path(os.environ.get("LANEWAY_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    proj.write("sb.yaml", "name: data-v2\nlabels: {team: search}\nttl: 2h\nforks:\n"
                          "  - service: data\n    env: {VERSION: v2}\n")
    applied = proj.run("sandbox", "apply", "-f", "sb.yaml", "--wait").stdout
    # The preview URLs, entry points first: what `apply`, `get`, status and the API say.
    assert f"preview web   http://data-v2--web.localhost:{edge}/\n" \
        f"preview data  http://data-v2--data.localhost:{edge}/" in applied
    assert f"preview web   http://data-v2--web.localhost:{edge}/" in \
        proj.run("sandbox", "get", "data-v2").stdout
    assert proj.json("sandbox", "get", "data-v2")["previews"] == {
        "web": f"http://data-v2--web.localhost:{edge}/",
        "data": f"http://data-v2--data.localhost:{edge}/"}
    assert proj.json("status")["preview"]["port"] == edge

    link = proj.run("ui", "--no-open").stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ui/login\?code=[\w-]+", link)
    base = link.split("/ui/")[0]
    token = (proj.root / ".laneway" / "token").read_text().strip()
    assert token not in link

    context = await chromium.new_context(viewport={"width": 1366, "height": 860})
    console = Console()
    page = console.watch(await context.new_page())
    try:
        # Sign in: the link's code becomes a session cookie; the code leaves the address bar.
        await page.goto(link)
        assert page.url == f"{base}/ui/"
        row = page.locator("tr[data-sandbox='data-v2']")
        assert "ready" in await row.inner_text()
        assert "team=search" in await row.inner_text()
        assert "ready" in await page.locator("tr[data-service='web']").inner_text()
        await page.screenshot(path=str(shots / "ui-overview.png"), full_page=True)
        # The link works once.
        spent = console.watch(await context.new_page())
        await spent.goto(link)
        assert "used already" in await spent.inner_text("main")
        await spent.close()
        console.errors.clear()  # the spent link's 401 was the point

        # Open the sandbox: forks, status, key, preview links.
        await row.get_by_role("link", name="data-v2").click()
        await page.wait_for_url("**/ui/sandboxes/data-v2")
        fork = page.locator("tr[data-fork='data']")
        assert "data@data-v2" in await fork.inner_text()
        assert "ready" in await fork.inner_text()
        preview = page.locator("a[data-preview='web']")
        assert await preview.get_attribute("href") == f"http://data-v2--web.localhost:{edge}/"
        await page.screenshot(path=str(shots / "ui-sandbox.png"), full_page=True)

        # Follow the preview link: the page's own fetch() and its cross-origin call to the
        # data service's address both get the fork's answer.
        async with context.expect_page() as opened:
            await preview.click()
        site = console.watch(await opened.value)
        await settled(site)
        assert await site.inner_text("#same") == "v2"
        assert await site.inner_text("#cross") == "v2"
        await site.screenshot(path=str(shots / "preview.png"))
        await site.goto(f"http://127.0.0.1:{proj.ports['web']}/")  # the baseline's page
        await settled(site)
        assert await site.inner_text("#same") == "baseline"
        assert await site.inner_text("#cross") == "baseline"
        await site.close()

        # The request's path, as a picture: web on the baseline, data on the fork.
        await page.reload()
        await page.get_by_role("link", name=re.compile(r"^path of ")).first.click()
        picture = page.locator("svg.waterfall")
        assert "data@data-v2" in await picture.text_content()
        assert await page.locator("svg.waterfall g.fork").count() >= 1
        assert await page.locator("svg.waterfall g.baseline").count() >= 1
        await page.screenshot(path=str(shots / "ui-trace.png"), full_page=True)

        # Apply through the UI: a mistake is named by its field and nothing is applied.
        await page.goto(f"{base}/ui/sandboxes/new")
        await page.get_by_label("The sandbox file").fill(
            "name: web-v2\nforks:\n  - service: web\n    helth: /x\n")
        await page.get_by_role("button", name="Apply").click()
        assert "forks[0].helth" in await page.get_by_role("alert").inner_text()
        console.errors.clear()  # the 422 of the refused form
        assert "web-v2" not in {s["name"] for s in proj.json("sandbox", "list")}
        await page.get_by_label("The sandbox file").fill(
            "name: web-v2\nforks:\n  - service: web\n    env: {VERSION: v2}\n")
        await page.get_by_role("button", name="Apply").click()
        await page.wait_for_url("**/ui/sandboxes/web-v2")
        assert "web-v2" in {s["name"] for s in proj.json("sandbox", "list")}
        audit = httpx.get(f"{base}/v1/audit", headers={"authorization": f"Bearer {token}"},
                          timeout=10).json()
        assert {(e["principal"], e["name"]) for e in audit} >= {("ui", "web-v2"),
                                                                ("local", "data-v2")}

        # Live: a sandbox applied elsewhere appears on the open overview without a reload.
        await page.goto(f"{base}/ui/")
        proj.write("sb3.yaml", "name: live-one\nforks:\n  - service: data\n")
        proj.run("sandbox", "apply", "-f", "sb3.yaml")
        await page.locator("tr[data-sandbox='live-one']").wait_for(timeout=15_000)

        # Delete through the UI (it asks first); its preview host then says it is gone.
        await page.goto(f"{base}/ui/sandboxes/web-v2")
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.get_by_role("button", name="Delete sandbox").click()
        await page.wait_for_url("**/ui/?deleted=web-v2")
        assert "web-v2" not in {s["name"] for s in proj.json("sandbox", "list")}
        gone = await context.new_page()
        await gone.goto(f"http://web-v2--web.localhost:{edge}/")
        assert "no sandbox or route group named 'web-v2'" in await gone.inner_text("main")
        await gone.close()

        # A run's verdict.
        check = ("import os, urllib.request; "
                 "urllib.request.urlopen(os.environ['LANEWAY_URL_WEB'] + '/api/data').read()")
        proj.run("run", "--sandbox", "data-v2", "--", sys.executable, "-c", check)
        await page.goto(f"{base}/ui/runs")
        run = page.locator("tr[data-run]").first
        assert "passed" in await run.inner_text()
        await page.screenshot(path=str(shots / "ui-runs.png"), full_page=True)
        await run.get_by_role("link").first.click()
        assert "passed" in await page.locator(".verdict-line").inner_text()
        assert "data@data-v2" in await page.inner_text("main")
        await page.screenshot(path=str(shots / "ui-run.png"), full_page=True)

        for view in ("leaks", "diffs", "logs?source=data@data-v2"):
            await page.goto(f"{base}/ui/{view}")
            assert await page.locator("h1").count() == 1
            await page.screenshot(path=str(shots / f"ui-{view.split('?')[0]}.png"),
                                  full_page=True)
        assert "data v2" in await page.inner_text("#log-lines")
        # Follow: new lines arrive without a reload.
        await page.get_by_label("Follow").check()
        await page.wait_for_function("document.getElementById('live-state').textContent"
                                     " === 'following'")
        key = proj.json("sandbox", "get", "data-v2")["routingKey"]
        httpx.get(f"http://127.0.0.1:{proj.ports['data']}/data?followed=1",
                  headers={"baggage": f"laneway-key={key}"}, timeout=10)
        await page.wait_for_function("document.getElementById('log-lines').textContent"
                                     ".includes('followed=1')", timeout=10_000)
        assert console.errors == []
    finally:
        await context.close()
    await mcp_screenshot_of_a_preview(proj, edge)


async def settled(page: Any) -> None:
    """The pages app's two fetch() calls have answered."""
    for output in ("same", "cross"):
        await page.wait_for_function(
            f"document.getElementById('{output}').textContent !== '…'")


async def test_signed_out_and_forged_requests_are_refused(pages: tuple[Project, int],
                                                    chromium: Any) -> None:
    proj, _ = pages
    api = proj.json("status")  # the environment answers
    assert api["name"] == "pages"
    base = proj.run("ui", "--no-open").stdout.strip().splitlines()[-1].split("/ui/")[0]

    # The control plane's own address leads a browser to the UI.
    assert httpx.get(f"{base}/", timeout=10).headers["location"] == "/ui/"
    signed_out = httpx.get(f"{base}/ui/", timeout=10)
    assert signed_out.status_code == 401
    assert "laneway ui" in signed_out.text
    assert httpx.get(f"{base}/ui/login?code=forged", timeout=10).status_code == 401
    # A page elsewhere (a preview, say) cannot make the browser change anything: a POST
    # without this UI's Origin is refused even with a valid session.
    link = proj.run("ui", "--no-open").stdout.strip().splitlines()[-1]
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        login = client.get(link)
        assert login.status_code == 303
        forged = client.post(f"{base}/ui/sandboxes", data={"spec": "name: x\nforks: []\n"},
                             headers={"origin": "http://evil--web.localhost:7780"})
        assert forged.status_code == 403
        assert proj.json("sandbox", "list") == []
        # Bad input from the form: one clear message per problem, and nothing applied.
        for spec, says in [
            ("", "must be a YAML mapping"),
            ("labels: {a: b}\n", "<code>name</code>: required"),
            ("forks: [\n", "invalid YAML"),
            ("- just\n- a list\n", "must be a YAML mapping"),
            ("name: Bad_Name\nforks: []\n", "must be a DNS label"),
            ("name: x\nforks:\n  - service: nope\n", "unknown service &#39;nope&#39;"),
        ]:
            refused = client.post(f"{base}/ui/sandboxes", data={"spec": spec},
                                  headers={"origin": base})
            assert refused.status_code == 422, (spec, refused.text[:300])
            assert says in refused.text, (spec, refused.text)
            assert "Traceback" not in refused.text
        assert proj.json("sandbox", "list") == []
        # New sandbox never replaces one; an edit keeps secrets left as *** and never
        # overwrites a change made since the page was loaded.
        proj.write("sec.yaml", "name: sec\nforks:\n  - service: data\n    env:\n"
                               "      API_TOKEN: s3cr3t-value\n      LEVEL: '1'\n")
        proj.run("sandbox", "apply", "-f", "sec.yaml")
        again = client.post(f"{base}/ui/sandboxes", headers={"origin": base},
                            data={"spec": "name: sec\nforks:\n  - service: web\n"})
        assert again.status_code == 422
        assert "exists already" in again.text
        edited = ("name: sec\nforks:\n- service: data\n  env:\n    API_TOKEN: '***'\n"
                  "    LEVEL: '2'\n")
        stale = client.post(f"{base}/ui/sandboxes", headers={"origin": base}, data={
            "spec": edited, "editing": "sec", "generation": "7"})
        assert stale.status_code == 422
        assert "is at generation 1, not 7" in stale.text
        saved = client.post(f"{base}/ui/sandboxes", headers={"origin": base}, data={
            "spec": edited, "editing": "sec", "generation": "1"})
        assert saved.status_code == 303
        env = proj.json("sandbox", "get", "sec", "--show-secrets")["forks"][0]["env"]
        assert env == {"API_TOKEN": "s3cr3t-value", "LEVEL": "2"}
        proj.run("sandbox", "delete", "sec")
        # The session opens the API, but not what only the CLI may do.
        session = next(iter(client.cookies.values()))
        assert httpx.get(f"{base}/v1/status", headers={
            "authorization": f"Bearer {session}"}, timeout=10).status_code == 200
        assert httpx.post(f"{base}/v1/shutdown", headers={
            "authorization": f"Bearer {session}"}, timeout=10).status_code == 401


async def mcp_screenshot_of_a_preview(proj: Project, edge: int) -> None:
    """An agent checks a UI change: MCP screenshot_preview loads the sandbox's preview URL in
    headless Chromium and returns a PNG and the page's errors."""
    import base64
    import json

    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    from tests.browser import ensure_chromium
    from tests.e2e.conftest import LANEWAY

    chromium_path = ensure_chromium()
    params = StdioServerParameters(command=LANEWAY, args=["mcp"], cwd=str(proj.root),
                                   env={**os.environ, "LANEWAY_CHROMIUM": chromium_path})
    async with Client(params) as client:
        sandbox = await client.call_tool("get_sandbox", {"name": "data-v2"})
        previews = sandbox.structured_content["previews"]  # type: ignore[index]
        assert previews["web"] == f"http://data-v2--web.localhost:{edge}/"
        shot = await client.call_tool("screenshot_preview", {"url": previews["web"]})
        assert not shot.is_error, shot.content
        summary = json.loads(shot.content[0].text)  # type: ignore[union-attr]
        assert summary["ok"] is True
        assert summary["status"] == 200
        assert summary["console_errors"] == []
        image = shot.content[1]
        assert image.type == "image"
        assert image.mime_type == "image/png"
        assert base64.b64decode(image.data)[:8] == b"\x89PNG\r\n\x1a\n"
        # A page with an error: the deleted sandbox's host answers 404, and says so.
        broken = await client.call_tool(
            "screenshot_preview", {"url": f"http://gone--web.localhost:{edge}/"})
        summary = json.loads(broken.content[0].text)  # type: ignore[union-attr]
        assert summary["ok"] is False
        assert summary["status"] == 404
        outside = await client.call_tool("screenshot_preview",
                                         {"url": "http://example.com/"})
        assert outside.is_error
        assert "not on this machine" in outside.content[0].text  # type: ignore[union-attr]
    # No browser: the tool says how to get one.
    params = StdioServerParameters(command=LANEWAY, args=["mcp"], cwd=str(proj.root),
                                   env={**os.environ, "LANEWAY_CHROMIUM": "/nonexistent"})
    async with Client(params) as client:
        missing = await client.call_tool("screenshot_preview", {"url": previews["web"]})
        assert missing.is_error
        text = missing.content[0].text  # type: ignore[union-attr]
        assert "no browser" in text
        assert "apt-get install chromium" in text
