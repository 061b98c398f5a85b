"""The chat page's wire panel (?wire=1) in a real Chromium: the frames it sends and receives."""

import json

import pytest
from selenium.webdriver.common.by import By

from tests.browser.pages import chromium_only

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def engine() -> str:
    """This test records CSP violations through Chromium's DevTools: Chromium only."""
    return chromium_only()

READ_ROWS = """
return [...document.querySelectorAll('.wire .wire-row')].map(li => ({
  kind: li.className.replace('wire-row wire-', ''),
  dir: li.querySelector('.wire-dir').textContent,
  meta: li.querySelector('.wire-meta').textContent,
  payload: li.querySelector('.wire-payload') ? li.querySelector('.wire-payload').textContent : null,
}));"""

# Installed before the page's own scripts run (CDP), so every CSP violation of the load is seen.
RECORD_CSP = """window.cspViolations = [];
document.addEventListener('securitypolicyviolation', e => window.cspViolations.push(e.violatedDirective));"""


def frames(page, kind: str) -> list[dict]:
    """The payloads of the panel's sent ("out") or received ("in") rows, as JSON, with their rows."""
    return [(json.loads(r["payload"]), r) for r in page.js(READ_ROWS) if r["kind"] == kind]


def test_wire_panel_shows_frames_sent_and_received(open_page):
    """With ?wire=1 the panel lists the welcome received, the join sent, and a chat sent and its
    echo received, each with its direction, masking and byte length, under the page's CSP."""
    page = open_page("/?nick=ann&wire=1#lobby")
    page.browser.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP})
    page.open("/?nick=ann&wire=1&again#lobby")  # a new document, with the recorder from its first byte
    assert page.browser.driver.find_element(By.CSS_SELECTOR, ".wire h2").text.startswith("Wire")
    page.say("hello wire")
    page.wait_for_text("hello wire")

    def chat_both_ways():
        sent = [(p, r) for p, r in frames(page, "out") if p.get("type") == "chat"]
        got = [(p, r) for p, r in frames(page, "in") if p.get("type") == "chat"]
        return sent and got and (sent[-1], got[-1])

    (sent, sent_row), (echo, echo_row) = page.wait(chat_both_ways, "the chat is not in the wire panel")
    assert sent["text"] == echo["text"] == "hello wire" and echo["seq"] >= 1 and echo["id"] == sent["id"]
    assert sent_row["dir"] == "→ sent" and "masked (a client always masks)" in sent_row["meta"]
    assert echo_row["dir"] == "← received" and "unmasked" in echo_row["meta"]
    raw = next(r["payload"] for p, r in frames(page, "out") if p.get("type") == "chat")
    assert sent_row["meta"].endswith(f", {len(raw.encode())} bytes")
    received = [p["type"] for p, _r in frames(page, "in")]
    assert received[0] == "welcome" and "joined" in received
    join = next(p for p, _r in frames(page, "out") if p["type"] == "join")
    assert (join["type"], join["room"]) == ("join", "lobby")
    assert page.js("return window.cspViolations") == []


def test_no_wire_panel_without_the_parameter(open_page):
    """Without ?wire=1 the page has no panel and its WebSocket is the browser's own."""
    page = open_page("/#lobby")
    assert page.js("return document.querySelector('.wire')") is None
    assert page.js("return WebSocket.name") == "WebSocket"
