"""The chat page on a network, in a real Chromium: its CSP, pages of other origins, DNS rebinding, https."""

import pytest
from selenium.webdriver.common.by import By

from tests.browser.pages import chromium_only

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def engine() -> str:
    """These tests use Chromium's command-line flags and DevTools: Chromium only (the page's own
    tests run in Firefox too)."""
    return chromium_only()

# Installed before the page's own scripts run (CDP), so every CSP violation of the load is seen.
RECORD_CSP = """window.cspViolations = [];
document.addEventListener('securitypolicyviolation', e => window.cspViolations.push(e.violatedDirective));"""

# A page on another origin that tries to open a WebSocket to roomchat on ?port=N.
OTHER_ORIGIN_PAGE = """<!doctype html><title>waiting</title><script>
const ws = new WebSocket("ws://127.0.0.1:" + new URLSearchParams(location.search).get("port") + "/");
ws.onopen = () => { document.title = "open"; };
ws.onclose = (e) => { if (document.title !== "open") document.title = "refused " + e.code; };
</script>"""


def test_chat_page_works_under_its_csp(open_page):
    """With the CSP on, the page connects and chats with no violation; an inline script that the
    page did not ship is refused (so the recorder would have seen one)."""
    page = open_page("/#lobby")
    page.browser.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP})
    page.open("/?again#lobby")  # a new document, with the recorder in place from its first byte
    page.say("hello under a strict CSP")
    page.wait_for_text("hello under a strict CSP")
    assert page.js("return window.cspViolations") == []
    page.js("const s = document.createElement('script'); s.textContent = 'window.ran = 1'; document.body.append(s);")
    page.wait(lambda: page.js("return window.cspViolations").count("script-src-elem") == 1, "no violation recorded")
    assert page.js("return window.ran") is None


def test_page_of_another_origin_cannot_open_a_websocket(open_page, server, make_server, other_site, caplog):
    """A page served from another origin (another port) gets no WebSocket to roomchat; the same page
    gets one from a server started with --allow-origin for it."""
    page = open_page("/")
    site = other_site(OTHER_ORIGIN_PAGE)
    page.browser.driver.get(f"{site}?port={server.port}")
    page.wait(lambda: page.browser.driver.title != "waiting", "the other page never finished")
    assert page.browser.driver.title == "refused 1006"
    origin = site.rstrip("/")
    assert f"refused a WebSocket from Origin '{origin}' (403); to allow it: --allow-origin {origin}" in caplog.text

    allowing = make_server(allow_origin=(origin,))
    page.browser.driver.get(f"{site}?port={allowing.port}")
    page.wait(lambda: page.browser.driver.title != "waiting", "the other page never finished")
    assert page.browser.driver.title == "open"


def test_rebinding_name_gets_400_in_the_browser(open_page, server):
    """A name that resolves to the server but is not one of its names (DNS rebinding) gets 400."""
    page = open_page("/", flags=("--host-resolver-rules=MAP rebind.test 127.0.0.1",))
    page.browser.driver.get(f"http://rebind.test:{server.port}/")
    assert page.browser.driver.find_element(By.TAG_NAME, "body").text == "this server does not answer to that Host name"


def test_page_over_https_chats_over_wss(open_page, tls_server, tls_files):
    """Loaded over https from a server with --certfile (Chromium trusting only that certificate's
    key), the page connects with wss and chats."""
    page = open_page("/#lobby", on=tls_server, scheme="https",
                     flags=(f"--ignore-certificate-errors-spki-list={tls_files.spki}",))
    assert page.js("return location.protocol") == "https:"
    page.say("hello over wss")
    page.wait_for_text("hello over wss")
