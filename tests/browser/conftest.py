"""Browser fixtures: Debian's Chromium, driven by selenium, against a real roomchat on port 0.

Nothing here downloads a browser or a driver: both come from `apt-get install chromium
chromium-driver`. Without them (or without selenium) every browser test skips with one line.
"""

import http.server
import os
import shutil
import threading
import time

import pytest

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:  # the `chromium` fixture skips, saying what to install; tests import these names
    webdriver = NoAlertPresentException = WebDriverException = Service = By = Keys = None

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)

# The visible conversation's messages and other lines, read straight from the DOM.
READ_MESSAGES = """
return [...document.querySelectorAll('.pane:not([hidden]) .log li.msg')].map(li => ({
  seq: li.dataset.seq ? Number(li.dataset.seq) : null,
  from: li.querySelector('.from').textContent,
  text: li.querySelector('.text').textContent,
}));"""
READ_LINES = """
return [...document.querySelectorAll('.pane:not([hidden]) .log li:not(.msg) .text')].map(s => s.textContent);"""


def _missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return "no Chromium here (apt-get install chromium chromium-driver)"
    return None


class ChatPage:
    """One browser window on the chat page, with the reads and actions the tests need."""

    def __init__(self, driver, base_url: str):
        self.driver = driver
        self.base_url = base_url

    def open(self, path: str = "/") -> "ChatPage":
        self.driver.get(self.base_url + path)
        self.wait(lambda: self.status() == "Connected.", "the page never connected")
        return self

    def wait(self, predicate, message: str = "condition not met", timeout: float = 10.0):
        """Poll `predicate()` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{message} (after {timeout:g} s)")
            time.sleep(0.05)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def status(self) -> str:
        return self.driver.find_element(By.ID, "status-text").text

    def message_box(self):
        """The input labelled "Message", found through its label as a person would."""
        return self.driver.find_element(By.XPATH, '//input[@id=//label[normalize-space()="Message"]/@for]')

    def say(self, text: str) -> None:
        self.message_box().send_keys(text, Keys.ENTER)

    def messages(self) -> list[dict]:
        return self.js(READ_MESSAGES)

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages()]

    def lines(self) -> list[str]:
        return self.js(READ_LINES)

    def wait_for_text(self, text: str, timeout: float = 10.0) -> None:
        self.wait(lambda: text in self.texts(), f"{text!r} never appeared; saw {self.texts()}", timeout)

    def wait_for_line(self, line: str, timeout: float = 10.0) -> None:
        self.wait(lambda: line in self.lines(), f"line {line!r} never appeared; saw {self.lines()}", timeout)

    def title(self) -> str:
        return self.driver.find_element(By.ID, "conv-title").text

    def tab(self, label: str):
        return self.driver.find_element(By.XPATH, f'//*[@class="tab-open"][starts-with(normalize-space(), "{label}")]')


@pytest.fixture(scope="session")
def chromium():
    """The browser's path. Skips locally when it is missing; under CI (CI set) that is a failure,
    so a CI that forgot to install the browser cannot pass by skipping."""
    reason = _missing()
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it")
    if reason:
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def open_page(chromium, server, tmp_path_factory):
    """open_page(path, width=, height=, on=server, mobile=, scheme="http", flags=()) -> a ChatPage in a
    fresh Chromium profile (with extra command-line `flags`), connected to `server` (or `on`) over
    `scheme`; every browser is closed at teardown."""
    drivers = []

    def start(path: str = "/", width: int = 1100, height: int = 750, on=None, mobile: bool = False,
              scheme: str = "http", flags: tuple = ()) -> ChatPage:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        profile = tmp_path_factory.mktemp("chromium")
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", *flags):
            options.add_argument(flag)
        try:
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except WebDriverException as exc:
            pytest.skip(f"Chromium would not start: {exc.msg}")
        drivers.append(driver)
        if mobile:  # a phone's viewport, not just a small window
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True})
        return ChatPage(driver, f"{scheme}://127.0.0.1:{(on or server).port}").open(path)

    yield start
    for driver in drivers:
        driver.quit()


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
