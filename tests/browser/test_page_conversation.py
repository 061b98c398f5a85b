"""The message box and the conversation in real browsers (Chromium and Firefox): Shift+Enter for a
new line, links that stay safe, day dividers, a sender's messages grouped, mentions of your nick
(look-alikes too), the nick you really have on a shared `?nick=` link, and a status that shows only
when it matters."""

import time
from types import SimpleNamespace

import pytest

from chatserver import protocol
from tests.browser.pages import ENTER, SHIFT

pytestmark = pytest.mark.browser

# The visible conversation's rows as the stylesheet draws them: grouped or not, its day, a mention.
READ_ROWS = """
return [...document.querySelectorAll('.pane:not([hidden]) .log li.msg')].map(li => ({
  text: li.querySelector('.text').textContent, cont: li.classList.contains('cont'),
  mention: li.classList.contains('mention'), day: li.dataset.day || null,
  fromShown: li.querySelector('.from').getClientRects()[0].width > 2,
}));"""
LONG_AGO = """
const day = new Date(Date.now() - 3 * 86400e3), options = {weekday: 'long', day: 'numeric', month: 'long'};
if (day.getFullYear() !== new Date().getFullYear()) options.year = 'numeric';
return day.toLocaleDateString([], options);"""
READ_LINKS = """
return [...document.querySelectorAll('.pane:not([hidden]) .log a')].map(a => ({
  href: a.getAttribute('href'), text: a.textContent, rel: a.rel, target: a.target}));"""


def test_the_message_box_and_how_messages_read(open_page, connect, monkeypatch):
    """Shift+Enter makes one two-line message; http(s) addresses become safe links and nothing else
    does; consecutive messages from one sender are grouped under one name; the first row of each day
    names it (a date, "Yesterday", "Today"); a message naming you (or a look-alike of your nick) is
    highlighted."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    for days_ago in (3, 1):  # the server stamps these as sent days ago
        monkeypatch.setattr(protocol, "time", SimpleNamespace(time=lambda d=days_ago: time.time() - d * 86400))
        bob.request(type="chat", room="lobby", text=f"{days_ago} days ago")
    monkeypatch.setattr(protocol, "time", time)
    ann = open_page("/?nick=ann#lobby")
    ann.wait_for_text("1 days ago")
    box = ann.message_box()
    box.send_keys("first line")
    box.send_keys(SHIFT, ENTER, SHIFT)  # Shift+Enter: a new line, not a send
    box.send_keys("second line", ENTER)
    ann.wait_for_text("first line\nsecond line")
    assert bob.recv_type("chat")["text"] == "first line\nsecond line"
    assert ann.value("message-input") == ""

    texts = ["see https://example.com/a_(b)?q=1&r=2. and http://example.org",
             "javascript:alert(1) https://ok.example/<b>x</b> data:text/html,hi",
             "hey ANN, look", "not for bi11 either"]
    for text in texts:
        bob.send(type="chat", room="lobby", text=text)
    ann.wait_for_text(texts[-1])
    links = ann.js(READ_LINKS)
    assert [link["href"] for link in links] == [
        "https://example.com/a_(b)?q=1&r=2", "http://example.org/", "https://ok.example/"]
    assert [link["text"] for link in links] == ["https://example.com/a_(b)?q=1&r=2", "http://example.org",
                                                "https://ok.example/"]
    assert all(link["rel"] == "noopener noreferrer" and link["target"] == "_blank" for link in links)
    assert ann.js("return document.querySelectorAll('.log b, .log script, .log img').length") == 0
    assert ann.texts()[3:] == texts  # every character still there, as text

    rows = ann.js(READ_ROWS)
    long_ago = ann.js(LONG_AGO)
    assert [row["day"] for row in rows] == [long_ago, "Yesterday", "Today"] + [None] * 4
    assert [row["cont"] for row in rows] == [False, False, False, False, True, True, True]  # bob's 4 grouped
    assert [row["fromShown"] for row in rows] == [True, True, True, True, False, False, False]
    assert [row["mention"] for row in rows] == [False] * 5 + [True, False]  # "bi11" is not ann

    ann.set_nick("bi11")
    ann.wait(lambda: ann.nick() == "bi11")
    bob.send(type="chat", room="lobby", text="@BILL: this one is for you")
    ann.wait_for_text("@BILL: this one is for you")
    assert ann.js(READ_ROWS)[-1]["mention"]


def test_the_nick_shown_is_the_nick_you_have_and_the_status_shows_when_it_matters(open_page, server):
    """Two tabs on one `?nick=sam` link: the second gets a guest nick, its header says so and the
    nick error names sam; while connected the status says nothing and takes no room."""
    first = open_page("/?nick=sam#lobby")
    first.wait(lambda: first.nick() == "sam")
    second = open_page("/?nick=sam#lobby")
    second.wait(lambda: second.nick().startswith("guest-"), "the second tab does not show its guest nick")
    error = second.wait(lambda: second.error("nick"), "no nick error")
    assert error.startswith("sam: ") and error.endswith(f"You are {second.nick()}.")
    assert second.js("return document.querySelector('#member-list .me').textContent") \
        == f"{second.nick()} (you)"
    for page in (first, second):
        assert page.status() == "" and not page.visible("status")
        assert not page.visible("nick-input") and not page.visible("join-input")
    second.say("which one am I?")
    second.wait_for_text("which one am I?")
    assert second.messages()[-1]["from"] == second.nick()
    server.shutdown(timeout=0.5)
    first.wait(lambda: first.visible("status") and first.status().startswith("Disconnected."), "no status")
