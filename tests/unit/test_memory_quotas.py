"""History quotas of the memory engine (`--db :memory:`): the SQLite file's quotas with the same
meaning (tests/unit/test_sqlite_quotas.py): oldest first, a room keeps a run of its newest
events, rooms with nothing left are forgotten and their seqs never reused."""

import sys
import time

from chatserver.config import Config
from chatserver.engines.memory import EVENT_BYTES, MemoryEngine, event_bytes
from chatserver.engines.sqlite import open_engine
from tests.helpers import RoomsHub, wait_for

EMOJI = "\U0001f600" * 2000  # the longest text: 8000 bytes of UTF-8, about 8 KB in memory


def engine(hub, **quotas) -> MemoryEngine:
    store = MemoryEngine(**quotas)
    store.start(hub)
    return store


def kept(store) -> dict:
    """room -> the seqs the engine still returns."""
    return {room: [e["seq"] for e in store.read(room, limit=10**6)] for room in store.last_seqs()}


def test_event_bytes_counts_the_text_as_python_holds_it():
    """An event counts EVENT_BYTES plus its text's size in memory (4 bytes per emoji)."""
    assert event_bytes({"text": EMOJI}) == EVENT_BYTES + sys.getsizeof(EMOJI) > 8000


def test_byte_quota_drops_oldest_first_keeping_each_room_a_run():
    """Past max_bytes the oldest events go first, across rooms; each room keeps its newest
    events with no hole, and what is kept fits the quota."""
    hub = RoomsHub()
    store = engine(hub, max_bytes=400_000)
    for n in range(40):
        hub.publish(store, f"r{n % 4}", [f"{n:03d} " + EMOJI[:250]] * 25)
    rooms = kept(store)
    assert sum(len(seqs) for seqs in rooms.values()) * (EVENT_BYTES + 1000) <= 400_000
    assert set(rooms) == {"r0", "r1", "r2", "r3"}
    for room, seqs in rooms.items():
        assert seqs == list(range(seqs[0], 251)), room  # a suffix of 1..250
    assert store._bytes <= 400_000
    assert sum(event_bytes(e) for room in rooms for e in store.read(room, limit=10**6)) == store._bytes


def test_per_room_limit_counts_in_the_byte_total():
    """Events past history_per_room go and no longer count against max_bytes."""
    hub = RoomsHub()
    store = engine(hub, per_room=3, max_bytes=10**9)
    hub.publish(store, "lobby", [EMOJI] * 10)
    assert kept(store) == {"lobby": [8, 9, 10]}
    assert store._bytes == 3 * event_bytes({"text": EMOJI})


def test_age_quota_forgets_emptied_rooms_and_seqs_go_on_above_them():
    """Events older than max_age are never read again; a room left empty is forgotten, here and
    in the hub, and its next chat takes a seq above every seq it had (so does a new room)."""
    hub = RoomsHub()
    store = engine(hub, max_age=0.2)
    hub.publish(store, "old", ["a", "b", "c"])
    wait_for(lambda: store.read("old") == [] and "old" in hub.forgotten)
    assert store.last_seqs() == {}
    assert [e["seq"] for e in hub.publish(store, "old", ["d"])] == [4]
    assert [e["seq"] for e in hub.publish(store, "other", ["x"])] == [4]


def test_a_room_someone_is_in_is_forgotten_only_once_they_left():
    """A room emptied by the age quota while a member is in it keeps its seq (its member would
    see it jump); once nobody is in it, it is forgotten and its seqs are never given out again."""
    hub = RoomsHub(live={"old"})
    store = engine(hub, max_age=0.2)
    hub.publish(store, "old", ["a", "b"])
    wait_for(lambda: store.read("old") == [])
    assert store.last_seqs() == {"old": 2} and hub.forgotten == []
    hub.live.clear()
    wait_for(lambda: store.read("x") == [] and "old" in hub.forgotten, timeout=5)  # checked once a second
    assert [e["seq"] for e in hub.publish(store, "new", ["c"])] == [3]


def test_room_quota_forgets_the_quietest_rooms_but_not_one_with_members():
    """Past max_rooms the rooms quiet longest are forgotten, whole; a room someone is in is kept
    however quiet."""
    hub = RoomsHub(live={"r0"})
    store = engine(hub, max_rooms=3)
    for n in range(6):
        hub.publish(store, f"r{n}", ["hi"])
        time.sleep(0.01)  # each room's newest event a little later than the last one's
    assert sorted(kept(store)) == ["r0", "r4", "r5"]
    assert sorted(hub.forgotten) == ["r1", "r2", "r3"]
    assert store._bytes == 3 * event_bytes({"text": "hi"})


def test_memory_db_takes_the_history_quotas_from_the_settings():
    """`--db :memory:` gets --history-max-bytes, --history-max-age and --history-max-rooms."""
    store = open_engine(Config(db=":memory:", history_max_bytes=123, history_max_age=4.5, history_max_rooms=6,
                               history_per_room=7))
    assert isinstance(store, MemoryEngine)
    assert (store.max_bytes, store.max_age, store.max_rooms, store._per_room) == (123, 4.5, 6, 7)
