"""The browsers the page is tested in, behind one small interface, and the chat page as a test sees it.

- Chromium: Debian's `chromium` and `chromium-driver`, driven by selenium (WebDriver classic).
- Firefox: Debian's `firefox-esr`, driven over Marionette, its own remote protocol, by Mozilla's
  `marionette_driver` package (geckodriver is not packaged for Debian and would be a download).
Nothing here downloads a browser or a driver. The elements both drivers hand back share the
WebDriver element API the tests use: click(), send_keys(), text, rect, get_attribute(),
get_property(), find_element(by, value) with the same `by` strings.
"""

import contextlib
import gc
import shutil
import time
import warnings
from pathlib import Path

from tests.services import PortTaken, on_free_port, port_check

# WebDriver key codes (W3C WebDriver, "Keyboard actions"), the same for both drivers
ENTER, TAB, ESCAPE, CONTROL, SHIFT = "\ue007", "\ue004", "\ue00c", "\ue009", "\ue008"
HOME, END, LEFT, UP, RIGHT, DOWN = "\ue011", "\ue010", "\ue012", "\ue013", "\ue014", "\ue015"
ID, XPATH, CSS, TAG = "id", "xpath", "css selector", "tag name"

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)
ENGINES = ("chromium", "firefox")


def missing(engine: str) -> str | None:
    """Why `engine` cannot run here (one line, saying what to install), or None."""
    if engine == "chromium":
        if not importable("selenium"):
            return "selenium is not installed (pip install -r requirements-dev.txt)"
        if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
            return "no Chromium here (apt-get install chromium chromium-driver)"
    else:
        if not importable("marionette_driver"):
            return "marionette_driver is not installed (pip install -r requirements-dev.txt)"
        if not shutil.which(FIREFOX):
            return "no Firefox here (apt-get install firefox-esr)"
    return None


def importable(module: str) -> bool:
    try:
        with warnings.catch_warnings():  # mozinfo and mozrunner use deprecated stdlib APIs at import
            warnings.simplefilter("ignore", DeprecationWarning)
            __import__(module)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def quit_on_failure(browser):
    """A browser whose set-up fails after it started is quit before the error goes on (no test
    would quit it: it never reached the fixture's list)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            browser.quit()
        raise


class Chromium:
    """Chromium through selenium; `mobile` emulates a phone's viewport through DevTools."""

    def __init__(self, profile, width: int, height: int, mobile: bool, flags: tuple = ()):
        from selenium import webdriver

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", *flags):
            options.add_argument(flag)
        self.driver = on_free_port(
            lambda port: webdriver.Chrome(service=chromedriver_on(port, profile), options=options), "chromedriver")
        if mobile:
            with quit_on_failure(self):
                self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                            {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True})

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def find(self, by: str, value: str):
        return self.driver.find_element(by, value)

    def active(self):
        return self.driver.switch_to.active_element

    def title(self) -> str:
        return self.driver.title

    def alert_text(self) -> str | None:
        from selenium.common.exceptions import NoAlertPresentException

        try:
            return self.driver.switch_to.alert.text
        except NoAlertPresentException:
            return None

    def screenshot(self, path) -> None:
        self.driver.save_screenshot(str(path))

    def fresh_tab(self, origins) -> None:
        """Leave the browser as a new one is for the next test: one new tab, the others closed
        (with their documents, sessionStorage and scripts added through DevTools); cookies and the
        HTTP cache cleared, and all that `origins` ("http://127.0.0.1:PORT") stored. Raises the
        driver's errors (the browser is then to be quit)."""
        driver = self.driver
        old = driver.window_handles
        driver.switch_to.new_window("tab")
        new = driver.current_window_handle
        for handle in old:
            driver.switch_to.window(handle)
            driver.close()
        driver.switch_to.window(new)
        for origin in origins:
            driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"})
        driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})

    def quit(self) -> None:
        self.driver.quit()


