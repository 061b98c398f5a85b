"""A team's chat on the page in real browsers (Chromium and Firefox): edit, delete and reactions
seen live on a second page, after a reload and after a silent drop (resumed with `after`), the
typing line, unread counts from read marks on another device, @mentions, search with more pages,
notifications asked only on a click, direct messages that waited for their recipient, and the
same page on Redis."""

import pytest

from tests.browser.pages import CONTROL, DOWN, END, ENTER, ESCAPE, HOME, LEFT, RIGHT, TAB, UP
from tests.helpers import SECRET, token, with_token

pytestmark = pytest.mark.browser

READ_ROWS = """
return [...document.querySelectorAll('.pane:not([hidden]) .log li.msg')].map(li => ({
  seq: Number(li.dataset.seq), text: li.querySelector('.text').textContent,
  edited: !li.querySelector('.edited').hidden, deleted: li.classList.contains('deleted'),
  chips: [...li.querySelectorAll('.chip')].map(c => [c.textContent, c.title, c.getAttribute('aria-pressed')]),
}));"""


def rows(page) -> list[dict]:
    return page.js(READ_ROWS)


def row_of(page, text: str) -> dict | None:
    return next((r for r in rows(page) if r["text"] == text), None)


def open_menu(page, seq: int) -> list[str]:
    """Focus message `seq`'s actions button (as Tab would) and press Enter; the menu's labels."""
    button = page.browser.find("css selector", f'.pane:not([hidden]) li.msg[data-seq="{seq}"] .msg-actions')
    page.js("arguments[0].focus()", button)
    button.send_keys(ENTER)
    page.wait(lambda: page.js("return !!document.querySelector('.msg-menu')"), "the message menu did not open")
    return page.js("return [...document.querySelectorAll('.msg-menu button')].map(b => b.getAttribute('aria-label')"
                   " || b.textContent)")


def menu_button(page, label: str):
    return page.xpath(f'//ul[@class="msg-menu"]//button[@aria-label="{label}" or normalize-space()="{label}"]')


def test_edit_react_and_delete_show_live_on_another_page(open_page):
    """ann edits her message from its menu (keyboard only) and both pages show the new text with
    "(edited)"; bob reacts from the menu and ann toggles the same emoji by its chip (counts and
    names on both pages); bob's menu on ann's message has no Edit or Delete; ann deletes it and
    both pages say "message deleted"."""
    ann = open_page("/?nick=ann#lobby")
    bob = open_page("/?nick=bob#lobby")
    ann.wait_for_line("bob joined")
    ann.say("helo team")
    for page in (ann, bob):
        page.wait(lambda p=page: row_of(p, "helo team"), "the chat never came")
    seq = row_of(ann, "helo team")["seq"]

    assert "Edit" in open_menu(ann, seq) and "Delete" in menu_button(ann, "Delete").text
    menu_button(ann, "Edit").click()
    box = ann.wait(lambda: ann.js("return document.activeElement.classList.contains('edit-box')") and ann.active(),
                   "the edit box did not get the focus")
    box.send_keys(CONTROL, "a")
    box.send_keys("hello team", ENTER)
    for page in (ann, bob):
        page.wait(lambda p=page: (row_of(p, "hello team") or {}).get("edited"), "the edit is not shown as edited")

    labels = open_menu(bob, seq)
    assert "React with 👍" in labels and "Edit" not in labels and "Delete" not in labels
    menu_button(bob, "React with 👍").click()
    for page in (ann, bob):
        page.wait(lambda p=page: row_of(p, "hello team")["chips"] == [["👍 1", "👍 bob",
                                                                      "true" if p is bob else "false"]],
                  "bob's reaction is not shown")
    ann.xpath('//li[contains(@class, "msg")]//button[@class="chip"]').click()  # ann adds hers by the chip
    for page in (ann, bob):  # ann's page too: her reaction comes back to it and redraws the chip clicked next
        page.wait(lambda p=page: row_of(p, "hello team")["chips"] == [["👍 2", "👍 bob, ann", "true"]],
                  "ann's reaction")
    ann.xpath('//li[contains(@class, "msg")]//button[@class="chip"]').click()  # and takes it back
    for page in (ann, bob):
        page.wait(lambda p=page: row_of(p, "hello team")["chips"] == [["👍 1", "👍 bob",
                                                                      "true" if p is bob else "false"]],
                  "ann's reaction stays")

    open_menu(ann, seq)
    menu_button(ann, "Delete").click()
    ann.wait(lambda: ann.js("return document.activeElement.textContent") == "Delete", "no confirmation asked")
    ann.active().send_keys(ENTER)
    for page in (ann, bob):
        page.wait(lambda p=page: (row_of(p, "message deleted") or {}).get("deleted"), "the delete is not shown")
        assert row_of(page, "message deleted")["chips"] == []


