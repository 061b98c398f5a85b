"""Edit, delete and react over real sockets, on the memory and SQLite engines (PROTOCOL.md "Edit,
delete and react"); Redis has its own in test_redis_edits.py."""

import contextlib
import sqlite3

import pytest

from chatserver.engines.base import amended
from tests.helpers import EMOJI, FAST_LIMITS, SECRET, members_in, token, with_token

ENGINES = ["memory", "sqlite"]


@pytest.fixture(params=ENGINES)
def start(request, make_server, tmp_path):
    """start(**overrides) -> a server on the engine of this run (a fresh SQLite file, or memory)."""
    db = ":memory:" if request.param == "memory" else str(tmp_path / "history.db")
    return lambda **overrides: make_server(**{"db": db, **FAST_LIMITS, **overrides})


def seated(server, peers, *nicks):
    """Peers with `nicks`, all in room lobby, every presence read."""
    return members_in([server.url] * len(nicks), peers, list(nicks))






def without_id(event: dict) -> dict:
    """The event as other members get it: without the request's id."""
    return {key: value for key, value in event.items() if key != "id"}


def play(events: list) -> dict:
    """What a client ends with after applying `events` in order (history items or live events):
    seq -> chat, by PROTOCOL.md's rule (engines.base.amended is that rule)."""
    chats = {}
    for event in events:
        if event["type"] == "chat":
            chats[event["seq"]] = event
        elif event.get("target") in chats:
            chats[event["target"]] = amended(chats[event["target"]], event)
    return chats


def test_edit_reaches_every_member_with_its_own_seq(start, peers):
    """An edit is a room event with the room's next seq: the author's copy carries its id, every
    member gets the same event, and the next chat takes the seq after it."""
    server = start()
    ann, bob = seated(server, peers, "ann", "bob")
    chat = ann.ask(type="chat", room="lobby", text="helo")
    bob.recv_type("chat")
    edit = ann.ask(type="edit", room="lobby", seq=chat["seq"], text="hello", id=7)
    assert edit == {"type": "edit", "room": "lobby", "seq": chat["seq"] + 1, "target": chat["seq"], "from": "ann",
                    "text": "hello", "ts": edit["ts"], "id": 7}
    assert bob.recv() == without_id(edit)
    assert ann.ask(type="chat", room="lobby", text="next")["seq"] == chat["seq"] + 2


def test_history_and_resume_give_chats_in_their_current_state(start, peers):
    """history and join with after hold every stored event, chats as they are now (edited,
    reactions, deleted without text); replaying them ends where the live events did."""
    server = start()
    ann, bob = seated(server, peers, "ann", "bob")
    first, second = (without_id(ann.ask(type="chat", room="lobby", text=t)) for t in ("one", "two"))
    live = [first, second]
    live.append(ann.ask(type="edit", room="lobby", seq=first["seq"], text="one!"))
    live.append(bob.ask(type="react", room="lobby", seq=first["seq"], emoji="👍"))
    live.append(ann.ask(type="edit", room="lobby", seq=second["seq"], text="two, secret"))
    live.append(ann.ask(type="delete", room="lobby", seq=second["seq"]))
    messages = bob.ask(type="history", room="lobby")["messages"]
    assert [m["seq"] for m in messages] == list(range(1, 7))
    assert messages[0] == {**first, "text": "one!", "edited": live[2]["ts"], "reactions": {"👍": ["bob"]}}
    assert messages[1] == {"type": "chat", "room": "lobby", "from": "ann", "seq": 2, "ts": second["ts"],
                           "deleted": True}
    assert "text" not in messages[4]  # the edit of the deleted chat keeps no text
    assert play(messages) == {1: messages[0], 2: messages[1]}
    assert play([without_id(e) for e in live]) == play(messages)
    resumed = bob.join("lobby", after=2)  # a re-join with after: what came since seq 2
    assert [e["type"] for e in resumed["history"]] == ["edit", "react", "edit", "delete"]


