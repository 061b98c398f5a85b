"""The chat page's identity in real browsers (Chromium and Firefox): the nick and rooms come back
after a silent drop through the resume token, an identity token in the address (also with
--require-token), and a `?nick=` link that applies to its tab only."""

import time

import pytest

from tests.helpers import SECRET, events_until, token, wait_for

pytestmark = pytest.mark.browser

# Put in place of the page's WebSocket: every socket the page opens is logged with when it was
# opened (performance.now(), ms) and each event it received (when, type, nick, resumed, room).
LOG_SOCKETS = """
window.socketLog = [];
const Base = window.WebSocket;
window.WebSocket = class extends Base {
  constructor(...args) {
    super(...args);
    const entry = {url: String(args[0]), opened: performance.now(), events: []};
    window.socketLog.push(entry);
    this.addEventListener("message", (e) => {
      const ev = JSON.parse(e.data);
      entry.events.push({at: performance.now(), type: ev.type, nick: ev.nick || null, resumed: !!ev.resumed,
                         room: ev.room || null});
    });
  }
};"""


def test_silent_drop_resumes_nick_and_rooms_without_a_flap(open_page, relay, connect):
    """A connection that goes silent (no FIN) is found dead by the page's ping (?ping=1,1: within
    about 2 s); the page reconnects with its resume token and is ann again in lobby at once (its
    first events on the new socket, well before a nick wait's 4 s), with what was said meanwhile;
    bob, in the room, sees no leave or join, and ann sends no second nick request."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    ann = open_page("/?nick=ann&ping=1,1#lobby", on=relay)
    ann.wait(lambda: "ann (you)" in ann.find("member-list").text, "ann never joined")
    assert bob.recv_type("presence")["nick"] == "ann"
    ann.js(LOG_SOCKETS)
    silent_at = time.monotonic()
    relay.go_silent()
    bob.send(type="chat", room="lobby", text="while you were gone")
    ann.wait_for_text("while you were gone", timeout=15)
    found_after = time.monotonic() - silent_at
    sockets = ann.js("return window.socketLog")
    assert len(sockets) == 1 and "resume=" in sockets[0]["url"], sockets
    welcome, joined = sockets[0]["events"][:2]
    assert (welcome["type"], welcome["nick"], welcome["resumed"]) == ("welcome", "ann", True)
    assert (joined["type"], joined["room"]) == ("joined", "lobby")
    # Bounds far from what they guard against, so that a loaded machine does not reach them: a
    # resume that waited for the nick took 4 s here, and the page's default pings (15 + 5 s) find
    # a drop after 20 s. (A page that waits for its nick also shows in `resumed` and in `nick`.)
    assert joined["at"] - sockets[0]["opened"] < 2500
    assert found_after < 12  # ping_interval + ping_timeout + the first backoff, and slack
    assert ann.online() and ann.nick() == "ann"

    ann.say("back again")
    events = events_until(bob, lambda e: e.get("text") == "back again")
    # bob's own, then ann's (typing it, ann's page says so first): no presence
    assert [e["type"] for e in events if e["type"] != "typing"] == ["chat", "chat"]
    assert events[-1]["from"] == "ann"
    assert [e["type"] for e in sockets[0]["events"]].count("nick") == 0
    assert bob.request(type="who", room="lobby")["members"] == ["bob", "ann"]


def test_a_token_in_the_address_connects_and_leaves_the_address(open_page, make_server):
    """With --require-token, /?token=JWT connects as the token's nick; the token leaves the
    address bar (kept in the tab's sessionStorage, so loading the page again in that tab still
    connects) and the nick the browser remembers is not touched. Without a token the page says
    the server refused it."""
    strict = make_server(token_secret=SECRET, require_token=True)
    signed = token("ann", rooms=["lobby"])
    ann = open_page(f"/?token={signed}#lobby", on=strict)
    ann.wait(lambda: "ann (you)" in ann.find("member-list").text, "not ann in lobby")
    assert ann.js("return location.search + location.hash") == "#lobby"
    assert ann.js("return sessionStorage.getItem('roomchat.token')") == signed
    assert ann.js("return localStorage.getItem('roomchat.nick')") is None
    ann.say("signed in")
    ann.wait_for_text("signed in")
    ann.open("/?again#lobby")  # the tab loads the page again, without the token in its address
    ann.wait(lambda: ann.nick() == "ann", "not ann after loading the page again")
    ann.wait(lambda: ann.texts() == ["signed in"], f"the room's history not shown again: {ann.texts()}")

    anonymous = open_page("/#lobby", on=strict, connected=False)
    anonymous.wait(lambda: "The server refused the connection (a token may be required)." in anonymous.status(),
                   f"no refusal shown; status {anonymous.status()!r}")
    assert anonymous.visible("reconnect-now")


def test_a_nick_link_applies_to_its_tab_only(open_page, connect):
    """/?nick=ann#r1,r2 opens the page as ann in r1 and r2 for that visit, without replacing the
    nick and rooms the browser remembers: the address without ?nick= is zed in home again."""
    page = open_page("/#home")
    page.set_nick("zed")
    page.wait(lambda: "zed (you)" in page.find("member-list").text, "zed never set")

    page.open("/?nick=ann#r1,r2")
    page.wait(lambda: page.nick() == "ann" and "ann (you)" in page.find("member-list").text)
    assert page.find("my-rooms").text.split() == ["r1", "\u00d7", "r2", "\u00d7"]
    assert page.visible("nick-scope") and page.find("nick-scope").text == "this tab"
    peer = connect()
    assert peer.request(type="who", room="r1")["members"] == ["ann"]
    wait_for(lambda: peer.request(type="who", room="home").get("members") == [], timeout=10, interval=0.3)  # old page
    assert page.js("return [localStorage.getItem('roomchat.nick'), localStorage.getItem('roomchat.rooms')]") \
        == ["zed", '["home"]']

    page.open("/")
    page.wait(lambda: page.nick() == "zed" and "zed (you)" in page.find("member-list").text)
    assert page.find("my-rooms").text.split() == ["home", "\u00d7"]
    assert not page.visible("nick-scope")


def test_a_page_replaced_by_a_newer_connection_does_not_reconnect(open_page, make_server, peers):
    """Another connection with the same token takes the nick (close 4002 for the page): the page
    says so and does not reconnect by itself (two tabs would take the nick from each other
    forever); "Reconnect now" does."""
    signed_server = make_server(token_secret=SECRET)
    ann = open_page(f"/?token={token('ann')}#lobby", on=signed_server)
    ann.wait(lambda: "ann (you)" in ann.find("member-list").text, "not ann in lobby")
    other = peers(f"{signed_server.url}?token={token('ann')}")
    ann.wait(lambda: "replaced by a newer one" in ann.status(), f"status {ann.status()!r}")
    time.sleep(1.5)  # three times the longest first backoff: a reconnect would have taken the nick back
    assert other.request(type="ping") == {"type": "pong"} and "replaced by a newer one" in ann.status()
    assert other.request(type="who", room="lobby")["members"] == []
    other.close()
    ann.find("reconnect-now").click()
    ann.wait(lambda: ann.online() and "ann (you)" in ann.find("member-list").text, "no reconnect")
