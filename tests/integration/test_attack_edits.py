"""Edit, delete and react from hostile or careless clients over real sockets, on the memory and
SQLite engines: seqs at the edge of what the protocol allows, odd emoji, races."""

import pytest

from chatserver.protocol import MAX_SEQ
from tests.helpers import FAST_LIMITS
from tests.integration.test_edits import seated

ENGINES = ["memory", "sqlite"]


@pytest.fixture(params=ENGINES)
def start(request, make_server, tmp_path):
    """start(**overrides) -> a server on the engine of this run (a fresh SQLite file, or memory)."""
    db = ":memory:" if request.param == "memory" else str(tmp_path / "history.db")
    return lambda **overrides: make_server(**{"db": db, **FAST_LIMITS, **overrides})


def test_the_largest_seq_is_no_such_message(start, peers):
    """An edit, delete or react of seq 2**63 - 1 (the largest the protocol allows) is no_such_message
    on every engine, not a closed connection; past it is bad_message."""
    server = start()
    (ann,) = seated(server, peers, "ann")
    ann.ask(type="chat", room="lobby", text="hi")
    for request in ({"type": "edit", "text": "x"}, {"type": "delete"}, {"type": "react", "emoji": "👍"}):
        assert ann.ask(room="lobby", seq=MAX_SEQ, **request)["code"] == "no_such_message", request
        assert ann.ask(room="lobby", seq=MAX_SEQ + 1, **request)["code"] == "bad_message", request
    assert ann.ask(type="edit", room="lobby", seq=1, text="still mine")["type"] == "edit"


def test_spellings_of_one_emoji_are_one_reaction(start, peers):
    """❤ and ❤️ (with or without the variation selector U+FE0F), 👍 and 👍️, #⃣ and #️⃣: each pair is
    one emoji, stored and sent in its fully-qualified form, so a second spelling toggles the same
    reaction instead of adding a look-alike; text with an emoji, or a lone regional indicator,
    is still bad_message."""
    server = start()
    ann, bob = seated(server, peers, "ann", "bob")
    seq = ann.ask(type="chat", room="lobby", text="vote")["seq"]
    bob.recv_type("chat")
    for bare, qualified in (("\u2764", "\u2764\ufe0f"), ("👍", "👍\ufe0f"), ("#\u20e3", "#\ufe0f\u20e3")):
        canonical = qualified if bare != "👍" else bare  # the fully-qualified form
        first = ann.ask(type="react", room="lobby", seq=seq, emoji=bare)
        second = ann.ask(type="react", room="lobby", seq=seq, emoji=qualified)
        assert (first["emoji"], first["on"], second["emoji"], second["on"]) == (canonical, True, canonical, False)
        assert bob.ask(type="react", room="lobby", seq=seq, emoji=qualified)["emoji"] == canonical
    assert ann.ask(type="history", room="lobby")["messages"][0]["reactions"] == {
        "\u2764\ufe0f": ["bob"], "👍": ["bob"], "#\ufe0f\u20e3": ["bob"]}
    for bad in ("a👍", "🇫", "👍\u0301", "\ufe0f", "👍\ufe0f\ufe0f👍"):
        assert bob.ask(type="react", room="lobby", seq=seq, emoji=bad)["code"] == "bad_message", bad


def test_a_bug_while_storing_refuses_the_event_and_the_store_goes_on(make_server, peers, tmp_path, monkeypatch):
    """SQLite: an exception other than sqlite3.Error inside the writer's transaction (a bug) is
    logged, the events of that batch are refused `unavailable` (nothing half-stored), and the
    writer thread lives on: the next chat is stored with the next seq."""
    server = make_server(db=str(tmp_path / "history.db"), **FAST_LIMITS)
    (ann,) = seated(server, peers, "ann")
    seq = ann.ask(type="chat", room="lobby", text="hi")["seq"]
    amend = server.engine._amend

    def broken(room, event):
        if event.get("text") == "boom":
            raise RuntimeError("a bug")
        return amend(room, event)

    monkeypatch.setattr(server.engine, "_amend", broken)
    assert ann.ask(type="edit", room="lobby", seq=seq, text="boom")["code"] == "unavailable"
    assert ann.ask(type="chat", room="lobby", text="still stored")["seq"] == seq + 1
    assert ann.ask(type="edit", room="lobby", seq=seq, text="fine")["seq"] == seq + 2
    assert [m["seq"] for m in ann.ask(type="history", room="lobby")["messages"]] == [seq, seq + 1, seq + 2]
