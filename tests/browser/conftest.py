"""Browser fixtures: every page test runs in Chromium and in Firefox ESR, against a real roomchat on
port 0. The browsers and their drivers come from Debian and PyPI (see tests/browser/pages.py);
an engine that is missing here skips its tests with one line, and fails them under CI (CI set)."""

import contextlib
import http.server
import os
import threading

import pytest

from tests.browser.pages import ENGINES, ChatPage, launch, missing


@pytest.fixture(scope="session", params=ENGINES)
def engine(request) -> str:
    """The browser engine's name. Skips locally when it is missing; under CI that is a failure,
    so a CI that forgot to install a browser cannot pass by skipping."""
    reason = missing(request.param)
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it")
    if reason:
        pytest.skip(reason)
    return request.param


DEFAULT_WINDOW = (1100, 750)  # open_page's width and height when a test names none


class Pool:
    """The browsers of the default launch (DEFAULT_WINDOW, not mobile, no flags) this pytest
    process (one xdist worker) keeps between tests, idle ones per engine. A test takes one or
    launches one; at its end each goes back with a fresh tab and its sites' data cleared
    (fresh_tab), or is quit: when its test failed, when fresh_tab fails, or when the new tab's
    viewport is not the one it had when launched. Each test's server is on a new port, a new
    origin; the clearing covers a port that comes again. Used by one thread (the test's)."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.idle = {engine: [] for engine in ENGINES}
        self.viewports = {}  # browser -> [innerWidth, innerHeight] when launched

    def take(self, engine: str):
        if self.idle[engine]:
            return self.idle[engine].pop()
        browser = launch(engine, self.tmp_path_factory.mktemp(engine), *DEFAULT_WINDOW, False)
        self.viewports[browser] = browser.js("return [innerWidth, innerHeight]")
        return browser

    def give_back(self, engine: str, browser, origins, reuse: bool) -> None:
        """Keep `browser` for the next test when `reuse` and it comes back clean; quit it otherwise
        (raising what quit raises)."""
        try:
            if reuse:
                browser.fresh_tab(origins)
                if browser.js("return [innerWidth, innerHeight]") == self.viewports[browser]:
                    self.idle[engine].append(browser)
                    return
        except Exception:  # the drivers' own error types differ: a browser that fails here is quit
            pass
        del self.viewports[browser]
        browser.quit()

    def close(self) -> None:
        for browsers in self.idle.values():
            for browser in browsers:
                with contextlib.suppress(Exception):
                    browser.quit()


@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    """This worker's Pool of default browsers; all quit at the end of the run."""
    browsers = Pool(tmp_path_factory)
    yield browsers
    browsers.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test (item.passed_setup, item.passed_call) for open_page's teardown."""
    report = yield
    setattr(item, f"passed_{report.when}", report.passed)
    return report


@pytest.fixture
def open_page(engine, server, tmp_path_factory, pool, request):
    """open_page(path, width=, height=, on=server, mobile=, scheme="http", flags=(), connected=True)
    -> a ChatPage connected to `server` (or `on`, anything with a `port`) over `scheme` (with
    connected=False, not waited for); `flags` are Chromium command-line flags (Chromium only).
    With the default size, no flags and not mobile, the browser comes from this worker's pool
    (a fresh tab, its sites' data cleared, see Pool) and goes back to it at teardown when the
    test passed; any other is launched in a fresh profile. The others are quit at teardown."""
    taken, launched, origins = [], [], []

    def start(path: str = "/", width: int = DEFAULT_WINDOW[0], height: int = DEFAULT_WINDOW[1], on=None,
              mobile: bool = False, scheme: str = "http", flags: tuple = (), connected: bool = True) -> ChatPage:
        base_url = f"{scheme}://127.0.0.1:{(on or server).port}"
        origins.append(base_url)
        pooled = (width, height) == DEFAULT_WINDOW and not mobile and not flags
        try:
            if pooled:
                browser = pool.take(engine)
            else:
                browser = launch(engine, tmp_path_factory.mktemp(engine), width, height, mobile, flags)
        except Exception as exc:  # the driver's own error types differ; the message says what failed
            if os.environ.get("CI"):
                raise
            pytest.skip(f"{engine} would not start: {exc}")
        (taken if pooled else launched).append(browser)
        return ChatPage(browser, base_url, engine).open(path, connected)

    yield start
    passed = getattr(request.node, "passed_call", False)
    failures = []
    for browser in taken + launched:  # every one, even when one fails (a leftover browser loads the next tests)
        try:
            if browser in taken:
                pool.give_back(engine, browser, origins, reuse=passed)
            else:
                browser.quit()
        except Exception as exc:  # the drivers' own error types differ
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture
def other_site():
    """other_site(html) -> the URL of a page served by a second tiny HTTP server on another port
    (another origin than roomchat's); the servers stop at teardown."""
    servers = []

    def start(html: str) -> str:
        body = html.encode()

        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
        threading.Thread(target=site.serve_forever, daemon=True).start()
        servers.append(site)
        return f"http://127.0.0.1:{site.server_address[1]}/"

    yield start
    for site in servers:
        site.shutdown()
        site.server_close()
