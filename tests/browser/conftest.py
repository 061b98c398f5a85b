"""Browser fixtures: every page test runs in Chromium and in Firefox ESR, against a real roomchat on
port 0. The browsers and their drivers come from Debian and PyPI (see tests/browser/pages.py);
an engine that is missing here skips its tests with one line, and fails them under CI (CI set)."""

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


@pytest.fixture
def open_page(engine, server, tmp_path_factory):
    """open_page(path, width=, height=, on=server, mobile=, scheme="http", flags=(), connected=True)
    -> a ChatPage in a fresh browser profile, connected to `server` (or `on`, anything with a
    `port`) over `scheme` (with connected=False, not waited for); `flags` are Chromium command-line
    flags (Chromium only). Every browser is closed at teardown."""
    browsers = []

    def start(path: str = "/", width: int = 1100, height: int = 750, on=None, mobile: bool = False,
              scheme: str = "http", flags: tuple = (), connected: bool = True) -> ChatPage:
        profile = tmp_path_factory.mktemp(engine)
        try:
            browser = launch(engine, profile, width, height, mobile, flags)
        except Exception as exc:  # the driver's own error types differ; the message says what failed
            if os.environ.get("CI"):
                raise
            pytest.skip(f"{engine} would not start: {exc}")
        browsers.append(browser)
        return ChatPage(browser, f"{scheme}://127.0.0.1:{(on or server).port}", engine).open(path, connected)

    yield start
    failures = []
    for browser in browsers:  # every one, even when one fails to quit (a leftover browser loads the next tests)
        try:
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