class Firefox:
    """Firefox ESR over Marionette, headless, in a fresh profile. Its window is sized so that the
    viewport (innerWidth x innerHeight) is the size asked for, phone sizes included: Firefox's own
    minimum window width (500 px) is lifted in its chrome."""

    def __init__(self, profile, width: int, height: int, mobile: bool):
        self.m = on_free_port(lambda port: marionette_on(port, bin=FIREFOX, headless=True,
                                                         gecko_log=str(profile / "gecko.log"),
                                                         prefs={"network.proxy.type": 0}),
                              "Firefox's Marionette")
        with quit_on_failure(self):
            self.m.start_session()
            with self.m.using_context("chrome"):
                self.m.execute_script("document.documentElement.style.minWidth = '0px';")
            self.m.set_window_rect(width=width, height=height)
            inner = self.viewport()
            self.m.set_window_rect(width=2 * width - inner[0], height=2 * height - inner[1])
            if (inner := self.viewport()) != [width, height]:
                raise RuntimeError(f"Firefox's viewport is {inner}, not the {[width, height]} asked for")

    def viewport(self, timeout: float = 10.0) -> list[int]:
        """[innerWidth, innerHeight] in CSS px, once the document has the window's new size (its
        outerWidth and outerHeight are the window's): the document may learn of a resize after
        set_window_rect has returned."""
        rect = self.m.window_rect
        deadline = time.monotonic() + timeout
        while True:
            outer, inner = self.js("return [[outerWidth, outerHeight], [innerWidth, innerHeight]]")
            if outer == [rect["width"], rect["height"]]:
                return inner
            if time.monotonic() > deadline:
                raise RuntimeError(f"Firefox's document stays {outer} wide and high in a window of {rect}")
            time.sleep(0.05)

    def get(self, url: str) -> None:
        self.m.navigate(url)

    def js(self, script: str, *args):
        return self.m.execute_script(script, script_args=list(args), sandbox=None)  # the page's own globals

    def find(self, by: str, value: str):
        return self.m.find_element(by, value)

    def active(self):
        return self.m.get_active_element()

    def title(self) -> str:
        return self.m.title

    def alert_text(self) -> str | None:
        from marionette_driver.errors import NoAlertPresentException
        from marionette_driver.marionette import Alert

        try:
            return Alert(self.m).text
        except NoAlertPresentException:
            return None

    def screenshot(self, path) -> None:
        path.write_bytes(self.m.screenshot(format="binary"))

    def fresh_tab(self, origins) -> None:
        """Leave the browser as a new one is for the next test: one new tab, the others closed,
        and everything Firefox keeps for any site cleared (nsIClearDataService.CLEAR_ALL: storage,
        cookies, cache); `origins` is for Chromium's sake. Raises Marionette's errors (the browser
        is then to be quit)."""
        old = self.m.window_handles
        new = self.m.open(type="tab", focus=True)["handle"]
        for handle in old:
            self.m.switch_to_window(handle)
            self.m.close()
        self.m.switch_to_window(new)
        with self.m.using_context("chrome"):
            self.m.execute_async_script("const done = arguments[arguments.length - 1]; "
                                        "Services.clearData.deleteData(Ci.nsIClearDataService.CLEAR_ALL, done);")

    def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.m.cleanup()
        self.m = None
        gc.collect()  # the profile's finaliser runs now, not during interpreter shutdown


def chromedriver_on(port: int, profile):
    """selenium's Service for chromedriver on `port`, its output in `profile`. selenium takes
    whatever answers on the port for its chromedriver (another test's, say); this one counts as
    started only once chromedriver itself listens there, raises PortTaken when another process
    does or chromedriver says the port is in use, and then sends no shutdown request there."""
    from selenium.webdriver.chrome.service import Service

    log = profile / f"chromedriver-{port}.log"
    output = open(log, "wb")  # noqa: SIM115 - its stdout and stderr; closed by stop()

    class OwnPortService(Service):
        listening = False  # chromedriver itself listens on the port

        def _check(self) -> bool:
            return port_check(self.process.pid, port, "chromedriver", lambda: log.read_text(errors="replace"))

        def assert_process_still_running(self) -> None:
            if not self.listening and self.process.poll() is not None:
                self._check()  # PortTaken when it exited saying the port is in use
            super().assert_process_still_running()

        def is_connectable(self) -> bool:
            self.listening = self.listening or self._check()
            return self.listening and super().is_connectable()

        def send_remote_shutdown_command(self) -> None:
            if self.listening:  # never to another process on the port
                super().send_remote_shutdown_command()

        def stop(self) -> None:
            try:
                super().stop()
            finally:
                output.close()

    return OwnPortService(CHROMEDRIVER, port=port, log_output=output)


def marionette_on(port: int, **options):
    """marionette_driver's Marionette(host="127.0.0.1", port=port, **options), which starts
    Firefox. marionette_driver connects to whatever listens on the port (another test's Firefox,
    say), and waits out its whole start-up timeout when Firefox could not bind it; this one waits
    until Firefox itself listens there, and raises PortTaken, Firefox closed, when another process
    does or Firefox's log says it could not bind the port."""
    from marionette_driver.marionette import Marionette  # imported quietly by missing() before

    class OwnPortMarionette(Marionette):
        def raise_for_port(self, timeout=None, check_process_status=True):
            runner, log = self.instance.runner, Path(self.instance.gecko_log)

            def output() -> str:
                return log.read_text(errors="replace") if log.exists() else ""

            deadline = time.monotonic() + (timeout or self.startup_timeout)
            try:
                while not port_check(runner.process_handler.pid, self.port, "Firefox", output,
                                     taken_says=("could not bind to port",)):
                    if not runner.is_running() or time.monotonic() > deadline:
                        break  # marionette_driver's own check says what went wrong
                    time.sleep(0.05)
            except PortTaken:
                self.cleanup()
                raise
            return super().raise_for_port(timeout, check_process_status)

    return OwnPortMarionette(host="127.0.0.1", port=port, **options)


