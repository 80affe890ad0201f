"""Playwright fixtures: Debian's Chromium, headless, against pytest-django's live server.

Screenshots go to tests/artifacts/ (git-ignored). The tests skip, saying why, when
/usr/bin/chromium is missing (`apt-get install chromium`).
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import REPO_ROOT

# The end-to-end fixtures (real worker, shared database) live with the e2e tests; importing
# them here makes them available to the browser tests as well.
from tests.e2e.conftest import (  # noqa: F401
    WebServer,
    celery_worker_process,
    e2e,
    e2e_dir,
    e2e_env,
    e2e_model_dir,
)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1366, "height": 768}
TABLET = {"width": 768, "height": 1024}

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still
# synchronous, so Django's async-safety guard is lifted for the browser tests only.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            if not CHROMIUM.exists():
                item.add_marker(
                    pytest.mark.skip(reason="/usr/bin/chromium is missing: apt-get install chromium")
                )


@pytest.fixture(scope="session")
def web_server(e2e_env, e2e_dir) -> Iterator[WebServer]:  # noqa: F811 (fixtures imported above)
    """The e2e gunicorn server, with the static files collected first: with DEBUG off, WhiteNoise
    serves only STATIC_ROOT, and a browser needs the CSS and scripts that API clients do not."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        env=e2e_env,
        cwd=REPO_ROOT,
        check=True,
        timeout=300,
    )
    server = WebServer(env=e2e_env, log_path=e2e_dir / "web-browser.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class BrowserPage:
    """A page plus what the test wants to know afterwards: CSP violations and script errors."""

    def __init__(self, page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _on_console(self, message) -> None:
        text = message.text
        if message.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.problems.append(f"CSP: {text}")
        elif message.type == "error" and "Failed to load resource" not in text:
            self.problems.append(f"console error: {text}")

    def wait_until(self, expression: str, *, timeout: float = 15.0) -> None:
        """Poll a JS expression until it is truthy. (Playwright's wait_for_function evaluates a
        string in the page, which the CSP forbids, as it should.)"""
        deadline = time.monotonic() + timeout
        while not self.page.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout} s: {expression}")
            self.page.wait_for_timeout(100)

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def login(self, username: str, password: str) -> None:
        self.goto("/login/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url(self.base_url + "/")

    def shot(self, name: str, *, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def open_page(chromium, request):
    """open_page(viewport=DESKTOP) -> BrowserPage in a fresh browser context (its own cookies).

    Without `base_url` the page talks to pytest-django's live server, whose threads need a real
    database file or server: an in-memory SQLite database is one connection shared by the test
    and every server thread, and parallel browser requests then break each other's transactions.
    """
    live_server = None
    if "e2e" not in request.fixturenames:
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            pytest.skip(
                "browser tests need PostgreSQL (DATABASE_URL) or a SQLite file "
                "(MSKDETECT_TEST_DB_NAME=/tmp/mskdetect-test.sqlite3), not in-memory SQLite"
            )
        live_server = request.getfixturevalue("live_server")
    contexts = []

    def factory(viewport: dict | None = None, base_url: str | None = None) -> BrowserPage:
        context = chromium.new_context(viewport=viewport or DESKTOP)
        contexts.append(context)
        return BrowserPage(context.new_page(), base_url or live_server.url)

    yield factory
    for context in contexts:
        context.close()
