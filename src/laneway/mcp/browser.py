"""A headless Chromium for agents: load a preview URL, return a screenshot and what went wrong.

Driven by Playwright for Python (the `browser` extra: `pip install 'laneway[browser]'`) with the
machine's own Chromium (`executable_path`), because Playwright's downloaded browsers are not
always available (offline machines, distributions it does not support). Which Chromium:
`LANEWAY_CHROMIUM`, else the first of `chromium`, `chromium-browser`, `google-chrome` on PATH,
else the one `playwright install chromium` downloaded.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BrowserMissing", "Shot", "find_chromium", "how_to_get_a_browser", "screenshot"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserMissing(Exception):
    """No Playwright or no Chromium: the message says how to get them."""


def find_chromium() -> str | None:
    given = os.environ.get("LANEWAY_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def how_to_get_a_browser() -> str:
    return ("install Chromium (Debian/Ubuntu: `sudo apt-get install chromium`; macOS: "
            "`brew install --cask chromium`) or set LANEWAY_CHROMIUM to a Chromium or Chrome "
            "binary; Playwright's own download (`python -m playwright install chromium`) "
            "works too")


@dataclass
class Shot:
    png: bytes
    url: str
    status: int | None
    title: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "title": self.title,
                "console_errors": self.console_errors[:20],
                "page_errors": self.page_errors[:20],
                "failed_requests": self.failed_requests[:20],
                "ok": not (self.console_errors or self.page_errors or self.failed_requests)
                and (self.status or 0) < 400}


def check_local_url(url: str) -> str:
    """Only pages of this machine (previews, the baseline, the UI): an agent's browser is not
    a way out to the internet. Returns the URL, or raises ValueError saying why not."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url: {url!r} is not an http(s) URL")
    host = (parts.hostname or "").lower()
    if not (host == "localhost" or host.endswith(".localhost") or host.startswith("127.")
            or host == "::1"):
        raise ValueError(f"url: {host!r} is not on this machine; open a preview URL "
                         "(http://<sandbox>--<service>.localhost:PORT/, see get_sandbox) or "
                         "a service's own address")
    return url


async def screenshot(url: str, *, width: int = 1280, height: int = 800,
                     full_page: bool = False, wait_ms: int = 500,
                     timeout_s: float = 20.0) -> Shot:
    """Load `url`, wait for the network to settle (and `wait_ms` more, for scripts that render
    after their fetches), and take a PNG."""
    try:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import async_playwright
    except ImportError as exc:
        raise BrowserMissing("Playwright is not installed: `pip install 'laneway[browser]'` "
                             "(or `pip install playwright`); then " +
                             how_to_get_a_browser()) from exc
    executable = find_chromium()
    async with async_playwright() as pw:
        try:
            browser = await pw.chromium.launch(
                executable_path=executable, headless=True,
                # As root (containers, CI) Chromium needs --no-sandbox to start at all.
                args=["--no-sandbox"] if os.geteuid() == 0 else [])
        except PlaywrightError as exc:
            raise BrowserMissing(f"no Chromium could be started ({str(exc).splitlines()[0]}): "
                                 + how_to_get_a_browser()) from exc
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            shot = Shot(b"", url, None, "")
            page.on("console", lambda msg: shot.console_errors.append(msg.text)
                    if msg.type == "error" else None)
            page.on("pageerror", lambda exc: shot.page_errors.append(str(exc)))
            page.on("requestfailed", lambda req: shot.failed_requests.append(
                f"{req.method} {req.url}: {req.failure or 'failed'}"))
            page.on("response", lambda resp: shot.failed_requests.append(
                f"{resp.request.method} {resp.url}: {resp.status}")
                if resp.status >= 400 and resp.url != url else None)
            try:
                response = await page.goto(url, wait_until="networkidle",
                                           timeout=timeout_s * 1000)
            except PlaywrightError as exc:
                shot.page_errors.append(str(exc).splitlines()[0])
                response = None
            shot.status = response.status if response is not None else None
            if wait_ms:
                await page.wait_for_timeout(wait_ms)
            shot.url = page.url
            shot.title = await page.title()
            shot.png = await page.screenshot(full_page=full_page, type="png")
            return shot
        finally:
            await browser.close()
