"""The chat page in real browsers (Chromium and Firefox): two users, presence, history, reconnects,
safety, keyboard use. Errors, layouts and the address: test_chat_page_fixes.py."""

import os

import pytest

from chatserver.engines.memory import MemoryEngine
from tests.browser.pages import CONTROL, ENTER, TAB, XPATH
from tests.helpers import FAST_LIMITS, ROOT, restart, server_with_chats

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "docs" / "chat.png"  # rewritten only when ROOMCHAT_SCREENSHOT=1, so runs leave the tree clean


def test_link_opens_room_as_nick_and_two_pages_chat(open_page, connect, tmp_path):
    """`/?nick=ann#lobby` opens lobby as ann; two pages see each other's messages and presence."""
    ann = open_page("/?nick=ann#lobby")
    assert ann.title() == "lobby"
    ann.wait(lambda: ann.nick() == "ann")
    bob = open_page("/?nick=bob#lobby")
    ann.wait_for_line("bob joined")
    assert connect().request(type="who", room="lobby")["members"] == ["ann", "bob"]

    ann.say("hi bob, welcome to the lobby")
    bob.wait_for_text("hi bob, welcome to the lobby")
    bob.say("thanks ann! glad to be here")
    ann.wait_for_text("thanks ann! glad to be here")
    ann.say("shall we try the history and reconnect next?")
    for page in (ann, bob):  # ann's own chat comes back to her page too, on its own
        page.wait_for_text("shall we try the history and reconnect next?")
        assert [(m["seq"], m["from"]) for m in page.messages()] == [(1, "ann"), (2, "bob"), (3, "ann")]
    members = ann.find("member-list").text
    assert "ann (you)" in members and "bob" in members
    ann.wait(lambda: "2 members" in ann.find("all-rooms").text, "room list lacks counts")

    chromium_doc = os.environ.get("ROOMCHAT_SCREENSHOT") == "1" and ann.engine == "chromium"
    shot = SCREENSHOT if chromium_doc else tmp_path / "chat.png"
    ann.browser.screenshot(shot)
    assert shot.stat().st_size > 10_000

    bob.tab("lobby").find_element(XPATH, "following-sibling::button").click()  # "Leave lobby"
    ann.wait_for_line("bob left")
    assert "bob" not in ann.find("member-list").text


def test_markup_in_messages_stays_text(open_page, connect):
    """A message like <img src=x onerror=...> shows those characters and runs nothing."""
    ann = open_page("/?nick=ann#lobby")
    peer = connect()
    peer.join("lobby")
    evil = ["<img src=x onerror=alert(1)>", "<script>window.pwned=1</script>", "<b onmouseover=alert(2)>bold</b>"]
    for text in evil:
        peer.send(type="chat", room="lobby", text=text)
    ann.wait_for_text(evil[-1])
    assert ann.texts() == evil
    assert ann.js("return document.querySelectorAll('.log img, .log script, .log b').length") == 0
    assert ann.js("return window.pwned") is None
    assert ann.browser.alert_text() is None


def test_reconnect_after_server_restart_has_no_gap_and_no_duplicate(open_page, server, make_server, connect):
    """After a restart the pages reconnect, fetch what they missed, and show each seq once, in order."""
    ann = open_page("/?nick=ann#lobby")
    bob = open_page("/?nick=bob#lobby")
    for n in range(1, 4):  # each stored (back on its sender's page) before the next is sent, so in this order
        speaker = ann if n % 2 else bob
        speaker.say(f"before {n}")
        speaker.wait_for_text(f"before {n}")
    ann.wait_for_text("before 3")
    bob.wait_for_text("before 3")

    restarted = restart(make_server, server)
    carol = connect(restarted.url)  # talks before the pages are back: they must fetch it on resume
    carol.join("lobby")
    carol.send(type="chat", room="lobby", text="while you were away")
    for page in (ann, bob):
        page.wait_for_line("Connection lost.")
        page.wait(lambda p=page: p.online(), "no reconnect", timeout=20)
        page.wait_for_text("while you were away")
    bob.say("after the restart")
    ann.wait_for_text("after the restart")

    expected = ["before 1", "before 2", "before 3", "while you were away", "after the restart"]
    for page in (ann, bob):
        page.wait(lambda p=page: len(p.messages()) == 5, "wrong message count")
        assert [m["seq"] for m in page.messages()] == [1, 2, 3, 4, 5]
        assert page.texts() == expected


