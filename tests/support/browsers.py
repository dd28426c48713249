"""Headless Chromium for tests (Debian's, driven by Playwright), allowed to reach only 127.0.0.1."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from tests.support.backends import unavailable

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without these, Chromium calls its vendor's services at start: blocked here, noisy, slow.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _need_browser() -> Any:
    reason = None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[test]')"
    if reason is None and CHROMIUM is None:
        reason = "no chromium on PATH (scripts/setup installs Debian's chromium)"
    if reason is not None:
        unavailable(reason)
    return async_playwright


class Offline:
    """Lets requests to 127.0.0.1 through and records (and aborts) every other one."""

    def __init__(self) -> None:
        self.blocked: list[str] = []
        self.sockets: list[str] = []
        self.page_errors: list[str] = []

    async def route(self, route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            self.blocked.append(url)
            await route.abort()

    def check(self) -> None:
        assert self.blocked == []
        assert all(urlsplit(u).hostname == "127.0.0.1" for u in self.sockets), self.sockets
        assert self.page_errors == []


@contextlib.asynccontextmanager
async def offline_chromium() -> AsyncIterator[tuple[Any, Offline]]:
    """A browser context that may reach only 127.0.0.1, and its ``Offline`` record, checked on exit.

    Skips (fails under CI) without Playwright or Chromium.
    """
    async_playwright = _need_browser()
    offline = Offline()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=20_000)
        try:
            context = await chromium.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(20_000)  # a loaded machine; a passing run waits far less
            await context.route("**/*", offline.route)
            yield context, offline
            await context.close()
        finally:
            await chromium.close()
    offline.check()


def watched_page(offline: Offline, page: Any) -> Any:
    """``page``, its script errors and WebSocket URLs recorded for ``offline.check``."""
    page.on("pageerror", lambda exc: offline.page_errors.append(str(exc)))
    page.on("websocket", lambda ws: offline.sockets.append(ws.url))
    return page
