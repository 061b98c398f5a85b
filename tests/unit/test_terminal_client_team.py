"""The terminal client's session on a team's features, without sockets: /edit, /delete, /react,
/search and /mark as requests; edit, delete, react, typing, mark, search and stored DMs as lines;
replayed room events shown once. Through a pipe against a real server: test_terminal_client_team.py
in tests/integration."""

import pytest

from chatclient.commands import UsageError, parse
from chatclient.events import problem
from chatclient.session import SEARCH_LIMIT, TYPING_QUIET, Session
from tests.unit.test_terminal_client import chat, connected_session, drain, joined, welcome


def stored(kind, seq, target, sender="bob", room="lobby", **extra):
    return {"type": kind, "room": room, "seq": seq, "target": target, "from": sender, "ts": 0.0, **extra}


def texts(lines):
    """Lines without their clock."""
    return [line.split(" ", 1)[1] for line in lines]


@pytest.mark.parametrize(("line", "name", "args"), [
    ("/edit 3 fixed typo", "edit", (3, "fixed typo")),
    ("/edit #3 fixed", "edit", (3, "fixed")),
    ("/delete 12", "delete", (12,)),
    ("/react 5 👍", "react", (5, "👍")),
    ("/search deploy friday", "search", ("deploy friday",)),
    ("/mark", "mark", ()),
])
def test_team_commands_parse(line, name, args):
    """Each new command parses into its name and arguments; a SEQ may be written #SEQ, as shown."""
    assert (parse(line).name, parse(line).args) == (name, args)


@pytest.mark.parametrize("line", ["/edit x text", "/edit 3", "/delete", "/delete 0", "/react 5", "/mark now",
                                  "/search " + "x" * 201])
def test_team_commands_refuse_bad_lines(line):
    """A missing or non-numeric SEQ, a missing argument, or a search over 200 characters is a usage error."""
    with pytest.raises(UsageError):
        parse(line)


def test_commands_become_requests_for_the_current_room():
    """/edit, /delete, /react, /search and /mark send their request for the current room; /mark
    names the last seq shown."""
    session = connected_session()
    for line in ("/edit 3 better", "/delete 2", "/react 1 🎉", "/search hello"):
        session.handle_line(line)
    sent = [{k: v for k, v in r.items() if k != "id"} for r in drain(session)]
    assert sent == [
        {"type": "edit", "room": "lobby", "seq": 3, "text": "better"},
        {"type": "delete", "room": "lobby", "seq": 2},
        {"type": "react", "room": "lobby", "seq": 1, "emoji": "🎉"},
        {"type": "search", "room": "lobby", "q": "hello", "limit": SEARCH_LIMIT},
    ]
    session = connected_session()
    session.handle_line("/mark")
    assert [(r["type"], r["seq"]) for r in drain(session)] == [("mark", 3)]


def test_a_mark_waits_for_the_answers_to_what_went_before():
    """A /mark typed after a chat goes once the chat is answered, and covers it (a pipe types both
    before anything comes back)."""
    session = connected_session()
    session.handle_line("done for today")
    session.handle_line("/mark")
    (chat_request,) = drain(session)
    assert not session.has_request()
    session.on_event({**chat(4, "done for today", sender="guest-1"), "id": chat_request["id"]})
    assert [(r["type"], r["seq"]) for r in drain(session)] == [("mark", 4)]


def test_chats_show_their_seq_and_state():
    """A chat line names its #seq; a history chat shows (edited), (message deleted) and its reactions."""
    session = connected_session()
    lines = session.on_event(chat(4, "plain"))
    lines += session.on_event({"type": "history", "room": "lobby", "messages": [
        chat(1, "changed", edited=5.0, reactions={"👍": ["ann", "cy"]}),
        {"type": "chat", "room": "lobby", "from": "bob", "seq": 2, "ts": 0.0, "deleted": True}]})
    assert texts(lines)[0] == "[lobby] #4 <bob> plain"
    assert texts(lines)[2:] == ["[lobby] #1 <bob> changed (edited)  [👍 ann, cy]", "[lobby] #2 <bob> (message deleted)"]


def test_live_edit_delete_react_are_one_line_each_and_shown_once():
    """Live edit, delete and react events print one line naming the message; the same seqs replayed
    after a reconnect print nothing more."""
    session = connected_session()
    events = [stored("edit", 4, 3, text="new text"), stored("delete", 5, 2, sender="op"),
              stored("react", 6, 1, emoji="👍", on=True), stored("react", 7, 1, emoji="👍", on=False)]
    lines = [line for e in events for line in session.on_event(e)]
    assert texts(lines) == ["[lobby] * bob edited #3: new text", "[lobby] * op deleted #2",
                            "[lobby] * bob reacted 👍 to #1", "[lobby] * bob took back 👍 on #1"]
    session.disconnected()
    session.connected(welcome())
    join = drain(session)[-1]
    assert join["after"] == 7
    assert session.on_event({**joined(history=[]), "id": join["id"]}) == []
    assert all(session.on_event(e) == [] for e in events)


def test_a_resumed_batch_shows_a_chat_once_in_its_current_state():
    """In a resumed history, an edit or react of a chat in the same batch is not printed again (the
    chat shows its result); one of an older chat is."""
    session = connected_session()
    session.disconnected()
    session.connected(welcome())
    join = drain(session)[-1]
    history = [chat(4, "fixed", edited=1.0), stored("edit", 5, 4, text="fixed"), stored("react", 6, 2, emoji="🎉",
                                                                                       on=True)]
    lines = session.on_event({**joined(history=history), "id": join["id"]})
    assert texts(lines) == ["[lobby] #4 <bob> fixed (edited)", "[lobby] * bob reacted 🎉 to #2"]