def test_react_toggles_and_lists_nicks_per_emoji(start, peers):
    """react toggles: `on` says whether the nick reacts after it; history lists the nicks per emoji."""
    server = start()
    ann, bob = seated(server, peers, "ann", "bob")
    seq = ann.ask(type="chat", room="lobby", text="lunch?")["seq"]
    bob.recv_type("chat")
    assert bob.ask(type="react", room="lobby", seq=seq, emoji="👍🏽")["on"] is True
    assert ann.recv_type("react")["on"] is True
    assert ann.ask(type="react", room="lobby", seq=seq, emoji="👍🏽")["on"] is True
    assert bob.ask(type="react", room="lobby", seq=seq, emoji="🍕")["on"] is True
    assert bob.ask(type="react", room="lobby", seq=seq, emoji="👍🏽")["on"] is False
    chat = ann.ask(type="history", room="lobby", after=seq - 1, limit=1)["messages"][0]
    assert chat["reactions"] == {"👍🏽": ["ann"], "🍕": ["bob"]}


def test_refusals(start, peers):
    """Someone else's chat: forbidden; a seq that is no chat: no_such_message; not one emoji:
    bad_message; a 21st emoji: too_many_reactions; outside the room: not_in_room. Nothing is stored."""
    server = start()
    ann, bob = seated(server, peers, "ann", "bob")
    seq = ann.ask(type="chat", room="lobby", text="mine")["seq"]
    bob.recv_type("chat")
    assert bob.ask(type="edit", room="lobby", seq=seq, text="yours")["code"] == "forbidden"
    assert bob.ask(type="delete", room="lobby", seq=seq)["code"] == "forbidden"
    assert bob.ask(type="react", room="lobby", seq=seq + 5, emoji="👍")["code"] == "no_such_message"
    for emoji in ("a", "👍👍", ":thumbsup:", ""):
        assert bob.ask(type="react", room="lobby", seq=seq, emoji=emoji)["code"] == "bad_message", emoji
    assert bob.ask(type="edit", room="lobby", seq=0, text="x")["code"] == "bad_message"
    for emoji in EMOJI[:20]:
        assert bob.ask(type="react", room="lobby", seq=seq, emoji=emoji)["type"] == "react"
    assert bob.ask(type="react", room="lobby", seq=seq, emoji=EMOJI[20])["code"] == "too_many_reactions"
    assert ann.ask(type="react", room="lobby", seq=seq, emoji=EMOJI[0])["on"] is True  # an emoji it has
    react = ann.ask(type="react", room="lobby", seq=seq + 1, emoji="👍")  # seq + 1 is a react, no chat
    assert react["code"] == "no_such_message"
    outsider = peers(server.url)
    assert outsider.ask(type="delete", room="lobby", seq=seq)["code"] == "not_in_room"
    assert ann.ask(type="delete", room="lobby", seq=seq)["type"] == "delete"
    assert ann.ask(type="edit", room="lobby", seq=seq, text="again")["code"] == "no_such_message"
    assert bob.ask(type="history", room="lobby")["messages"][-1]["type"] == "delete"


def test_past_the_edit_window_only_an_operator_deletes(start, peers):
    """With --edit-window 0 every chat is past it: edit and delete of your own are too_late, an
    operator's delete of anyone's chat goes through."""
    server = start(edit_window=0, token_secret=SECRET)
    ann = peers(server.url)
    ann.set_nick("ann")
    ann.join("lobby")
    op = peers(with_token(server.url, token("op", op=True)))
    op.join("lobby")
    ann.recv_type("presence")
    seq = ann.ask(type="chat", room="lobby", text="oops")["seq"]
    op.recv_type("chat")
    assert ann.ask(type="edit", room="lobby", seq=seq, text="fixed")["code"] == "too_late"
    assert ann.ask(type="delete", room="lobby", seq=seq)["code"] == "too_late"
    deleted = op.ask(type="delete", room="lobby", seq=seq, id="d")
    assert (deleted["type"], deleted["from"], deleted["id"]) == ("delete", "op", "d")
    assert ann.recv_type("delete")["target"] == seq