def test_the_message_menu_works_with_the_arrow_keys(open_page):
    """The message menu is a menu (role menu, its actions menuitems) that works as desktop menus do:
    opened from the keyboard its first reaction has the focus; Down/Right and Up/Left move and wrap,
    Home and End jump; Escape closes it and gives the focus back to its "⋯"; Enter on a reaction
    sends it (its chip shows), Enter on Edit opens the edit box, Enter on Delete asks (the arrows
    move between Delete and Cancel; Escape deletes nothing); Tab closes it and moves on."""
    ann = open_page("/?nick=ann#lobby")
    ann.say("arrow keys")
    ann.wait(lambda: row_of(ann, "arrow keys"), "the chat never came")
    seq = row_of(ann, "arrow keys")["seq"]
    opener = "Actions for the message from ann"
    menu_open = "return !!document.querySelector('.msg-menu')"

    labels = open_menu(ann, seq)
    assert len(labels) == 8 and labels[0] == "React with 👍" and labels[-2:] == ["Edit", "Delete"]
    assert ann.roles(".msg-menu") == ["menu", ["menuitem"] * 8]
    ann.wait_for_focus(labels[0])
    for key, name in ((DOWN, labels[1]), (RIGHT, labels[2]), (LEFT, labels[1]), (UP, labels[0]),
                      (UP, "Delete"), (DOWN, labels[0]), (END, "Delete"), (HOME, labels[0])):
        ann.press(key)
        ann.wait_for_focus(name)
    ann.press(ESCAPE)
    ann.wait(lambda: not ann.js(menu_open), "Escape left the menu open")
    ann.wait_for_focus(opener)
    assert ann.active().get_attribute("aria-expanded") == "false"

    open_menu(ann, seq)
    ann.press(DOWN, DOWN)
    ann.wait_for_focus(labels[2])
    ann.press(ENTER)
    ann.wait(lambda: row_of(ann, "arrow keys")["chips"] == [["😄 1", "😄 ann", "true"]], "the reaction is not shown")
    assert not ann.js(menu_open)
    ann.wait_for_focus(opener)

    open_menu(ann, seq)
    ann.press(END, UP)
    ann.wait_for_focus("Edit")
    ann.press(ENTER)
    ann.wait_for_focus("Edit your message")
    ann.press(" work", ENTER)  # the box starts with the text, the caret at its end
    ann.wait(lambda: (row_of(ann, "arrow keys work") or {}).get("edited"), "the edit is not shown")

    open_menu(ann, seq)  # Delete asks first, in the same menu: the arrows move between its answers
    ann.press(END, ENTER)
    ann.wait(lambda: ann.js("return document.activeElement.textContent") == "Delete", "no confirmation asked")
    for key, name in ((DOWN, "Cancel"), (DOWN, "Delete"), (UP, "Cancel")):
        ann.press(key)
        ann.wait_for_focus(name)
    ann.press(ESCAPE)
    ann.wait(lambda: not ann.js(menu_open), "Escape left the question open")
    ann.wait_for_focus(opener)

    open_menu(ann, seq)
    ann.press(TAB)
    ann.wait(lambda: not ann.js(menu_open), "Tab left the menu open")
    ann.wait(lambda: ann.active() == ann.message_box(),  # the next thing after the last message's "⋯"
             lambda: f"Tab moved the focus to {ann.js('return document.activeElement.outerHTML')[:200]}")
    # a delete the question's Escape had sent would have come back before this later chat
    ann.say("after the question")
    ann.wait(lambda: row_of(ann, "after the question"), "the later chat never came")
    assert not row_of(ann, "arrow keys work")["deleted"]


