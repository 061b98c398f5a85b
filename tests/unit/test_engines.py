"""Engines: MemoryEngine and SqliteEngine through one parametrized suite, then SQLite's own rules.
(The Redis engine has its own suite against a real redis-server: tests/integration/test_redis.py.)"""

import contextlib
import sqlite3
import threading

import orjson
import pytest

from chatserver.config import Config
from chatserver.engines.base import Meta, Unavailable
from chatserver.engines.memory import MemoryEngine
from chatserver.engines.sqlite import SqliteEngine, open_engine
from chatserver.protocol import MAX_MARKS, amend_event
from tests.helpers import RecordingHub, chat, seqs, started, wait_for, write  # noqa: F401

KINDS = ["memory", "sqlite"]


@pytest.fixture(params=KINDS)
def make_store(request, tmp_path):
    """make_store(per_room=...) -> a started engine of this run's kind; SQLite ones share one
    file, so a second call after close() reopens it. All are closed at teardown."""
    stores = []

    def make(per_room: int = 10000, **kwargs):
        if request.param == "memory":
            store = MemoryEngine(per_room)
        else:
            store = SqliteEngine(str(tmp_path / "history.db"), per_room, **kwargs)
        stores.append(started(store))
        return store

    make.kind = request.param
    yield make
    for store in stores:
        store.close()


# -- one suite for both stores -------------------------------------------------------------------


def test_empty_store_has_no_rooms(make_store):
    """A new store knows no room and reads nothing."""
    store = make_store()
    assert store.last_seqs() == {}
    assert store.read("lobby") == []
    assert isinstance(store.epoch, str) and store.epoch


def test_read_returns_events_as_delivered(make_store):
    """Events read back have the same fields and values they were delivered with."""
    store = make_store()
    events = write(store, [chat("lobby", 1, "hello ☃ \U0001f600"), chat("lobby", 2, "x" * 2000, nick="bob")])
    assert store.read("lobby") == events
    assert [(e["from"], e["text"]) for e in events] == [("ann", "hello ☃ \U0001f600"), ("bob", "x" * 2000)]


def test_read_without_after_returns_the_last_limit_oldest_first(make_store):
    """Paging back: the newest `limit` events below `before`, oldest first."""
    store = make_store()
    write(store, [chat("a", n) for n in range(1, 11)] + [chat("b", n) for n in range(1, 4)])
    assert seqs(store.read("a")) == list(range(1, 11))
    assert seqs(store.read("a", limit=3)) == [8, 9, 10]
    assert seqs(store.read("a", before=5, limit=2)) == [3, 4]
    assert seqs(store.read("a", before=1)) == []
    assert seqs(store.read("a", before=100, limit=1)) == [10]
    assert seqs(store.read("b")) == [1, 2, 3]
    assert store.read("nowhere") == []


def test_read_with_after_returns_the_first_limit(make_store):
    """Paging forward: the oldest `limit` events above `after` (and below `before`)."""
    store = make_store()
    write(store, [chat("a", n) for n in range(1, 11)])
    assert seqs(store.read("a", after=4, limit=3)) == [5, 6, 7]
    assert seqs(store.read("a", after=8)) == [9, 10]
    assert seqs(store.read("a", after=10)) == []
    assert seqs(store.read("a", after=0, limit=200)) == list(range(1, 11))
    assert seqs(store.read("a", after=2, before=6)) == [3, 4, 5]
    assert seqs(store.read("a", after=2, before=6, limit=2)) == [3, 4]
    assert seqs(store.read("a", after=5, before=6)) == []


def test_last_seqs_is_the_highest_seq_per_room(make_store):
    """last_seqs() gives each room's highest seq, so the Registry continues from it."""
    store = make_store()
    write(store, [chat("a", 1), chat("b", 1), chat("a", 2), chat("a", 3)])
    assert store.last_seqs() == {"a": 3, "b": 1}


def test_retention_keeps_the_last_per_room_events(make_store):
    """Only the newest `per_room` events of each room are read back; seqs still continue."""
    store = make_store(per_room=5)
    write(store, [chat("a", n) for n in range(1, 13)] + [chat("b", n) for n in range(1, 4)])
    assert seqs(store.read("a", after=0, limit=100)) == [8, 9, 10, 11, 12]
    assert seqs(store.read("a", limit=100)) == [8, 9, 10, 11, 12]
    assert seqs(store.read("a", before=8)) == []
    assert seqs(store.read("b")) == [1, 2, 3]
    assert store.last_seqs() == {"a": 12, "b": 3}


