"""The chat page in real browsers (Chromium and Firefox): the address fragment, errors next to their
cause, the phone layout, the text limit in code points, the direct-message view, the favicon, no
inline script or style, and the nick asked for again after a drop the server has not noticed.
Resume tokens, identity tokens and `?nick=` links: test_page_identity.py."""

import urllib.request

import pytest

from tests.browser.pages import ENTER
from tests.helpers import restart

pytestmark = pytest.mark.browser

SET_MESSAGE = """
const box = document.getElementById('message-input');
box.value = arguments[0];
box.dispatchEvent(new Event('input', {bubbles: true}));"""


@pytest.mark.parametrize(("path", "room"), [("/#lobby%", "lobby"), ("/#caf%C3", "lobby"),
                                             ("/#%E0%A4%A,dev", "dev"), ("/#bad%20room,dev", "dev")])
def test_a_malformed_fragment_is_ignored_and_the_page_connects(open_page, path, room):
    """A #fragment that is not valid percent-encoding (or not a room name) is skipped: the page
    connects and opens the valid rooms named, else the lobby."""
    page = open_page(path)  # waits until it is connected
    page.wait(lambda: page.title() == room, f"{room} never opened")
    page.wait(lambda: page.find("my-rooms").text.split() == [room, "\u00d7"], "other rooms were opened")


def test_errors_show_next_to_their_cause_and_go_away(open_page, connect, server, make_server):
    """A taken nick is shown at the nick field, not under the message box, until the nick is
    edited or set; a refused message is shown at the message box until the conversation changes;
    a reconnect clears what no longer applies."""
    holder = connect()
    holder.set_nick("bob")
    ann = open_page("/?nick=ann#lobby")
    ann.set_nick("bob")
    nick = ann.find("nick-input")
    ann.wait(lambda: "taken" in ann.error("nick"), "no error at the nick field")
    assert ann.error("send") == "" and nick.get_attribute("aria-describedby") == "nick-error"
    nick.send_keys("by")
    assert ann.error("nick") == ""  # editing the field clears it
    nick.send_keys(ENTER)
    ann.wait(lambda: ann.nick() == "bobby" and "bobby" in ann.find("member-list").text)

    ann.join_room("no spaces allowed")
    assert "is not a room name" in ann.error("join") and ann.error("send") == ""
    ann.find("join-input").send_keys("!")
    assert ann.error("join") == "" and ann.value("join-input") == "no spaces allowed!"  # kept, to fix
    ann.find("join-input").clear()

    ann.say("x" * 2001)  # over the server's limit: refused at the message box
    ann.wait(lambda: ann.error("send") == "Text is 2001 characters; the limit is 2000.", "no error at the box")
    ann.join_room("dev")
    ann.wait(lambda: ann.title() == "dev")
    assert ann.error("send") == ""  # the conversation changed

    ann.set_nick("bob")
    ann.wait(lambda: "taken" in ann.error("nick"), "no error at the nick field")
    restart(make_server, server)
    ann.wait(lambda: ann.online() and ann.find("member-list").text, "no reconnect", timeout=20)
    ann.wait(lambda: ann.error("nick") == "", "the old error outlived the reconnect", timeout=20)
    assert ann.nick() == "bobby"


def test_phone_layout_fits_the_screen_with_rooms_in_a_drawer(open_page, connect):
    """At 390x844 the conversation and its input fit the viewport with no page scroll; the room
    list and members are behind a "Rooms" button, and picking a conversation closes it again."""
    ann = open_page("/?nick=ann#lobby", width=390, height=844, mobile=True)
    peer = connect()
    peer.join("lobby")
    for n in range(15):
        peer.send(type="chat", room="lobby", text=f"message {n}: " + "a few words to fill the screen " * 3)
    ann.wait(lambda: len(ann.messages()) == 15)
    assert ann.js("return [innerWidth, innerHeight]") == [390, 844]
    assert ann.js("return document.documentElement.scrollHeight") <= 844
    box = ann.message_box().rect
    assert box["y"] > 844 / 2 and box["y"] + box["height"] <= 844
    assert ann.js("return document.querySelector('.pane:not([hidden])').clientHeight") > 450
    assert not ann.visible("join-button") and not ann.visible("member-list")

    toggle = ann.find("drawer-toggle")
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    assert ann.visible("join-button") and ann.visible("member-list") and not ann.visible("message-input")
    ann.join_room("dev")
    ann.wait(lambda: ann.title() == "dev" and ann.visible("message-input"), "the drawer did not close")
    assert toggle.get_attribute("aria-expanded") == "false"
    toggle.click()
    ann.tab("lobby").click()
    ann.wait(lambda: ann.title() == "lobby" and ann.visible("message-input"))
    ann.say("sent from a phone")
    ann.wait_for_text("sent from a phone")