def test_new_epoch_reloads_rooms(open_page, server, make_server):
    """When the restarted server has another epoch, the page reloads the room instead of resuming."""
    ann = open_page("/?nick=ann#lobby")
    ann.say("from the old server")
    ann.wait_for_text("from the old server")
    restart(make_server, server, engine=MemoryEngine())
    ann.wait_for_line("The server started afresh; earlier messages are gone.", timeout=20)
    ann.wait(lambda: ann.online(), "no reconnect")
    ann.say_when_back("first on the new server")  # online before its nick and room are back
    ann.wait_for_text("first on the new server")
    assert [(m["seq"], m["text"]) for m in ann.messages()] == [(1, "first on the new server")]


def test_long_absence_shows_the_latest_then_older_pages(open_page, make_server, connect):
    """Missing more than a resume replays: the page shows the latest page, and scrolling up fills in."""
    first = make_server(**FAST_LIMITS)
    ann = open_page("/?nick=ann#lobby", on=first)
    ann.say("before the outage")
    ann.wait_for_text("before the outage")
    port, store = first.port, first.engine
    first.shutdown(timeout=0.5)
    elsewhere = make_server(engine=store, **FAST_LIMITS)  # another port: the page cannot come back yet
    peer = connect(elsewhere.url)
    peer.join("lobby")
    missed = peer.chat_all("lobby", [f"missed {n}" for n in range(2, 1102)])
    assert [e["seq"] for e in missed] == list(range(2, 1102))
    elsewhere.shutdown(timeout=0.5)
    make_server(engine=store, port=port, **FAST_LIMITS)

    ann.wait_for_line("Many messages came while you were away; showing the latest. Scroll up for older ones.", 30)
    ann.wait(lambda: len(ann.messages()) == 50, "the latest page never came")
    assert [m["seq"] for m in ann.messages()] == list(range(1052, 1102))
    ann.js("document.querySelector('.pane:not([hidden])').scrollTop = 0")
    ann.wait(lambda: len(ann.messages()) == 100, "scrolling up did not load older messages")
    assert [m["seq"] for m in ann.messages()] == list(range(1002, 1102))


def test_history_on_join_and_older_pages_on_scroll(open_page, make_server, connect):
    """Joining shows the last 50 messages; scrolling to the top loads older ones until the beginning."""
    busy = server_with_chats(make_server, connect, [f"message {n}" for n in range(1, 121)])
    ann = open_page("/?nick=ann#lobby", on=busy)
    ann.wait(lambda: len(ann.messages()) == 50, "join did not show 50 messages")
    assert ann.messages()[0]["seq"] == 71

    scroll_top = "document.querySelector('.pane:not([hidden])').scrollTop = 0"
    ann.js(scroll_top)
    ann.wait(lambda: len(ann.messages()) == 100, "scrolling up did not load older messages")
    ann.js(scroll_top)
    ann.wait(lambda: len(ann.messages()) == 120, "the second page never came")
    assert [m["seq"] for m in ann.messages()] == list(range(1, 121))
    assert ann.js("return getComputedStyle(document.querySelector('.pane:not([hidden]) .log'), '::before').content")


def test_unread_counts_and_direct_messages(open_page, connect):
    """Rooms out of view count unread messages; a direct message opens its own pane."""
    ann = open_page("/?nick=ann#dev,lobby")
    assert ann.title() == "dev"
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    bob.send(type="chat", room="lobby", text="ping in lobby")
    bob.send(type="chat", room="lobby", text="second ping")
    ann.wait(lambda: "2 unread" in ann.tab("lobby").text.replace("\n", " "), "no unread count on lobby")
    ann.wait(lambda: ann.browser.title() == "(2) roomchat", "no unread count in the title")
    ann.tab("lobby").click()
    assert ann.title() == "lobby" and "unread" not in ann.tab("lobby").text

    bob.send(type="dm", to="ann", text="psst, a secret")
    ann.wait(lambda: "1 unread" in ann.tab("@bob").text.replace("\n", " "), "no dm tab with an unread count")
    ann.tab("@bob").click()
    ann.wait_for_text("psst, a secret")
    ann.say("secret received")
    reply = bob.recv_type("dm")
    while reply["from"] != "ann":
        reply = bob.recv_type("dm")
    assert (reply["to"], reply["text"]) == ("bob", "secret received")
    assert ann.title() == "Direct messages with bob"


