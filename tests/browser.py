"""A real Chromium for the browser tests: Debian's, installed when missing, driven by
Playwright for Python through `executable_path` (Playwright cannot download its own here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest

from laneway.mcp.browser import find_chromium, how_to_get_a_browser


def ensure_chromium() -> str:
    """The path of a Chromium, installing Debian's package first when there is none and this
    machine can (root, apt-get): `make test` must pass on a fresh machine."""
    found = find_chromium()
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)
        found = find_chromium()
        if found:
            return found
    pytest.fail(f"the browser tests need Chromium: {how_to_get_a_browser()}")


@pytest.fixture
async def chromium() -> AsyncIterator[object]:
    """A headless Chromium for one test, on Playwright's asyncio API (its sync API runs an
    event loop of its own, which pytest-asyncio's loops refuse)."""
    from playwright.async_api import async_playwright

    path = ensure_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, headless=True,
                                           args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield browser
        await browser.close()