def test_publish_delivers_each_event_once_in_order(make_store):
    """Each published chat is delivered once, in publish order, with consecutive seqs per room."""
    store = make_store()
    write(store, [chat(f"r{n % 3}", n // 3 + 1) for n in range(3000)])
    if make_store.kind == "sqlite":
        assert len(store.hub.batches) < 3000, "group commit: many events share one commit"


def test_reads_from_many_threads_while_writing(make_store):
    """Readers on other threads, beside the writer, always see a gapless run of committed seqs."""
    store = make_store()
    failures = []

    def reader():
        for _ in range(100):
            got = seqs(store.read("a", limit=20))
            if got and got != list(range(got[0], got[0] + len(got))):
                failures.append(got)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    write(store, [chat("a", n) for n in range(1, 3001)])
    for thread in threads:
        thread.join()
    assert failures == []
    assert seqs(store.read("a", limit=3)) == [2998, 2999, 3000]


def test_reopening_continues_or_forgets(make_store):
    """SQLite keeps events, seqs and epoch across a reopen; memory starts over with a new epoch."""
    store = make_store()
    write(store, [chat("a", n) for n in range(1, 8)])
    epoch = store.epoch
    store.close()
    again = make_store()
    again.hub.batches.clear()
    if make_store.kind == "memory":
        assert again.last_seqs() == {} and again.epoch != epoch
        return
    assert again.epoch == epoch
    assert again.last_seqs() == {"a": 7}
    assert seqs(again.read("a")) == list(range(1, 8))
    write(again, [chat("a", 8)])
    assert seqs(again.read("a", after=6)) == [7, 8]


def test_close_is_idempotent(make_store):
    """close() twice is harmless."""
    store = make_store()
    store.close()
    store.close()


# -- SQLite only ---------------------------------------------------------------------------------


def test_close_commits_and_delivers_what_is_queued(tmp_path):
    """close() flushes the writer's queue: everything published is delivered and in the file."""
    store = started(SqliteEngine(str(tmp_path / "h.db")))
    for _ in range(2000):
        store.publish("a", [("ann", "x", Meta())])
    store.close()
    assert seqs(store.hub.delivered()) == list(range(1, 2001))
    again = SqliteEngine(str(tmp_path / "h.db"))
    try:
        assert again.last_seqs() == {"a": 2000}
    finally:
        again.close()


def test_publish_after_close_is_refused(tmp_path):
    """A chat published after close() raises Unavailable: neither stored nor delivered."""
    store = started(SqliteEngine(str(tmp_path / "h.db")))
    store.close()
    with pytest.raises(Unavailable):
        store.publish("a", [("ann", "x", Meta())])
    assert store.hub.delivered() == []


@pytest.mark.timeout(20)
def test_failing_commits_refuse_chats_and_rewind_seqs(tmp_path, caplog):
    """Commits that keep failing (the file write-locked elsewhere): after `fail_after` the queued
    chats are rejected, new ones are tried once and refused and health says why; once the lock
    is gone the next chat takes the seq after the last stored one."""
    path = str(tmp_path / "h.db")
    store = started(SqliteEngine(path, busy_timeout=0.1, fail_after=0.5))
    try:
        write(store, [chat("a", 1)])
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        store.publish("a", [("ann", "two", Meta()), ("ann", "three", Meta())])
        wait_for(lambda: len(store.hub.rejected) == 2, timeout=5)
        assert "locked" in store.health()
        assert [r for r in caplog.records if "retrying" in r.getMessage()]  # the first failure was retried
        caplog.clear()
        store.publish("a", [("ann", "four", Meta())])
        wait_for(lambda: len(store.hub.rejected) == 3, timeout=5)
        assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # tried once, no retries
        other.execute("ROLLBACK")
        other.close()
        store.publish("a", [("ann", "again", Meta())])
        store.hub.wait(5)
        assert seqs(store.hub.delivered()) == [1, 2]
        assert store.health() is None
        assert [e["text"] for e in store.read("a")] == ["a 1", "again"]
    finally:
        store.close()


def count_rows(path) -> dict:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return dict(conn.execute("SELECT room, count(*) FROM events GROUP BY room"))


def test_writer_prunes_old_rows_from_the_file(tmp_path):
    """The writer deletes rows beyond the retention window from the file itself."""
    path = str(tmp_path / "h.db")
    store = started(SqliteEngine(path, per_room=5, prune_interval=0))
    write(store, [chat("a", n) for n in range(1, 51)])
    assert seqs(store.read("a", after=0)) == [46, 47, 48, 49, 50]
    store.close()
    assert count_rows(path) == {"a": 5}


def test_smaller_retention_prunes_after_start(tmp_path):
    """Reopening with a smaller history_per_room prunes every room, written to or not, once the
    store has started (on the writer thread, so opening a file of many rooms stays fast)."""
    path = str(tmp_path / "h.db")
    store = started(SqliteEngine(path))
    write(store, [chat("a", n) for n in range(1, 21)] + [chat("b", n) for n in range(1, 3)])
    store.close()
    store = started(SqliteEngine(path, per_room=3, prune_interval=0.01))
    wait_for(lambda: count_rows(path) == {"a": 3, "b": 2})
    store.close()


def test_graceful_close_leaves_no_wal_file(tmp_path):
    """After close() the history is in the main file; the -wal and -shm files are gone."""
    path = tmp_path / "h.db"
    store = started(SqliteEngine(str(path)))
    write(store, [chat("a", 1)])
    assert (tmp_path / "h.db-wal").exists()
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.db"]


def test_checkpoint_thread_moves_the_wal_into_the_file(tmp_path):
    """While the store runs, committed events reach the main file (SQLite's own checkpoint is off)."""
    path = tmp_path / "h.db"
    store = started(SqliteEngine(str(path), checkpoint_interval=0.05))
    try:
        empty = path.stat().st_size
        write(store, [chat("a", n, "x" * 200) for n in range(1, 2001)])
        wait_for(lambda: path.stat().st_size > empty + 200 * 2000)
    finally:
        store.close()


def test_open_engine_picks_the_engine_from_config(tmp_path):
    """':memory:' gives a MemoryEngine; a path gives a SqliteEngine at that absolute path."""
    assert isinstance(open_engine(Config(db=":memory:")), MemoryEngine)
    store = open_engine(Config(db=str(tmp_path / "x.db"), history_per_room=7))
    try:
        assert isinstance(store, SqliteEngine)
        assert store.location == str(tmp_path / "x.db")
    finally:
        store.close()


def test_default_db_is_roomchat_db():
    """The default history is the file roomchat.db in the working directory."""
    assert Config().db == "roomchat.db"


# -- edit, delete and react (engine.amend) ---------------------------------------------------------


def amend(store, *events) -> list:
    """engine.amend each event (protocol.amend_event) in order; wait until all are delivered; return them."""
    before = len(store.hub.delivered())
    for event in events:
        store.amend(event["room"], event, Meta())
    store.hub.wait(before + len(events))
    return store.hub.delivered()[before:]


def test_amend_takes_the_next_seq_and_changes_its_chat(make_store):
    """An edit, a react and a delete each take the room's next seq, in order with the chats, and
    change the chat they target; read gives the chat as it is now, then the events as stored."""
    store = make_store()
    write(store, [chat("lobby", 1, "helo"), chat("lobby", 2, "bye")])
    edit, react, delete = amend(store, amend_event("edit", "lobby", 1, "ann", text="hello"),
                                amend_event("react", "lobby", 1, "bob", emoji="👍", on=True),
                                amend_event("delete", "lobby", 2, "ann"))
    assert seqs([edit, react, delete]) == [3, 4, 5]
    assert write(store, [chat("lobby", 6)])[0]["seq"] == 6
    first, second, *rest = store.read("lobby")
    assert (first["text"], first["edited"], first["reactions"]) == ("hello", edit["ts"], {"👍": ["bob"]})
    assert second == {"type": "chat", "room": "lobby", "from": "ann", "seq": 2, "ts": second["ts"], "deleted": True}
    assert rest[:3] == [edit, react, delete]
    assert store.message("lobby", 1) == first and store.message("lobby", 9) is None


def test_an_edit_stored_after_a_delete_changes_nothing_and_keeps_no_text(make_store):
    """The race the rules cannot rule out: an edit of a chat deleted before it was stored is
    delivered and kept without its text, and the chat stays deleted."""
    store = make_store()
    write(store, [chat("lobby", 1, "secret")])
    _delete, edit = amend(store, amend_event("delete", "lobby", 1, "ann"),
                          amend_event("edit", "lobby", 1, "ann", text="secret again"))
    assert "text" not in edit
    assert store.read("lobby")[0]["deleted"] is True
    assert all("secret" not in str(event) for event in store.read("lobby"))


def test_amend_of_a_chat_that_is_gone_is_stored_without_effect(make_store):
    """An event whose target is no longer kept (per_room) is stored with its seq and changes nothing."""
    store = make_store(per_room=2)
    write(store, [chat("lobby", 1), chat("lobby", 2), chat("lobby", 3)])
    (react,) = amend(store, amend_event("react", "lobby", 1, "bob", emoji="👍", on=True))
    assert react["seq"] == 4 and [e["seq"] for e in store.read("lobby")] == [3, 4]


# -- read markers and DMs that wait (engines/personal.py, engines/sqlite_personal.py) ------------


def test_a_mark_never_goes_back(make_store):
    """set_mark answers the max of the old mark and the new seq; mark() reads it; none is None."""
    engine = make_store()
    assert engine.mark("ann", "lobby") is None
    assert engine.set_mark("ann", "lobby", 5) == 5
    assert engine.set_mark("ann", "lobby", 3) == 5
    assert engine.set_mark("ann", "lobby", 9) == 9
    assert engine.mark("ann", "lobby") == 9 and engine.mark("bob", "lobby") is None


def test_marks_are_listed_marked_last_first_and_bounded(make_store):
    """marks() lists the room marked last first; past MAX_MARKS the one marked longest ago goes
    (a mark moved again counts as marked last)."""
    engine = make_store()
    for n in range(MAX_MARKS):
        engine.set_mark("ann", f"r{n}", 1)
    engine.set_mark("ann", "r0", 2)  # r0 is now the newest; r1 the oldest
    engine.set_mark("ann", "new", 1)
    marks = engine.marks("ann")
    assert len(marks) == MAX_MARKS and "r1" not in marks
    assert list(marks)[:2] == ["new", "r0"] and marks["r0"] == 2
    assert engine.marks("bob") == {}


def test_dms_wait_bounded_and_are_taken_once(make_store):
    """keep_dm keeps up to `most` DMs per identity (then False); take_dms hands them out oldest
    first, once."""
    engine = make_store()
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


def test_redis_meta_from_an_origin_is_metas_own_making():
    """The Redis engine makes Meta positionally from an origin's JSON (engines/redis.py `_meta`,
    the hot path): every field of Meta is given, each in its place, for a chat (seq of its own),
    for an event placed at a seq (at, n) and for a kick or ban that took a member out (at, n, 1);
    a new field of Meta fails this until `_meta` has it."""
    from chatserver.engines.redis import _meta, _origin

    chat_meta = Meta(("p1", 7), "r1", None, None, False, "k1")
    assert _meta(orjson.loads(_origin(chat_meta)), {"seq": 12}) == (chat_meta, (12, 0))
    placed = Meta(("p1", 7), None, 40, "c9", True, "k2")
    origin = [*orjson.loads(_origin(placed))[:2], None, "c9", True, "k2", 40, 3]
    assert _meta(origin, {"type": "presence"}) == (placed, (40, 4))
    assert _meta([*origin, 1], {"type": "kick"}) == (placed._replace(removed=True), (40, 4))
    assert _meta([None, None, None, None, False, None], {"seq": 1})[0] == Meta()
    assert len(Meta._fields) == len(chat_meta) == 7


def test_floor_keys_are_named_by_the_smallest_number_in_their_slot():
    """The seq floors stored in Redis keep their names (redis_scripts.slot_tags): each slot's tag
    is the smallest decimal number whose CRC16 falls in that slot, as one number at a time finds."""
    import binascii

    from redis.crc import key_slot

    from chatserver.engines.redis_scripts import floor_key, slot_tags

    smallest: dict = {}
    n = 0
    while len(smallest) < 16384:
        smallest.setdefault(binascii.crc_hqx(str(n).encode(), 0) % 16384, str(n))
        n += 1
    assert slot_tags() == [smallest[slot] for slot in range(16384)]
    for room in ("lobby", "x", "ünï", "{odd}"):
        key = floor_key(room)
        assert key_slot(key.encode()) == key_slot(f"roomchat:{{{room}}}:seq".encode())
        assert key == f"roomchat:{{{smallest[key_slot(key.encode())]}}}:floor"