def test_server_errors_show_next_to_the_input(open_page, connect):
    """A refused message shows the server's sentence by the message box and goes back into it."""
    ann = open_page("/?nick=ann#lobby")
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")  # so that the server's member list below says when it has let bob go
    bob.send(type="dm", to="ann", text="hi, I will be gone soon")
    ann.wait(lambda: "@bob" in ann.find("my-dms").text, "no dm tab")
    ann.tab("@bob").click()
    bob.close()
    ann.wait(lambda: "bob" not in str(connect().request(type="who", room="lobby")["members"]))
    ann.say("are you still there?")
    error = ann.wait(lambda: ann.error("send"), "no error shown")
    assert error == "Nobody called 'bob' is connected."
    assert ann.message_box().get_property("value") == "are you still there?"
    assert "send-error" in ann.message_box().get_attribute("aria-describedby").split()


def test_keyboard_alone_sets_nick_joins_and_sends(open_page, connect):
    """Enter on the nick and join buttons opens their forms with the field focused, and Enter submits
    them; tab order runs nick, room, conversations, message box; the skip link reaches the box."""
    ann = open_page("/#lobby")
    focus = "document.getElementById(arguments[0]).focus()"  # where Tab would bring it (the walk below)
    focused = "return document.activeElement.id"
    ann.js(focus, "nick-button")
    ann.active().send_keys(ENTER)
    ann.wait(lambda: ann.js(focused) == "nick-input", "the nick field did not get the focus")
    ann.active().send_keys(CONTROL, "a")
    ann.active().send_keys("kim", ENTER)
    ann.wait(lambda: connect().request(type="who", room="lobby")["members"] == ["kim"], "nick not set")
    ann.wait(lambda: not ann.visible("nick-input") and ann.nick() == "kim", "the nick form did not close")
    ann.js(focus, "join-button")
    ann.active().send_keys(ENTER)
    ann.wait(lambda: ann.js(focused) == "join-input", "the room field did not get the focus")
    ann.active().send_keys("help", ENTER)
    ann.wait(lambda: ann.title() == "help")
    assert ann.active() == ann.message_box()
    ann.active().send_keys("typed without a mouse", ENTER)
    ann.wait_for_text("typed without a mouse")

    order = []
    ann.open("/?again#help")  # a fresh document (Tab starts from its top), in its rooms: fewer lists redrawn below
    # The first element Tab reaches from the top (the first focusable one in document order), then
    # the walk from it: a Tab into a document that has no focus yet is lost in Firefox under load.
    first = ann.js("""return [...document.querySelectorAll('a[href], button, input, textarea, select, [tabindex]')]
                      .find((e) => e.tabIndex >= 0 && !e.disabled && e.getClientRects().length).id""")
    ann.js(focus, first)
    for _ in range(20):  # past the message box (the search box and the message menu come before it)
        for attempt in range(3):  # the room and member lists re-render as events arrive: an element may go stale
            try:
                active = ann.active()
                name = active.get_attribute("id") or active.get_attribute("aria-label") or active.text
                active.send_keys(TAB)
                break
            except Exception as exc:  # selenium's and Marionette's own names for a stale element
                if "Stale" not in type(exc).__name__ or attempt == 2:
                    raise
        order.append(name)
    assert order[0] == "skip-link"
    assert order.index("nick-button") < order.index("join-button") < order.index("message-input")
    assert order.index("Leave lobby") < order.index("message-input")
    ann.find("skip-link").send_keys(ENTER)
    assert ann.active() == ann.message_box()
    assert ann.js("return location.hash") == "#help"


def test_narrow_screen_has_no_horizontal_scroll(open_page, connect):
    """At 375 px wide the page never scrolls sideways, even with long words, and the box is usable."""
    ann = open_page("/?nick=ann#lobby", width=375, height=740, mobile=True)
    peer = connect()
    peer.join("lobby")
    peer.send(type="chat", room="lobby", text="x" * 300)
    peer.send(type="chat", room="lobby", text="https://example.invalid/" + "a-very-long-path/" * 20)
    ann.find("drawer-toggle").click()
    ann.join_room("a-room-with-a-rather-long-name." + "z" * 30)
    ann.find("drawer-toggle").click()
    ann.tab("lobby").click()
    ann.wait(lambda: len(ann.messages()) == 2)
    assert ann.js("return window.innerWidth") == 375
    assert ann.js("return document.documentElement.scrollWidth") <= 375
    assert ann.js("return document.body.scrollWidth") <= 375
    box = ann.message_box().rect
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375 and box["width"] > 150
    ann.say("fits on a phone")
    ann.wait_for_text("fits on a phone")
