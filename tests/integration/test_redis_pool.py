"""The Redis engine's connection pool (engines/redis_runner.py HandoutPool) against a real
redis-server: a connection it hands out is not closed under its taker by a concurrent
`disconnect_free_connections` (what redis-py's cluster client runs on a failover)."""

import threading

import pytest

from chatserver.engines.redis import RedisEngine

pytestmark = pytest.mark.timeout(30)

STEP = 10  # seconds a side of the race waits for the other at most (a hang, not a timing bet)


class _WatchedLock:
    """A pool's RLock that sets `reached` when thread `taker` asks for it holding `conn` (taken
    out of the pool's queue)."""

    def __init__(self, pool, conn, reached: threading.Event):
        self._lock, self._pool, self._conn, self._reached = pool._lock, pool, conn, reached
        self.taker = None

    def acquire(self, *args, **kwargs):
        if threading.get_ident() == self.taker and self._conn not in self._pool.pool.queue:
            self._reached.set()
        return self._lock.acquire(*args, **kwargs)

    def release(self):
        self._lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class _HeldReader:
    """A connection's hiredis reader whose first `has_data` (the pool's check of a connection it
    hands out, in the parser's can_read) sets `reached` and waits for `closed`."""

    def __init__(self, reader, reached: threading.Event, closed: threading.Event):
        self._reader, self._reached, self._closed = reader, reached, closed

    def has_data(self):
        self._reached.set()
        assert self._closed.wait(STEP)
        return self._reader.has_data()

    def __getattr__(self, name):
        return getattr(self._reader, name)


def race(pool) -> None:
    """Make the failover race on `pool` (a redis-py BlockingConnectionPool, connected to a real
    Redis) happen in the one order that breaks redis-py's own pool, then use the connection taken.

    A closer thread runs disconnect_free_connections: it lists the free connection (one,
    connected) and, holding the pool's lock, waits to close it until this thread has taken it
    from the queue and reached either the pool's check of it or the pool's lock. Fails as the
    taker fails (redis-py's own pool: TypeError from hiredis's parser, its socket None)."""
    conn = pool.get_connection()
    pool.release(conn)  # the queue's top: the next taken
    listed, reached, closed = threading.Event(), threading.Event(), threading.Event()
    lock = pool._lock = _WatchedLock(pool, conn, reached)
    lock.taker = threading.get_ident()
    conn._parser._reader = _HeldReader(conn._parser._reader, reached, closed)
    close = conn.disconnect
    failed = []

    def held_close(*args, **kwargs):
        listed.set()
        if not reached.wait(STEP):
            failed.append("the taker reached neither the check nor the lock")
        close(*args, **kwargs)
        closed.set()

    conn.disconnect = held_close
    closer = threading.Thread(target=pool.disconnect_free_connections, daemon=True)
    closer.start()
    try:
        assert listed.wait(STEP)
        taken = pool.get_connection()
        assert taken is conn
        conn.disconnect = close  # the race is over: the connection is the taker's alone
        taken.send_command("PING")
        assert taken.read_response() in (b"PONG", "PONG", True)
        pool.release(taken)
    finally:
        closer.join(STEP)
        pool._lock = lock._lock
    assert not failed and not closer.is_alive()


def test_a_connection_handed_out_during_a_failovers_closing_pass_is_the_takers(redis_server):
    """The engine's pool on one Redis: a closing pass that listed a free connection before it was
    taken closes it before the pool checks it (the pool then connects it anew), never while the
    taker holds it; the taker's command is answered."""
    engine = RedisEngine(redis_server.url)  # not started: nothing else takes connections
    try:
        race(engine._redis.connection_pool)
    finally:
        engine.close()
