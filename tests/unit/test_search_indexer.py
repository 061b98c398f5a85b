"""engines.sqlite_search.Indexer: when the writer indexes, and what a failing index does."""

import sqlite3
import threading

from chatserver.engines import sqlite_search
from chatserver.engines.sqlite_search import Indexer


class Conn:
    """A writer connection whose statements succeed (each kept, once per row) or, with `broken`, fail."""

    def __init__(self):
        self.broken = False
        self.statements = []

    def execute(self, sql, params=()):
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        self.statements.append(sql)
        return self

    def executemany(self, sql, rows):
        for row in rows:
            self.execute(sql, row)

    def fetchone(self):
        return (0,)

    def rollback(self):
        pass


def chats(*seqs):
    return [("r", {"type": "chat", "seq": seq}, None) for seq in seqs]


def test_a_search_waits_only_for_what_was_delivered_before_it():
    """A search wakes the writer to index the chats delivered before it, then goes on; with
    nothing left to index it does not wake the writer at all."""
    indexer = Indexer(delay=60)
    conn = Conn()
    indexer.stored(chats(1, 2))
    assert not indexer.due() and indexer.timeout(5.0) == 5.0  # not yet: its delay is 60 s
    waiting = threading.Thread(target=indexer.wait, args=(lambda: indexer.index(conn),))
    waiting.start()  # the wake-up indexes at once, as the writer does on the wake-up
    waiting.join(5)
    assert not waiting.is_alive()
    assert conn.statements.count(sqlite_search.INDEX_ID) == 2
    indexer.wait(lambda: (_ for _ in ()).throw(AssertionError("woken with nothing to index")))


def test_a_failing_index_backs_off_and_searches_do_not_wait_for_it(monkeypatch):
    """A failing index is tried again after 1 s, then 2 s; meanwhile a search does not wait;
    once it works, nothing is left due."""
    now = [100.0]
    monkeypatch.setattr(sqlite_search.time, "monotonic", lambda: now[0])
    indexer = Indexer(delay=0.25)
    conn = Conn()
    conn.broken = True
    indexer.stored(chats(1))

    def one_try():  # as the writer does when it is due
        now[0] += indexer.timeout(10.0) or 1
        assert indexer.due()
        try:
            indexer.index(conn)
        except sqlite3.OperationalError:
            indexer.failed()

    one_try()
    assert not indexer.due() and indexer.timeout(10.0) == 1.0  # tried again in 1 s, not at once
    indexer.wait(lambda: (_ for _ in ()).throw(AssertionError("a search waited for a failing index")))
    one_try()
    assert indexer.timeout(10.0) == 2.0  # then twice as long
    conn.broken = False
    now[0] += 2
    indexer.index(conn)
    assert not indexer.due() and indexer.timeout(10.0) == 10.0  # all indexed: nothing to wait for


def test_past_its_bound_the_oldest_chats_are_left_to_the_next_open(monkeypatch):
    """Past INDEX_PENDING_MAX chats waiting, the oldest are dropped and counted in `lost`."""
    monkeypatch.setattr(sqlite_search, "INDEX_PENDING_MAX", 3)
    indexer = Indexer()
    indexer.stored(chats(1, 2))
    indexer.stored(chats(3, 4, 5))
    assert indexer.lost == 2  # the file is then not marked clean at close: the next open indexes them
    conn = Conn()
    indexer.index(conn)
    assert conn.statements.count(sqlite_search.INDEX_ID) == 3
