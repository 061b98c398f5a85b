"""The terminal client's pure parts: command parsing, rendering, pacing and the resume rules."""

import pytest

from chatclient import render
from chatclient.commands import Command, UsageError, parse
from chatclient.session import JOIN_SHOW, Pacer, Session
from chatclient.terminal import backoff, normalize_url


def chat(seq, text="hi", room="lobby", sender="bob", **extra):
    return {"type": "chat", "room": room, "from": sender, "text": text, "seq": seq, "ts": 0.0, **extra}


def welcome(nick="guest-1", epoch="e1", **limits):
    return {"type": "welcome", "nick": nick, "epoch": epoch, "limits": limits}


def drain(session) -> list[dict]:
    """Everything the session would send now, in order."""
    sent = []
    while (req := session.take_request()) is not None:
        sent.append(req)
    return sent


def joined(room="lobby", history=(), members=("ann",), **extra):
    return {"type": "joined", "room": room, "members": list(members), "history": list(history), **extra}


def connected_session(**kwargs) -> Session:
    """A session that has connected once and joined lobby with seqs 1..3."""
    session = Session(room="lobby", **kwargs)
    session.connected(welcome())
    join = drain(session)[-1]
    session.on_event({**joined(history=[chat(1), chat(2), chat(3)]), "id": join["id"]})
    return session


# -- commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello there", Command("say", ("hello there",))),
        ("//shrug", Command("say", ("/shrug",))),
        ("/join dev", Command("join", ("dev",))),
        ("/JOIN dev", Command("join", ("dev",))),
        ("/leave", Command("leave", ())),
        ("/leave dev", Command("leave", ("dev",))),
        ("/nick ann", Command("nick", ("ann",))),
        ("/msg bob  hello   world", Command("msg", ("bob", "hello   world"))),
        ("/who", Command("who", ())),
        ("/rooms", Command("rooms", ())),
        ("/history", Command("history", (20,))),
        ("/history 200", Command("history", (200,))),
        ("/quit", Command("quit", ())),
        ("/help", Command("help", ())),
        ("   ", None),
    ],
)
def test_parse_turns_lines_into_commands(line, command):
    """Plain lines are chat, // escapes a leading slash, and every command takes its arguments."""
    assert parse(line) == command


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/join", "Usage: /join ROOM"),
        ("/join a b", "Usage: /join ROOM"),
        ("/msg bob", "Usage: /msg NICK TEXT"),
        ("/nick", "Usage: /nick NICK"),
        ("/rooms all", "Usage: /rooms"),
        ("/history 0", "N is from 1 to 200"),
        ("/history 201", "N is from 1 to 200"),
        ("/history ten", "N is from 1 to 200"),
        ("/dance", "Unknown command /dance"),
    ],
)
def test_parse_explains_bad_lines(line, message):
    """A line that is not a valid command raises UsageError saying how to write it."""
    with pytest.raises(UsageError, match=message):
        parse(line)


# -- rendering ---------------------------------------------------------------------------------


def test_chat_line_has_time_room_sender_and_text():
    """A chat event prints as HH:MM:SS [room] <sender> text."""
    line = render.chat(chat(1, "hello", ts=1_700_000_000.0))
    assert line.endswith(" [lobby] <bob> hello")
    assert len(line.split(" ", 1)[0]) == len("12:34:56")