def test_typing_is_said_once_until_the_next_chat_or_a_quiet_while():
    """"bob is typing…" prints once; again only after bob's next chat or TYPING_QUIET seconds."""
    now = [100.0]
    session = Session(nick=None, room="lobby", clock=lambda: now[0])
    session.connected(welcome())
    join = drain(session)[0]
    session.on_event({**joined(), "id": join["id"]})
    typing = {"type": "typing", "room": "lobby", "nick": "bob"}
    assert texts(session.on_event(typing)) == ["[lobby] * bob is typing…"]
    assert session.on_event(typing) == []
    session.on_event(chat(1, "done"))
    assert len(session.on_event(typing)) == 1
    now[0] += TYPING_QUIET + 1
    assert len(session.on_event(typing)) == 1


def test_marks_from_another_device_say_what_is_unread():
    """welcome.marks / joined.mark: the first join says how many chats from others came after the
    mark; the mark reply is confirmed in one line."""
    session = Session(nick=None, room="lobby")
    session.connected({**welcome(nick="ann"), "marks": {"lobby": 2}})
    join = drain(session)[0]
    history = [chat(1), chat(2), chat(3, "new one"), chat(4, "mine", sender="ann"), chat(5, "another")]
    lines = session.on_event({**joined(history=history), "mark": 2, "id": join["id"]})
    assert lines[-1].endswith("* 2 unread in lobby since you last read (#2); /mark when read")
    session.handle_line("/mark")
    mark = drain(session)[0]
    assert (mark["type"], mark["seq"]) == ("mark", 5)
    assert texts(session.on_event({"type": "mark", "room": "lobby", "seq": 5, "id": mark["id"]})) == [
        "* lobby marked read up to #5"]


def test_search_results_print_newest_first_and_say_when_there_may_be_more():
    """A search reply prints a heading and the matches in the server's order (newest first); a full
    page says it shows the newest and that /search alone pages back (with `before`); none says so."""
    session = connected_session()
    session.handle_line("/search hi")
    req = drain(session)[0]
    found = [chat(n, f"hi {n}") for n in range(SEARCH_LIMIT, 0, -1)]
    lines = session.on_event({"type": "search", "room": "lobby", "q": "hi", "messages": found, "id": req["id"]})
    assert f"the newest {SEARCH_LIMIT}, newest first" in lines[0]
    assert texts(lines[1:3]) == [f"[lobby] #{SEARCH_LIMIT} <bob> hi {SEARCH_LIMIT}",
                                 f"[lobby] #{SEARCH_LIMIT - 1} <bob> hi {SEARCH_LIMIT - 1}"]
    assert lines[0].endswith("; /search alone shows older ones:")
    session.handle_line("/search")  # the next page: before the oldest shown
    more = drain(session)[0]
    assert (more["q"], more["before"]) == ("hi", 1)
    last = session.on_event({"type": "search", "room": "lobby", "q": "hi", "messages": [], "id": more["id"]})
    assert last[0].endswith("no older messages in lobby match 'hi'")
    assert session.handle_line("/search")[0].endswith("Usage: /search WORDS (alone, after a search: its older matches)")
    none = session.on_event({"type": "search", "room": "lobby", "q": "zzz", "messages": []})
    assert none[0].endswith("no messages in lobby match 'zzz'")


def test_search_unsupported_is_one_refusal_line():
    """A server that cannot search answers `unsupported`: one line with its sentence, and the
    pipe's run counts it as refused."""
    session = connected_session(strict=True)
    session.handle_line("/search hi")
    req = drain(session)[0]
    lines = session.on_event({"type": "error", "code": "unsupported", "message": "search needs the SQLite engine",
                              "id": req["id"]})
    assert texts(lines) == ["! search needs the SQLite engine"]
    assert session.refused == ["search in lobby: search needs the SQLite engine"]


def test_a_refused_edit_names_the_message():
    """too_late for /edit is one line naming the message: `edit of #3 in lobby refused: ...`."""
    session = connected_session()
    session.handle_line("/edit 3 again")
    req = drain(session)[0]
    lines = session.on_event({"type": "error", "code": "too_late", "message": "too late to edit", "id": req["id"]})
    assert texts(lines) == ["! edit of #3 in lobby refused: too late to edit"]


def test_stored_direct_messages_say_so():
    """Our stored DM says its recipient gets it on connecting; one that waited for us says when it was sent."""
    session = connected_session(nick="ann")
    session.handle_line("/msg zed later")
    req = drain(session)[0]
    ours = session.on_event({"type": "dm", "from": "ann", "to": "zed", "text": "later", "ts": 0.0, "stored": True,
                             "id": req["id"]})
    theirs = session.on_event({"type": "dm", "from": "zed", "to": "ann", "text": "back", "ts": 0.0, "stored": True})
    assert ours[0].endswith("[dm] <ann> -> zed: later  (stored: zed gets it on connecting)")
    assert "[dm] <zed> -> ann: back  (sent " in theirs[0] and theirs[0].endswith(" while you were away)")


def test_history_items_are_checked_by_their_type():
    """A history list may hold chats (with or without text), edits, deletes and reacts; an item of
    another type, or a react without `on`, is a contract break."""
    ok = {"type": "history", "room": "lobby", "messages": [
        chat(1), {"type": "chat", "room": "lobby", "from": "bob", "seq": 2, "deleted": True},
        stored("edit", 3, 1, text="x"), stored("delete", 4, 2), stored("react", 5, 1, emoji="👍", on=True)]}
    assert problem(ok) is None
    assert "react event" in problem({**ok, "messages": [stored("react", 5, 1, emoji="👍")]})
    assert "type 'presence'" in problem({**ok, "messages": [{"type": "presence", "room": "lobby"}]})