def test_muted_members_may_only_delete_and_moderated_rooms_refuse_edits(start, peers):
    """A muted member's edit and react are forbidden, its delete goes through; in a moderated room
    a member's edit is `moderated` while reacting is allowed."""
    server = start(token_secret=SECRET)
    op = peers(with_token(server.url, token("op", op=True)))
    op.join("lobby")
    ann = peers(server.url)
    ann.set_nick("ann")
    ann.join("lobby")
    op.recv_type("presence")
    first, second = (ann.ask(type="chat", room="lobby", text=t)["seq"] for t in ("a", "b"))
    op.ask(type="mode", room="lobby", moderated=True)
    ann.recv_type("mode")
    assert ann.ask(type="edit", room="lobby", seq=first, text="c")["code"] == "moderated"
    assert ann.ask(type="react", room="lobby", seq=first, emoji="👍")["type"] == "react"
    op.ask(type="mute", room="lobby", nick="ann", duration=600)
    ann.recv_type("mute")
    assert ann.ask(type="edit", room="lobby", seq=first, text="c")["code"] == "forbidden"
    assert ann.ask(type="react", room="lobby", seq=second, emoji="👍")["code"] == "forbidden"
    assert ann.ask(type="delete", room="lobby", seq=second)["type"] == "delete"


def test_sqlite_edits_and_deletes_survive_a_restart_and_deleted_text_leaves_the_file(make_server, peers, tmp_path):
    """SQLite: after a restart the edited chat has its new text and the deleted one is a stub; the
    deleted chat's text and its edit's text are in no row and nowhere in the file's bytes."""
    path = tmp_path / "history.db"
    server = make_server(db=str(path), **FAST_LIMITS)
    ann = peers(server.url)
    ann.join("lobby")
    kept, gone = (ann.ask(type="chat", room="lobby", text=t)["seq"] for t in ("keep me", "SECRET-original"))
    ann.close()
    server.shutdown(timeout=0.5)  # the chats are in the main file now (the WAL checkpointed at close)
    assert b"SECRET-original" in path.read_bytes()
    server = make_server(db=str(path), **FAST_LIMITS)
    ann = peers(server.url)
    ann.join("lobby")
    ann.ask(type="edit", room="lobby", seq=kept, text="kept, edited")
    ann.ask(type="edit", room="lobby", seq=gone, text="SECRET-edited")
    ann.ask(type="delete", room="lobby", seq=gone)
    ann.close()
    server.shutdown(timeout=0.5)
    data = path.read_bytes()
    assert b"SECRET" not in data
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT seq, kind, target, text FROM events ORDER BY seq").fetchall()
    assert rows == [(1, "chat", None, "kept, edited"), (2, "chat", None, ""), (3, "edit", 1, "kept, edited"),
                    (4, "edit", 2, ""), (5, "delete", 2, "")]
    server = make_server(db=str(path), **FAST_LIMITS)
    bob = peers(server.url)
    history = bob.join("lobby")["history"]
    assert history[0]["text"] == "kept, edited" and history[1]["deleted"] is True
    assert [e["seq"] for e in history] == [1, 2, 3, 4, 5]
    assert bob.ask(type="chat", room="lobby", text="after")["seq"] == 6


def test_the_per_room_history_counts_every_stored_event(start, peers):
    """--history-per-room counts edits and reactions too: the oldest chat leaves the window, and
    then changing it is no_such_message."""
    server = start(history_per_room=3)
    ann, bob = seated(server, peers, "ann", "bob")
    first, second = (ann.ask(type="chat", room="lobby", text=t)["seq"] for t in ("one", "two"))
    ann.ask(type="edit", room="lobby", seq=second, text="two!")
    bob.ask(type="react", room="lobby", seq=second, emoji="👍")
    assert [e["seq"] for e in bob.ask(type="history", room="lobby")["messages"]] == [2, 3, 4]
    assert bob.ask(type="react", room="lobby", seq=first, emoji="👍")["code"] == "no_such_message"