def test_control_characters_are_escaped_and_newlines_indented():
    """Escape sequences become visible text; a second line is indented under the first."""
    assert render.safe("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert render.safe("a\u202eb\x9b") == "a\u202eb\\x9b"
    assert render.safe("one\ntwo") == "one\n    two"


def test_other_events_render_in_words():
    """dm, presence, nick, who and rooms events each read as a sentence."""
    assert render.dm({"from": "ann", "to": "bob", "text": "psst", "ts": 0}).endswith("[dm] <ann> -> bob: psst")
    assert render.presence({"room": "dev", "event": "leave", "nick": "bob"}).endswith("[dev] * bob left")
    assert render.renamed({"old": "ann", "nick": "annie"}).endswith("* ann is now known as annie")
    assert render.members("dev", ["ann"]).endswith("* dev: 1 member: ann")
    assert render.members("dev", [], joined=True).endswith("* you joined dev: 0 members: nobody")
    assert render.rooms([{"room": "a", "members": 2}]).endswith("* rooms: a (2)")
    assert render.rooms([]).endswith("no rooms have members yet")


# -- pacing, backoff, addresses ----------------------------------------------------------------


def test_pacer_stays_under_the_servers_bucket():
    """The pacer allows burst-1 at once, then refills a little slower than the server."""
    now = [0.0]
    pacer = Pacer.for_limits({"rate_burst": 5, "rate_per_second": 10.0}, clock=lambda: now[0])
    for _ in range(4):
        assert pacer.delay() == 0
        pacer.take()
    assert pacer.delay() == pytest.approx(1 / 9)
    now[0] += 1 / 9
    assert pacer.delay() == 0


def test_backoff_grows_with_jitter_and_is_capped():
    """Each retry waits longer, by a random amount within half of the step, up to 15 s."""
    for attempt in range(12):
        step = min(15.0, 0.5 * 2**attempt)
        assert step / 2 <= backoff(attempt) <= step
    assert len({backoff(3) for _ in range(20)}) > 1


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("ws://h:1/", "ws://h:1/"),
        ("ws://h:1", "ws://h:1/"),
        ("http://h:1/", "ws://h:1/"),
        ("https://h/", "wss://h/"),
        ("h:8765", "ws://h:8765/"),
    ],
)
def test_normalize_url(given, url):
    """ws, wss, http(s) addresses and bare HOST:PORT all become WebSocket URLs."""
    assert normalize_url(given) == url


# -- the session -------------------------------------------------------------------------------


def test_first_connect_sends_nick_then_join():
    """The wanted nick goes first, then the --room join; plain lines go to that room."""
    session = Session(nick="ann", room="lobby")
    session.handle_line("hello")
    session.connected(welcome())
    assert [(r["type"], r.get("nick") or r.get("room")) for r in drain(session)] == [
        ("nick", "ann"), ("join", "lobby"), ("chat", "lobby")]


def test_join_prints_members_and_the_last_messages_only():
    """A first join prints who is there and the last JOIN_SHOW messages of its history."""
    session = Session(room="lobby")
    session.connected(welcome())
    join = drain(session)[0]
    lines = session.on_event({**joined(history=[chat(n) for n in range(1, 31)], members=["bob", "guest-1"]),
                              "id": join["id"]})
    assert lines[0].endswith("you joined lobby: 2 members: bob, guest-1")
    assert len(lines) == 1 + JOIN_SHOW
    assert lines[1].endswith("<bob> hi") and session.rooms == {"lobby": 30}


def test_chat_events_print_once_in_seq_order():
    """A chat event with a seq already shown is not printed again."""
    session = connected_session()
    assert session.on_event(chat(3)) == []
    assert len(session.on_event(chat(4))) == 1
    assert session.rooms["lobby"] == 4


def test_reconnect_resumes_each_room_after_the_last_seq():
    """After a drop: nick, then join with after=last seq; typed lines wait until the rooms are back."""
    session = connected_session(nick="ann")
    session.on_event({"type": "nick", "old": "guest-1", "nick": "ann", "id": 1})
    session.disconnected()
    session.handle_line("typed while offline")
    session.connected(welcome(nick="guest-9"))
    resume = drain(session)
    assert [(r["type"], r.get("after")) for r in resume] == [("nick", None), ("join", 3)]
    lines = session.on_event({**joined(history=[chat(4, "missed")]), "id": resume[1]["id"]})
    assert [line.split(" ", 1)[1] for line in lines] == ["[lobby] <bob> missed"]
    assert [r["text"] for r in drain(session)] == ["typed while offline"]


def test_new_epoch_reloads_rooms_without_after():
    """A welcome with another epoch says so, and rejoins rooms without `after`."""
    session = connected_session()
    session.disconnected()
    lines = session.connected(welcome(epoch="e2"))
    assert "history was reset" in lines[0]
    join = drain(session)[0]
    assert join == {"type": "join", "room": "lobby", "id": join["id"]}
    shown = session.on_event({**joined(history=[chat(1, "fresh")]), "id": join["id"]})
    assert shown[-1].endswith("<bob> fresh") and session.rooms["lobby"] == 1