def test_text_limit_is_counted_in_code_points_like_the_server(open_page, make_server, connect):
    """max_text_chars emoji (twice as many UTF-16 units) can be sent; one more is refused at the
    message box before sending, and the text stays there."""
    strict = make_server(max_text_chars=10)
    ann = open_page("/?nick=ann#lobby", on=strict)
    peer = connect(strict.url)
    peer.join("lobby")
    assert ann.message_box().get_property("maxLength") < 0  # no UTF-16 cap on the box
    ann.js(SET_MESSAGE, "\U0001f600" * 10)
    ann.message_box().send_keys(ENTER)
    assert peer.recv_type("chat")["text"] == "\U0001f600" * 10
    ann.wait_for_text("\U0001f600" * 10)
    ann.js(SET_MESSAGE, "\U0001f600" * 11)
    assert ann.error("send") == "Text is 11 characters; the limit is 10."
    ann.message_box().send_keys(ENTER)
    assert ann.value("message-input") == "\U0001f600" * 11
    ann.js(SET_MESSAGE, "\U0001f600" * 9 + "!")
    assert ann.error("send") == ""
    ann.message_box().send_keys(ENTER)
    assert peer.recv_type("chat")["text"] == "\U0001f600" * 9 + "!"  # and not the refused one before it


def test_direct_messages_have_no_members_panel(open_page, connect):
    """A room shows its members beside the conversation; a direct-message view gives that space
    to the conversation instead of an empty panel."""
    ann = open_page("/?nick=ann#lobby")
    assert ann.visible("member-list")
    bob = connect()
    bob.set_nick("bob")
    bob.send(type="dm", to="ann", text="just us")
    ann.wait(lambda: ann.tab("@bob"), "no dm tab").click()
    ann.wait_for_text("just us")
    assert not ann.visible("members") and not ann.visible("members-title")
    right = ann.js("return document.querySelector('.conversation').getBoundingClientRect().right")
    assert right >= ann.js("return innerWidth") - 2
    ann.tab("lobby").click()
    ann.wait(lambda: ann.visible("member-list"))


def test_favicon_is_served_and_the_page_has_no_inline_code(open_page, server):
    """index.html names a favicon the server serves; nothing on the page is inline script or style
    (the page stays within a same-origin-only Content-Security-Policy)."""
    ann = open_page("/#lobby")
    href = ann.js("return document.querySelector('link[rel=icon]').href")
    assert href == f"http://127.0.0.1:{server.port}/static/favicon.svg"
    with urllib.request.urlopen(href, timeout=5) as reply:
        assert reply.status == 200 and reply.headers["Content-Type"] == "image/svg+xml"
        assert b"<svg" in reply.read()
    ann.say("hello")
    ann.wait_for_text("hello")
    inline = ann.js("""return [...document.querySelectorAll('[style], style, script:not([src])')]
                       .map(e => e.outerHTML.slice(0, 80))""")
    assert inline == []
    origins = ann.js("return [...document.querySelectorAll('[src], [href]')].map(e => e.src || e.href)")
    assert all(url.startswith(f"http://127.0.0.1:{server.port}/") for url in origins), origins


def test_nick_comes_back_after_a_silent_drop(open_page, relay, connect):
    """After a drop the server does not notice at once, a reconnect whose resume token the server
    does not know gets a guest nick: the page sends nothing as that guest, and takes its nick back
    as soon as the old connection is gone."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    ann = open_page("/?nick=ann#lobby", on=relay)
    relay.spend_resume_tokens = True
    relay.cut_client_side()
    ann.wait(lambda: "waiting for your nick ann" in ann.status(), "never waited for the nick", timeout=20)
    ann.say("as a guest?")
    assert "Waiting for your nick ann" in ann.error("send")
    relay.cut_server_side()
    ann.wait(lambda: ann.online() and ann.nick() == "ann", "nick not back")
    ann.wait(lambda: ann.error("send") == "", "the error outlived its cause")
    ann.message_box().send_keys(ENTER)  # what was kept in the box goes out now, as ann
    event = bob.recv_type("chat")
    assert (event["from"], event["text"]) == ("ann", "as a guest?")