def test_a_reload_shows_each_message_in_its_current_state(open_page, connect):
    """Chats edited and reacted to before the page opened (history), then edited and deleted while
    it is open (live), end in the same state after a reload (history alone)."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    first, second, third = bob.chat_all("lobby", ["one", "two", "three"])
    bob.request(type="edit", room="lobby", seq=first["seq"], text="one, edited")
    bob.request(type="react", room="lobby", seq=second["seq"], emoji="🎉")
    ann = open_page("/?nick=ann#lobby")
    ann.wait(lambda: row_of(ann, "one, edited"), "the edited chat")
    assert row_of(ann, "one, edited")["edited"] and row_of(ann, "two")["chips"] == [["🎉 1", "🎉 bob", "false"]]
    bob.request(type="delete", room="lobby", seq=third["seq"])
    bob.request(type="edit", room="lobby", seq=first["seq"], text="one, again")
    ann.wait(lambda: row_of(ann, "one, again") and row_of(ann, "message deleted"), "live edit and delete")
    ann.open("/?nick=ann&again#lobby")  # a fresh page (open waits until it is shown): the same from history alone
    ann.wait(lambda: [r["text"] for r in rows(ann)] == ["one, again", "two", "message deleted"],
             lambda: f"after a reload: {rows(ann)}")
    assert row_of(ann, "two")["chips"] == [["🎉 1", "🎉 bob", "false"]]


def test_typing_line_comes_and_goes(open_page, connect):
    """While bob types, ann's page says "bob is typing…"; bob's message ends it."""
    ann = open_page("/?nick=ann#lobby")
    bob = open_page("/?nick=bob#lobby")
    ann.wait_for_line("bob joined")
    bob.message_box().send_keys("working on it")
    ann.wait(lambda: ann.find("typing").text == "bob is typing…", "no typing line")
    assert bob.find("typing").text == ""
    bob.message_box().send_keys(ENTER)
    ann.wait_for_text("working on it")
    ann.wait(lambda: ann.find("typing").text == "", "the typing line stayed after bob's message")


def test_unread_counts_come_from_the_read_mark_of_another_device(open_page, make_server, connect):
    """ann read lobby up to a point on one device (a `mark` with her token); on another device the
    page opens with lobby out of view and counts the chats after her mark (bob's, not her own) as
    unread; showing lobby reads it, and the server's mark then says so to the next device."""
    server = make_server(token_secret=SECRET)
    ann_url = with_token(server.url, token("ann"))
    phone = connect(ann_url)
    bob = connect(server.url)
    bob.set_nick("bob")
    phone.join("lobby")
    bob.join("lobby")
    seen = bob.chat_all("lobby", ["read on the phone"])[0]["seq"]
    phone.send(type="mark", room="lobby", seq=seen)
    assert phone.recv_type("mark")["seq"] == seen
    phone.close()
    bob.chat_all("lobby", ["new 1", "new 2", "new 3"])
    laptop = open_page(f"/?token={token('ann')}#dev,lobby", on=server)
    assert laptop.title() == "dev"
    laptop.wait(lambda: "3 unread" in laptop.tab("lobby").text.replace("\n", " "), "no unread count from the mark")
    laptop.tab("lobby").click()
    laptop.wait(lambda: "unread" not in laptop.tab("lobby").text, "lobby still unread once shown")
    marked = "return Number(document.querySelector('.pane:not([hidden])').dataset.marked || 0)"
    laptop.wait(lambda: laptop.js(marked) == seen + 3, "the page did not mark lobby read")
    later = connect(ann_url)  # replaces the laptop's connection: the mark is the server's now
    marks = later.welcome.get("marks", {})
    assert marks.get("lobby") == seen + 3, marks


def test_mentions_are_highlighted(open_page, connect):
    """A message naming @ann shows the mention highlighted on ann's page (and the row marked)."""
    ann = open_page("/?nick=ann#lobby")
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    bob.chat_all("lobby", ["@ann can you look?", "ask @cy too"])
    ann.wait_for_text("ask @cy too")
    found = ann.js("""return [...document.querySelectorAll('.log li.msg')].map(li =>
        [li.classList.contains('mention'), [...li.querySelectorAll('.at')].map(a => [a.textContent, a.className])])""")
    assert found == [[True, [["@ann", "at at-me"]]], [False, [["@cy", "at"]]]]


def test_search_finds_newest_first_with_more_pages(open_page, make_server, connect):
    """The room's search box lists matching messages newest first, 20 at a time, and "More
    results" adds the older ones; a search with no match says so."""
    server = make_server(rate_burst=100)
    bob = connect(server.url)
    bob.set_nick("bob")
    bob.join("lobby")
    bob.chat_all("lobby", [f"deploy number {n}" for n in range(25)] + ["unrelated"])
    ann = open_page("/?nick=ann#lobby", on=server)
    ann.find("search-input").send_keys("DEPLOY num", ENTER)
    results = "return [...document.querySelectorAll('#search-list .text')].map(t => t.textContent)"
    ann.wait(lambda: len(ann.js(results)) == 20, "no first page of results")
    assert ann.js(results)[:2] == ["deploy number 24", "deploy number 23"]
    ann.wait(lambda: ann.visible("search-more"), "no More results button")
    ann.find("search-more").click()
    ann.wait(lambda: len(ann.js(results)) == 25, "the older results did not come")
    assert ann.js(results)[-1] == "deploy number 0" and not ann.visible("search-more")
    ann.find("search-input").clear()
    ann.find("search-input").send_keys("nothing-like-this", ENTER)
    ann.wait(lambda: ann.find("search-note").text == "Nothing found.", "no word for an empty search")


def test_notifications_are_asked_only_on_a_click(open_page, connect):
    """On load the browser's permission stays "default" and nothing is asked; the button asks
    (requestPermission, once clicked); granted, a mention or a direct message while the tab is
    hidden notifies (a chat that names nobody does not)."""
    ann = open_page("/?nick=ann#lobby")
    if not ann.js("return 'Notification' in window"):
        pytest.skip(f"{ann.engine} has no Notification API here")
    assert ann.js("return Notification.permission") == "default"
    ann.wait(lambda: ann.visible("notify-button"), "no button to turn notifications on")
    ann.js("""
      window.asked = 0; window.shown = [];
      class Fake { constructor(title, options) { window.shown.push([title, options.body]); } close() {} }
      Fake.permission = 'default';
      Fake.requestPermission = () => {
        window.asked += 1; Fake.permission = 'granted'; return Promise.resolve('granted');
      };
      window.Notification = Fake;""")
    assert ann.js("return window.asked") == 0
    ann.find("notify-button").click()
    ann.wait(lambda: ann.js("return window.asked") == 1 and not ann.visible("notify-button"), "not asked on click")
    assert ann.visible("notify-state")
    ann.js("Object.defineProperty(document, 'hidden', {configurable: true, get: () => true})")
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    bob.chat_all("lobby", ["no mention here", "@ann the build broke"])
    ann.wait(lambda: ann.js("return window.shown"), "no notification for the mention")
    assert ann.js("return window.shown") == [["bob in lobby", "@ann the build broke"]]
    bob.send(type="dm", to="ann", text="call me")
    ann.wait(lambda: len(ann.js("return window.shown")) == 2, "no notification for the direct message")
    assert ann.js("return window.shown")[1] == ["bob (direct message)", "call me"]


def test_a_direct_message_to_someone_offline_waits_for_them(open_page, make_server, connect):
    """bob's DM to zed (a token holder who went offline) says it was saved; zed's page, opened
    later, shows it marked as sent while zed was away."""
    server = make_server(token_secret=SECRET)
    zed = connect(with_token(server.url, token("zed")))
    zed.join("lobby")
    bob = open_page(f"/?token={token('bob')}#lobby", on=server)
    bob.member("zed").click()
    bob.xpath('//ul[@class="member-menu"]//button[normalize-space()="Message"]').click()
    bob.wait(lambda: bob.title() == "Direct messages with zed")
    zed.close()
    bob.wait(lambda: "zed" not in connect(server.url).request(type="who", room="lobby")["members"], "zed stays")
    bob.say("see you tomorrow")
    note = "return [...document.querySelectorAll('.pane:not([hidden]) .stored-note')].map(n => n.textContent)"
    bob.wait(lambda: bob.js(note) == ["Saved: zed is offline and gets it when they connect."], "no saved note")
    back = open_page(f"/?token={token('zed')}#lobby", on=server)
    back.wait(lambda: "1 unread" in back.tab("@bob").text.replace("\n", " "), "the waiting DM is not shown")
    back.tab("@bob").click()
    back.wait_for_text("see you tomorrow")
    assert back.js(note)[0].startswith("Sent while you were away (")


def test_an_operator_deletes_anyones_message(open_page, make_server, connect):
    """An operator's menu on someone else's message has Delete (not Edit); the delete, confirmed,
    reaches the author and the page says "message deleted"."""
    server = make_server(token_secret=SECRET)
    bob = connect(server.url)
    bob.set_nick("bob")
    bob.join("lobby")
    op = open_page(f"/?token={token('ann', op=True)}#lobby", on=server)
    seq = bob.chat_all("lobby", ["buy cheap watches"])[0]["seq"]
    op.wait(lambda: row_of(op, "buy cheap watches"), "bob's chat never came")
    labels = open_menu(op, seq)
    assert "Delete" in labels and "Edit" not in labels
    menu_button(op, "Delete").click()
    op.wait(lambda: op.js("return document.activeElement.textContent") == "Delete", "no confirmation asked")
    assert "Delete bob's message for everyone?" in op.find("panes").text
    op.active().send_keys(ENTER)
    deleted = bob.recv_type("delete")
    assert (deleted["target"], deleted["from"]) == (seq, "ann")
    op.wait(lambda: (row_of(op, "message deleted") or {}).get("deleted"), "the delete is not shown")


def test_on_redis_edits_show_and_search_finds_the_edited_text(open_page, redis_server, spawn, connect):
    """A page on a roomchat process on Redis: another member's edit and reaction show live; the
    search box lists the chat by its edited text, and finds nothing by its old words."""
    process = spawn("--redis", redis_server.url)
    bob = connect(process.url)
    bob.set_nick("bob")
    bob.join("lobby")
    ann = open_page("/?nick=ann#lobby", on=process)
    seq = bob.chat_all("lobby", ["on redis", "unrelated"])[0]["seq"]
    ann.wait(lambda: row_of(ann, "unrelated"), "bob's chats never came")
    bob.send(type="edit", room="lobby", seq=seq, text="on redis, edited")
    bob.send(type="react", room="lobby", seq=seq, emoji="👀")
    ann.wait(lambda: (row_of(ann, "on redis, edited") or {}).get("chips") == [["👀 1", "👀 bob", "false"]],
             "the edit and the reaction did not show")
    ann.find("search-input").send_keys("REDIS ed", ENTER)
    results = "return [...document.querySelectorAll('#search-list .text')].map(t => t.textContent)"
    ann.wait(lambda: ann.js(results) == ["on redis, edited"], "the edited chat was not found")
    ann.find("search-input").clear()
    ann.find("search-input").send_keys("unrelated redis", ENTER)
    ann.wait(lambda: ann.find("search-note").text == "Nothing found.", "a search with no match said otherwise")


def test_the_menu_follows_the_servers_edit_window(open_page, make_server):
    """With --edit-window 0 (welcome.limits.edit_window) your own message's menu offers reactions
    only: no Edit, no Delete."""
    server = make_server(edit_window=0)
    ann = open_page("/?nick=ann#lobby", on=server)
    ann.say("set in stone")
    ann.wait(lambda: row_of(ann, "set in stone"), "the chat never came")
    labels = open_menu(ann, row_of(ann, "set in stone")["seq"])
    assert "React with 👍" in labels and "Edit" not in labels and "Delete" not in labels


def test_edits_missed_during_a_drop_are_replayed_in_place(open_page, relay, connect):
    """ann's connection goes silent (no FIN) while bob edits, reacts, deletes and chats; the page
    finds the drop by its ping, resumes with `after`, and each message ends as it would have live."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    ann = open_page("/?nick=ann&ping=1,1#lobby", on=relay)
    keep, drop = bob.chat_all("lobby", ["keep me", "drop me"])
    ann.wait(lambda: row_of(ann, "drop me"), "bob's chats never came")
    relay.go_silent()
    bob.send(type="edit", room="lobby", seq=keep["seq"], text="keep me, edited")
    bob.send(type="react", room="lobby", seq=keep["seq"], emoji="✅")
    bob.send(type="delete", room="lobby", seq=drop["seq"])
    bob.send(type="chat", room="lobby", text="after the drop")
    expected = [("keep me, edited", True, [["✅ 1", "✅ bob", "false"]]), ("message deleted", False, []),
                ("after the drop", False, [])]
    ann.wait(lambda: [(r["text"], r["edited"], r["chips"]) for r in rows(ann)] == expected,
             f"not replayed in place: {rows(ann)}", timeout=20)
