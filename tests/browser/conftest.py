"""Browser fixtures: every page test runs in Chromium and in Firefox ESR, against a real roomchat on
port 0. The browsers and their drivers come from Debian and PyPI (see tests/browser/pages.py);
an engine that is missing here skips its tests with one line, and fails them under CI (CI set)."""

import os

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
    """open_page(path, width=, height=, on=server, mobile=) -> a ChatPage in a fresh browser profile,
    connected to `server` (or `on`, anything with a `port`); every browser is closed at teardown."""
    browsers = []

    def start(path: str = "/", width: int = 1100, height: int = 750, on=None, mobile: bool = False) -> ChatPage:
        profile = tmp_path_factory.mktemp(engine)
        try:
            browser = launch(engine, profile, width, height, mobile)
        except Exception as exc:  # the driver's own error types differ; the message says what failed
            if os.environ.get("CI"):
                raise
            pytest.skip(f"{engine} would not start: {exc}")
        browsers.append(browser)
        return ChatPage(browser, f"http://127.0.0.1:{(on or server).port}", engine).open(path)

    yield start
    for browser in browsers:
        browser.quit()
