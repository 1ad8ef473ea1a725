"""A real browser for tests: Debian's Chromium, headless, driven by Playwright (its driver ships in the
wheel; its own browser download is never used). WebGL2 runs on SwiftShader, so splat viewers render.

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})

Without ``/usr/bin/chromium`` (``apt-get install chromium``) a test using it is skipped, unless
``TIRE_REQUIRE_BROWSER=1`` (``.ci/run`` sets it), where it fails instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")


def require_chromium() -> str:
    """Chromium's path; skips the calling test without it (fails with ``TIRE_REQUIRE_BROWSER=1``)."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path:
        return path
    message = "Chromium is not installed (apt-get install chromium)"
    if os.environ.get("TIRE_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium (a Playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()
