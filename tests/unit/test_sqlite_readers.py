"""The SQLite reader pool: a fixed number of connections, the rest wait, idle ones are closed."""

import sqlite3
import threading
import time

import pytest

from chatserver.engines.sqlite_readers import POOL_SIZE, PoolBusy, ReaderPool
from chatserver.rooms.registry import REPLY_BUILDERS, SEARCHERS
from tests.helpers import wait_for


class Opened:
    """connect() for the pool: in-memory connections, counted."""

    def __init__(self):
        self.made = []

    def __call__(self) -> sqlite3.Connection:
        self.made.append(sqlite3.connect(":memory:", check_same_thread=False))
        return self.made[-1]


@pytest.fixture
def opened():
    """An Opened whose connections are all closed at teardown, lent ones too (closing twice is harmless)."""
    made = Opened()
    yield made
    for conn in made.made:
        conn.close()


def test_at_most_size_connections_and_the_rest_wait(opened):
    """Ten readers at once share two connections; each waits its turn and all get one."""
    pool = ReaderPool(opened, size=2, wait=5)
    inside, most = [0], [0]
    lock = threading.Lock()

    def read():
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=read) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened.made) == 2 and most[0] == 2 and pool.open_connections == 2


def test_a_read_waits_at_most_wait_seconds(opened):
    """With every connection lent for longer than `wait`, the next read is refused with PoolBusy."""
    pool = ReaderPool(opened, size=1, wait=0.1)
    with pool.connection(), pytest.raises(PoolBusy), pool.connection():
        pass


def test_idle_connections_are_closed(opened):
    """Connections unused for idle_timeout are closed and a later read opens a new one."""
    pool = ReaderPool(opened, size=2, idle_timeout=0.05)
    with pool.connection():
        pass
    assert pool.close_idle() == 0
    time.sleep(0.1)
    assert pool.close_idle() == 1 and pool.open_connections == 0
    with pytest.raises(sqlite3.ProgrammingError):
        opened.made[0].execute("SELECT 1")
    with pool.connection():
        pass
    assert len(opened.made) == 2


def test_closed_pool_refuses_and_closes_what_comes_back(opened):
    """After close(), reads get PoolBusy and a connection still lent is closed when given back."""
    pool = ReaderPool(opened, size=2)
    with pool.connection():
        pool.close()
    assert pool.open_connections == 0
    with pytest.raises(PoolBusy), pool.connection():
        pass


def test_paused_waits_for_lent_connections_and_lends_none_meanwhile(opened):
    """paused() waits until the lent connection is back, then lends none until the block ends;
    the reader that asked meanwhile gets one right after."""
    pool = ReaderPool(opened, size=2, wait=5)
    lent = pool._borrow()
    events, release = [], threading.Event()

    def pause():
        with pool.paused(5) as idle:
            events.append(("paused", idle))
            release.wait(5)

    pausing = threading.Thread(target=pause)
    pausing.start()
    wait_for(lambda: pool._paused)
    assert not events  # still waiting for the lent connection
    pool._give_back(lent)
    wait_for(lambda: events)
    assert events == [("paused", True)]
    reader = threading.Thread(target=lambda: events.append(("read", pool._borrow())))
    reader.start()
    reader.join(0.2)
    assert len(events) == 1  # nothing lent while paused
    release.set()
    reader.join(5)
    pausing.join(5)
    assert [name for name, _ in events] == ["paused", "read"]


def test_paused_gives_up_waiting_after_its_wait(opened):
    """A connection kept past the wait: paused() goes on after `wait` seconds and says so."""
    pool = ReaderPool(opened, size=1, wait=5)
    lent = pool._borrow()
    with pool.paused(0.05) as idle:
        assert idle is False
    pool._give_back(lent)
    with pool.connection() as conn:  # lent again once the block ended
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_pool_has_a_reader_for_every_reply_builder_and_search():
    """POOL_SIZE is REPLY_BUILDERS + SEARCHERS: searches alone never keep a history reply from a reader."""
    assert POOL_SIZE == REPLY_BUILDERS + SEARCHERS
