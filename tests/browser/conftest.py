"""Playwright fixtures: Debian's Chromium, headless, against pytest-django's live server.

Screenshots go to tests/artifacts/ (git-ignored). The tests skip, saying why, when
/usr/bin/chromium is missing (`apt-get install chromium`). Every page a test opens is watched for
console errors, CSP violations, script errors, failed requests and error answers; the `open_page`
fixture fails the test on any at teardown (BrowserPage says what counts and how to allow one).
"""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
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
# Requests that stay open by design: never waited for by BrowserPage.settle.
LONG_LIVED = {"eventsource", "websocket"}
# A request the page cancels this long (seconds) before it starts to leave was cancelled by leaving.
CANCELLED_BEFORE_LEAVING = 0.5

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


# Registered before any page script runs (DevTools injects it, so the CSP does not apply to it):
# a violation is also an event, which catches what the console might word differently.
CSP_VIOLATION_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error("CSP violation event: " + event.violatedDirective + " blocked " +
    (event.blockedURI || "inline") + " at " + event.sourceFile + ":" + event.lineNumber);
}, true);
"""


class BrowserPage:
    """A page plus everything that went wrong on it: console errors, CSP violations, script errors,
    failed requests and HTTP answers of 400 or more.

    The `open_page` fixture fails the test at teardown when `problems` is not empty, so no test can
    forget to look. A test that expects an error answer (an upload refused with 400, the 404 page)
    names it with a regular expression in `allow=` or `allow(...)`; what matched goes to `allowed`.
    Problems read "HTTP 404 GET <url> on <page url>", "request failed: GET <url> (<reason>) on
    <page url>", "CSP: ...", "console error: ..." or "page error: ...".

    Leaving a page cancels what it was still loading (a thumbnail, a poll), and so may the page's
    own script just before it leaves (logging out stops the thumbnails): such a request is "left
    behind" (kept in `left_behind`), not failed. A request cancelled while the page stays (an
    image dropped by a swap) is a failed request like any other. `settle()` waits until nothing
    is loading; `goto` settles the current page before it leaves, and the fixture settles every
    page before it reads the problems.
    """

    def __init__(self, page, base_url: str, *, allow: Iterable[str] = ()) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        self.allowed: list[str] = []
        self._allow: list[re.Pattern] = []
        self.allow(*allow)
        self.left_behind: list[str] = []
        self._in_flight: set = set()
        self._last_activity = time.monotonic()  # when a request last started or ended
        # Main-frame documents committed so far, and the count when each request started: a request
        # cancelled after its page was replaced was left behind, not failed.
        self._documents = 0
        self._started_in: dict = {}
        self._leaving = False  # a main-frame navigation has started and not committed yet
        self._cancelled_while_leaving: list[str] = []
        self._cancelled_in_page: list[tuple[float, str]] = []  # judged when the page leaves or at the end
        page.add_init_script(CSP_VIOLATION_LISTENER)
        page.on("request", self._on_request)
        page.on("requestfinished", self._on_request_finished)
        page.on("framenavigated", self._on_frame_navigated)
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self._report(f"page error: {error}"))
        page.on("requestfailed", self._on_request_failed)
        page.on("response", self._on_response)

    def allow(self, *patterns: str) -> None:
        """Expect problems matching these regular expressions (re.search on the problem text)."""
        self._allow.extend(re.compile(pattern) for pattern in patterns)

    def _report(self, problem: str) -> None:
        if any(pattern.search(problem) for pattern in self._allow):
            self.allowed.append(problem)
        else:
            self.problems.append(problem)

    def _on_console(self, message) -> None:
        if message.type != "error":
            return
        text = message.text
        if "Failed to load resource" in text:
            return  # the same failure arrives as a response or requestfailed event, with its URL
        if (
            text.startswith("CSP violation event")
            or "Content Security Policy" in text
            or "Refused to" in text
        ):
            self._report(f"CSP: {text}")
        else:
            self._report(f"console error: {text}")

    def _on_request(self, request) -> None:
        self._last_activity = time.monotonic()
        self._in_flight.add(request)
        self._started_in[request] = self._documents
        if request.is_navigation_request() and request.frame == self.page.main_frame:
            self._leaving = True
            # Cancelled by the page just before it left: part of leaving. Earlier: a failure.
            now = time.monotonic()
            for cancelled_at, problem in self._cancelled_in_page:
                if now - cancelled_at <= CANCELLED_BEFORE_LEAVING:
                    self._cancelled_while_leaving.append(problem)
                else:
                    self._report(problem)
            self._cancelled_in_page.clear()

    def _on_request_finished(self, request) -> None:
        self._last_activity = time.monotonic()
        self._in_flight.discard(request)

    def _on_frame_navigated(self, frame) -> None:
        if frame != self.page.main_frame:
            return
        self._documents += 1
        self._leaving = False
        # Cancelled while the navigation was on its way: the page that asked for them is gone.
        self.left_behind.extend(self._cancelled_while_leaving)
        self._cancelled_while_leaving.clear()

    def _on_request_failed(self, request) -> None:
        self._last_activity = time.monotonic()
        self._in_flight.discard(request)
        problem = f"request failed: {request.method} {request.url} ({request.failure}) on {self.page.url}"
        if request.failure == "net::ERR_ABORTED":
            if self._started_in.get(request, self._documents) < self._documents:
                self.left_behind.append(problem)
                return
            if self._leaving:
                self._cancelled_while_leaving.append(problem)  # judged when the navigation commits
            else:
                self._cancelled_in_page.append((time.monotonic(), problem))  # unless the page leaves
            return
        self._report(problem)

    def finish(self) -> None:
        """At the end of the test: a cancellation the page did not leave after counts."""
        for problem in [*self._cancelled_while_leaving, *(problem for _, problem in self._cancelled_in_page)]:
            self._report(problem)
        self._cancelled_while_leaving.clear()
        self._cancelled_in_page.clear()

    def _on_response(self, response) -> None:
        if response.status >= 400:
            self._report(
                f"HTTP {response.status} {response.request.method} {response.url} on {self.page.url}"
            )

    def wait_until(self, expression: str, *, timeout: float = 15.0) -> None:
        """Poll a JS expression until it is truthy. (Playwright's wait_for_function evaluates a
        string in the page, which the CSP forbids, as it should.)"""
        deadline = time.monotonic() + timeout
        while not self.page.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout} s: {expression}")
            self.page.wait_for_timeout(100)

    def settle(self, *, timeout: float = 15.0, quiet: float = 0.1) -> None:
        """Wait until no request of the page has been in flight for `quiet` seconds (streams that
        never end aside). The quiet spell catches what starts just after the load event: lazy
        thumbnails, a script's first fetch."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [r for r in self._in_flight if r.resource_type not in LONG_LIVED]
            now = time.monotonic()
            if not pending and now - self._last_activity >= quiet:
                return
            if now > deadline:
                urls = ", ".join(sorted(r.url for r in pending))
                raise AssertionError(f"still loading after {timeout} s: {urls}")
            self.page.wait_for_timeout(25)

    def goto(self, path: str) -> None:
        """Open a page of the app once the current one has loaded what it asked for (so nothing is
        left behind and every answer it was waiting for is checked)."""
        self.settle()
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
    """open_page(viewport=DESKTOP, base_url=None, allow=()) -> BrowserPage in a fresh browser
    context (its own cookies).

    At teardown the test fails if any page it opened has a problem left (see BrowserPage): a console
    error, a CSP violation, a script error, a failed request or an HTTP answer of 400 or more.

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
    pages: list[BrowserPage] = []

    def factory(
        viewport: dict | None = None, base_url: str | None = None, *, allow: Iterable[str] = ()
    ) -> BrowserPage:
        context = chromium.new_context(viewport=viewport or DESKTOP)
        contexts.append(context)
        browser_page = BrowserPage(context.new_page(), base_url or live_server.url, allow=allow)
        pages.append(browser_page)
        return browser_page

    yield factory
    for browser_page in pages:  # an answer still on its way may be an error: wait for it
        if not browser_page.page.is_closed():
            try:
                browser_page.settle(timeout=5)
            except AssertionError as still_loading:
                browser_page.problems.append(str(still_loading))
        browser_page.finish()
    # Read before closing: closing a context aborts whatever is still loading, which is no fault.
    left = [
        f"page {number} ({viewport_of(p)}): {problem}"
        for number, p in enumerate(pages, 1)
        for problem in p.problems
    ]
    for context in contexts:
        context.close()
    if left:
        pytest.fail("problems in the browser:\n" + "\n".join(left), pytrace=False)


def viewport_of(browser_page: BrowserPage) -> str:
    size = browser_page.page.viewport_size or {}
    return f"{size.get('width')}x{size.get('height')}"