def chromium_only() -> str:
    """For tests that use Chromium's command-line flags or DevTools: "chromium", or a skip with one
    line when it is missing here (a failure under CI)."""
    import os

    import pytest

    reason = missing("chromium")
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it")
    if reason:
        pytest.skip(reason)
    return "chromium"


def launch(engine: str, profile, width: int, height: int, mobile: bool, flags: tuple = ()):
    """A browser of `engine`; `flags` are extra Chromium command-line flags (not for Firefox)."""
    if engine == "chromium":
        return Chromium(profile, width, height, mobile, flags)
    assert not flags, "command-line flags are Chromium's"
    return Firefox(profile, width, height, mobile)


# The visible conversation's messages and other lines, read straight from the DOM.
READ_MESSAGES = """
return [...document.querySelectorAll('.pane:not([hidden]) .log li.msg')].map(li => ({
  seq: li.dataset.seq ? Number(li.dataset.seq) : null,
  from: li.querySelector('.from').textContent,
  text: li.querySelector('.text').textContent,
}));"""
READ_LINES = """
return [...document.querySelectorAll('.pane:not([hidden]) .log li:not(.msg) .text')].map(s => s.textContent);"""
# The rooms the page has a tab for whose join is not answered yet: those not listed under "All rooms".
UNANSWERED_ROOMS = """
const listed = new Set([...document.querySelectorAll('#all-rooms button.link')].map(b => b.textContent));
const tabs = [...document.querySelectorAll('#my-rooms .tab-open')].map(b => b.firstChild?.textContent);
return tabs.filter(name => !listed.has(name));"""


