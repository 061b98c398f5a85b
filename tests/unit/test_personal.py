"""Read markers and DMs that wait in the memory and SQLite engines (engines/personal.py,
engines/sqlite_personal.py), and the typing notices' rate (rooms/typing.py): pure logic and a
history file of the test's own, no sockets."""

import sqlite3

import pytest

from chatserver.engines.memory import MemoryEngine
from chatserver.engines.sqlite import SqliteEngine
from chatserver.protocol import MAX_MARKS, TYPING_INTERVAL
from chatserver.rooms.typing import Typing
from tests.helpers import started


@pytest.fixture(params=["memory", "sqlite"])
def make_engine(request, tmp_path):
    """make_engine() -> a started engine of this run's kind; SQLite ones share one file, so a
    second call after close() reopens it."""
    engines = []

    def make():
        engine = MemoryEngine() if request.param == "memory" else SqliteEngine(str(tmp_path / "h.db"))
        engines.append(started(engine))
        return engine

    make.kind = request.param
    yield make
    for engine in engines:
        engine.close()


def test_a_mark_never_goes_back(make_engine):
    """set_mark answers the max of the old mark and the new seq; mark() reads it; none is None."""
    engine = make_engine()
    assert engine.mark("ann", "lobby") is None
    assert engine.set_mark("ann", "lobby", 5) == 5
    assert engine.set_mark("ann", "lobby", 3) == 5
    assert engine.set_mark("ann", "lobby", 9) == 9
    assert engine.mark("ann", "lobby") == 9 and engine.mark("bob", "lobby") is None


def test_marks_are_listed_marked_last_first_and_bounded(make_engine):
    """marks() lists the room marked last first; past MAX_MARKS the one marked longest ago goes
    (a mark moved again counts as marked last)."""
    engine = make_engine()
    for n in range(MAX_MARKS):
        engine.set_mark("ann", f"r{n}", 1)
    engine.set_mark("ann", "r0", 2)  # r0 is now the newest; r1 the oldest
    engine.set_mark("ann", "new", 1)
    marks = engine.marks("ann")
    assert len(marks) == MAX_MARKS and "r1" not in marks
    assert list(marks)[:2] == ["new", "r0"] and marks["r0"] == 2
    assert engine.marks("bob") == {}


def test_dms_wait_bounded_and_are_taken_once(make_engine):
    """keep_dm keeps up to `most` DMs per identity (then False); take_dms hands them out oldest
    first, once."""
    engine = make_engine()
    for n in range(3):
        assert engine.keep_dm("ann", {"type": "dm", "text": str(n)}, 3)
    assert not engine.keep_dm("ann", {"type": "dm", "text": "3"}, 3)
    assert engine.keep_dm("bob", {"type": "dm", "text": "b"}, 3)
    assert [e["text"] for e in engine.take_dms("ann")] == ["0", "1", "2"]
    assert engine.take_dms("ann") == []
    assert engine.keep_dm("ann", {"type": "dm", "text": "again"}, 3)


def test_sqlite_keeps_marks_and_dms_across_a_restart(tmp_path):
    """Marks (with their order and bound) and waiting DMs are in the file: a reopened engine has them."""
    path = str(tmp_path / "h.db")
    engine = started(SqliteEngine(path))
    engine.set_mark("ann", "a", 3)
    engine.set_mark("ann", "b", 4)
    engine.set_mark("ann", "a", 5)
    engine.keep_dm("ann", {"type": "dm", "text": "kept", "ts": 1.5}, 10)
    engine.keep_dm("ann", {"type": "dm", "text": "taken", "ts": 2.5}, 10)
    engine.close()
    again = started(SqliteEngine(path))
    try:
        assert again.marks("ann") == {"a": 5, "b": 4} and list(again.marks("ann")) == ["a", "b"]
        assert again.take_dms("ann") == [{"type": "dm", "text": "kept", "ts": 1.5},
                                         {"type": "dm", "text": "taken", "ts": 2.5}]
    finally:
        again.close()
    third = started(SqliteEngine(path))
    try:
        assert third.take_dms("ann") == []
        assert third.keep_dm("ann", {"type": "dm", "text": "next"}, 10)  # numbers go on above the taken ones
    finally:
        third.close()


def test_an_older_file_without_the_tables_gets_them(tmp_path):
    """A history file written before marks and dms existed opens with both tables empty."""
    path = str(tmp_path / "h.db")
    started(SqliteEngine(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE marks")
        conn.execute("DROP TABLE dms")
    conn.close()
    engine = started(SqliteEngine(path))
    try:
        assert engine.marks("ann") == {} and engine.take_dms("ann") == []
        assert engine.set_mark("ann", "a", 1) == 1
    finally:
        engine.close()


class _Client:
    """What Typing reads of a client."""

    def __init__(self):
        self.typed = {}


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_typing_is_due_once_per_interval_per_room():
    """Typing.due lets one notice per client and room through every TYPING_INTERVAL seconds,
    rooms apart; with max_members 0 none."""
    clock = _Clock()
    typing, client = Typing(None, 100, clock), _Client()
    assert typing.due(client, "a") and typing.due(client, "b")
    clock.now += TYPING_INTERVAL - 0.01
    assert not typing.due(client, "a")
    clock.now += 0.01
    assert typing.due(client, "a") and not typing.due(client, "a")
    assert not Typing(None, 0, clock).due(_Client(), "a")


def test_typing_remembers_only_recent_rooms():
    """A client's typing times stay bounded: past 64 rooms, those older than the interval are forgotten."""
    clock = _Clock()
    typing, client = Typing(None, 100, clock), _Client()
    for n in range(200):
        typing.due(client, f"r{n}")
        clock.now += TYPING_INTERVAL
    assert len(client.typed) <= 65