def test_unconfirmed_chat_is_resent_only_if_the_server_did_not_store_it():
    """Chats in flight at a drop: one found in the resumed history is dropped, the other resent."""
    session = connected_session()
    session.handle_line("stored")
    session.handle_line("lost")
    drain(session)
    session.disconnected()
    assert session.undelivered() == 2
    session.connected(welcome())
    join = drain(session)[0]
    session.on_event({**joined(history=[chat(4, "stored", sender="guest-1")]), "id": join["id"]})
    again = drain(session)
    assert [(r["type"], r["text"]) for r in again] == [("chat", "lost")]
    session.on_event({**chat(5, "lost", sender="guest-1"), "id": again[0]["id"]})
    assert session.undelivered() == 0


def test_inflight_reads_and_first_joins_are_resent_but_leaves_are_not():
    """A drop resends who/rooms/dm and joins of new rooms; a leave in flight just forgets the room."""
    session = connected_session()
    for line in ("/who", "/join dev", "/msg bob hi", "/leave lobby"):
        session.handle_line(line)
    drain(session)
    session.disconnected()
    assert session.rooms == {}
    session.connected(welcome())
    assert [r["type"] for r in drain(session)] == ["who", "join", "dm"]


def test_quit_is_done_only_when_everything_is_confirmed():
    """/quit finishes once every request has been answered."""
    session = connected_session()
    session.handle_line("last words")
    session.handle_line("/quit")
    assert not session.done
    chat_request = drain(session)[0]
    assert not session.done
    session.on_event({**chat(4, "last words", sender="guest-1"), "id": chat_request["id"]})
    assert session.done and session.failed == 0


def test_errors_print_in_words_and_count_refused_messages():
    """An error reply prints its sentence; a refused chat counts as failed; a refused nick is undone."""
    session = connected_session()
    session.handle_line("/nick taken")
    session.handle_line("x" * 10)
    nick, message = drain(session)
    lines = session.on_event({"type": "error", "code": "nick_taken", "message": "The nick is taken.", "id": nick["id"]})
    assert lines[0].endswith("! The nick is taken.") and session.wanted_nick == "guest-1"
    session.on_event({"type": "error", "code": "too_long", "message": "Too long.", "id": message["id"]})
    assert session.failed == 1


def test_lines_without_a_room_explain_what_to_do():
    """A plain line before any /join, and a bad command, answer locally without sending."""
    session = Session()
    assert "/join ROOM first" in session.handle_line("hello")[0]
    assert "Usage: /join ROOM" in session.handle_line("/join")[0]
    assert session.handle_line("/help")[0] == "commands:"
    assert not session.has_request()


def test_leaving_the_current_room_moves_to_another():
    """/leave without a room leaves the current one and makes the last other room current."""
    session = connected_session()
    session.handle_line("/join dev")
    join = drain(session)[0]
    session.on_event({**joined(room="dev"), "id": join["id"]})
    session.handle_line("/leave")
    assert session.room == "lobby"
    leave = drain(session)[0]
    assert session.on_event({"type": "left", "room": "dev", "id": leave["id"]})[0].endswith(
        "you left dev; now in lobby")


def test_moderation_events_print_who_did_what_and_a_kick_takes_us_out():
    """Topic, mute, ban and kick events print as one line naming the operator; a kick of us drops the
    room (so a reconnect does not join it again) and moves plain lines to another room."""
    session = connected_session(nick="ann")
    session.on_event({"type": "nick", "old": "guest-1", "nick": "ann", "id": 1})
    topic = {"type": "topic", "room": "lobby", "topic": "Exam at 10", "by": "teacher"}
    assert session.on_event(topic)[0].endswith("[lobby] * teacher set the topic: Exam at 10")
    mute = {"type": "mute", "room": "lobby", "nick": "bob", "by": "teacher", "duration": 60, "reason": ""}
    assert session.on_event(mute)[0].endswith("* teacher muted bob for 60 s")
    lifted = {**mute, "type": "ban", "duration": 0}
    assert session.on_event(lifted)[0].endswith("* teacher lifted the ban on bob") and "lobby" in session.rooms
    kick = {"type": "kick", "room": "lobby", "nick": "ann", "by": "teacher", "reason": "spam"}
    assert session.on_event(kick)[0].endswith("* teacher kicked ann (spam)")
    assert "lobby" not in session.rooms and session.room is None