class ChatPage:
    """One browser window on the chat page, with the reads and actions the tests need."""

    def __init__(self, browser, base_url: str, engine: str):
        self.browser = browser
        self.base_url = base_url
        self.engine = engine

    def open(self, path: str = "/", connected: bool = True) -> "ChatPage":
        """Load `path`; with `connected`, wait until the page is connected (online()) and every
        room it opened has its join answered (in_rooms()). When the address differs from the shown
        one by more than its fragment, first wait until the new document is the one shown: under
        load Marionette's navigate has been seen to return while the old document was still
        active, whose elements then went stale under the test."""
        url = self.base_url + path
        here = self.js("document.roomchatLeft = true; return location.href") or ""
        self.browser.get(url)
        if url.split("#")[0] != here.split("#")[0]:
            self.wait(lambda: self.js("return document.roomchatLeft !== true"), "the new page was never shown")
        if connected:
            self.wait(self.online, "the page never connected")
            self.in_rooms()
        return self

    def in_rooms(self) -> None:
        """Wait until every room the page has a tab for has its join answered. Until then the page
        keeps a message typed in the box ("Rejoining your rooms..."), shows no members, and a
        room's events may reach it as history (not live: no unread count, no notification). The
        page lists a room under "All rooms" once its `joined` came, or once the `rooms` reply
        came, which the server sends after every join it asked for before; so this holds for a
        page that has just loaded, not after a reconnect or a change of the address's fragment
        alone (the list still shows the rooms of before). A join refused at load, to a room
        nobody is in, leaves its tab unlisted: the wait then fails, naming the room."""
        self.wait(lambda: self.js(UNANSWERED_ROOMS) == [],
                  lambda: f"no answer to the join of {self.js(UNANSWERED_ROOMS)}")

    def wait(self, predicate, message="condition not met", timeout: float = 10.0):
        """Poll `predicate()` until it is truthy; return its value. An element it looks for that is
        not there yet (the drivers' NoSuchElementException) counts as not yet. `message` may be a
        function, called for the failure's text when the time is up (to say what was seen then)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except Exception as exc:
                if type(exc).__name__ not in ("NoSuchElementException", "StaleElementReferenceException",
                                              "StaleElementException"):  # selenium's and Marionette's names
                    raise
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{self._said(message)} (after {timeout:g} s)")
            time.sleep(0.05)

    @staticmethod
    def _said(message) -> str:
        """A wait's failure text: `message`, or what the function `message` says (a page being
        replaced may fail the reads it makes: then that, not a second error, is the text)."""
        if not callable(message):
            return message
        try:
            return message()
        except Exception as exc:
            return f"condition not met (the failure text could not be made: {type(exc).__name__}: {exc})"

    def js(self, script: str, *args):
        return self.browser.js(script, *args)

    def find(self, element_id: str):
        return self.browser.find(ID, element_id)

    def xpath(self, path: str):
        return self.browser.find(XPATH, path)

    def active(self):
        return self.browser.active()

    def press(self, *keys: str) -> None:
        """Press `keys` one after another, each on the element that has the focus when it comes
        (real key events, as a keyboard sends them: a handler may move the focus between two)."""
        for key in keys:
            self.active().send_keys(key)

    def focused(self) -> str:
        """The focused element's name: its aria-label, else its text; "" when nothing has the focus."""
        return self.js("const e = document.activeElement; return !e || e === document.body ? '' "
                       ": e.getAttribute('aria-label') || e.textContent.trim()")

    def roles(self, selector: str) -> list:
        """[role, [role of each button in it]] of the first element `selector` (CSS) finds."""
        return self.js("const e = document.querySelector(arguments[0]); return [e.getAttribute('role'), "
                       "[...e.querySelectorAll('button')].map(b => b.getAttribute('role'))]", selector)

    def wait_for_focus(self, name: str) -> None:
        """Wait until the element named `name` (focused()) has the focus."""
        self.wait(lambda: self.focused() == name, lambda: f"the focus is on {self.focused()!r}, not {name!r}")

    def member(self, nick: str):
        """`nick`'s button in the member list, once it is there: a page that has just opened
        shows the room's members only when its join has been answered."""
        return self.wait(lambda: self.xpath(f'//ul[@id="member-list"]//button[normalize-space()="{nick}"]'),
                         f"{nick} is not in the member list")

    def status(self) -> str:
        """The connection status's text ("" while connected with nothing to say, when it is hidden)."""
        return self.js("const s = document.getElementById('status'); "
                       "return s.hidden ? '' : document.getElementById('status-text').textContent")

    def online(self) -> bool:
        """Connected, and the status has nothing to say (so it is not shown). False while a fresh
        document is still being parsed (no status element yet)."""
        return self.js("const s = document.getElementById('status'); "
                       "return !!s && s.dataset.online === '1' && s.hidden")

    def nick(self) -> str:
        """The nick the header says we have."""
        return self.find("my-nick").text

    def set_nick(self, nick: str) -> None:
        """Open the nick form from the header, replace the nick and press Enter."""
        if not self.visible("nick-input"):
            self.find("nick-button").click()
        field = self.find("nick-input")
        field.clear()
        field.send_keys(nick, ENTER)

    def join_room(self, room: str) -> None:
        """Open the join form ("+ Join") and join `room` with Enter."""
        if not self.visible("join-input"):
            self.find("join-button").click()
        self.find("join-input").send_keys(room, ENTER)

    def value(self, element_id: str) -> str:
        return self.find(element_id).get_property("value")

    def error(self, where: str) -> str:
        """The error shown at "nick", "join" or "send"."""
        return self.js("return document.getElementById(arguments[0] + '-error').textContent", where)

    def message_box(self):
        """The input labelled "Message", found through its label as a person would."""
        return self.xpath('//*[@id=//label[normalize-space()="Message"]/@for]')

    def say(self, text: str) -> None:
        self.message_box().send_keys(text, ENTER)

    def say_when_back(self, text: str, timeout: float = 20.0) -> None:
        """Send `text` after a reconnect, as a person would: until the page has its nick and rooms
        back, Enter keeps the text in the box with a note that says so (the send error); press
        Enter again whenever no note is shown, until the box is empty (the text went out)."""
        self.message_box().send_keys(text)

        def sent() -> bool:
            if not self.error("send"):
                self.message_box().send_keys(ENTER)
            return self.value("message-input") == ""

        self.wait(sent, lambda: f"{text!r} never went out; the page says {self.error('send')!r}", timeout)

    def messages(self) -> list[dict]:
        """The shown room's messages; [] while a reload has no document to read (the script's
        answer is then null)."""
        return self.js(READ_MESSAGES) or []

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages()]

    def lines(self) -> list[str]:
        return self.js(READ_LINES) or []

    def wait_for_text(self, text: str, timeout: float = 10.0) -> None:
        self.wait(lambda: text in self.texts(), lambda: f"{text!r} never appeared; saw {self.texts()}", timeout)

    def wait_for_line(self, line: str, timeout: float = 10.0) -> None:
        self.wait(lambda: line in self.lines(), lambda: f"line {line!r} never appeared; saw {self.lines()}", timeout)

    def title(self) -> str:
        return self.find("conv-title").text

    def tab(self, label: str):
        return self.xpath(f'//*[@class="tab-open"][starts-with(normalize-space(), "{label}")]')

    def visible(self, element_id: str) -> bool:
        """Laid out and not hidden (display: none gives no box)."""
        return self.js("return document.getElementById(arguments[0]).getClientRects().length > 0", element_id)
