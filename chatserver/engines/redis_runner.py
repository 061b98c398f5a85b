"""The Redis engine's writes on one Redis: EVALSHA on connections of the runner's own.

A chat is one script call, and on a 2-core machine redis-py's client spends more of the sender's
CPU around that call than the call itself: its pool's bookkeeping and its client's per-command
layers (retries, timing) cost about 35 µs of Python per call, where the round trip on a
connection of one's own costs about 20 (user CPU, measured with a trivial script). The runner
keeps redis-py's `Connection` (its RESP parser, hiredis when installed, its AUTH and SELECT at
connect) and drops the rest. It also knows when nothing of a call was sent: a connection that
cannot be had or made raises NotSent, so a stopped Redis is `unavailable` at once, not a
write whose outcome is unknown.

On a Redis Cluster the engine uses redis-py's cluster client instead (it routes by slot).

Threads: any thread may call `run`; a connection is used by one thread at a time (taken from
`_idle` under `_lock`, given back after a complete reply); `_slots` bounds how many exist.

The engine's other calls, and all of them on a Redis Cluster, take connections from a
HandoutPool (one per node there), a redis-py blocking pool that does not close what it just
handed out.
"""

import functools
import queue
import threading

import redis

try:  # redis-py packs a command through per-argument checks; hiredis's packer alone is cheaper
    from hiredis import pack_command
except ImportError:  # hiredis is optional: redis-py's own packer
    pack_command = None


class NotSent(redis.ConnectionError):
    """No connection to Redis could be had or made for a call: nothing of it was sent."""


class ScriptRunner:
    """Runs registered scripts (redis-py `Script`s: `sha`, `script`) with EVALSHA.

    `pool`: the engine's redis-py pool, whose connection class and arguments (address, password,
    database, timeouts) the runner's connections copy; `size`: connections at most; `wait`:
    seconds a call waits for one of them before NotSent."""

    def __init__(self, pool: redis.ConnectionPool, size: int, wait: float):
        self._make = lambda: pool.connection_class(**pool.connection_kwargs)
        self._idle: list = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._wait = wait

    def run(self, script, keys: list, args: list):
        """The script's reply. Raises NotSent (nothing sent), redis.ConnectionError or
        redis.TimeoutError (sent, outcome unknown), redis.ResponseError (an error reply: not
        carried out)."""
        if not self._slots.acquire(timeout=self._wait):
            raise NotSent("no Redis connection free")
        try:
            conn = self._connection()
            try:
                reply = self._evalsha(conn, script, keys, args)
            except redis.ResponseError:
                self._give_back(conn)  # an error reply: the connection is still in step
                raise
            except BaseException:
                conn.disconnect()
                raise
            self._give_back(conn)
            return reply
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()

    def _connection(self):
        """An idle connection, checked as redis-py's pool does (one that has something to read,
        an end of file say, is made again), or a new one. Raises NotSent."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._make()
        else:
            try:
                stale = conn.can_read(timeout=0)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                stale = True
            if stale:
                conn.disconnect()
        try:
            conn.connect()  # a no-op when connected
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            conn.disconnect()
            raise NotSent(str(exc)) from exc
        return conn

    def _give_back(self, conn) -> None:
        with self._lock:
            self._idle.append(conn)

    @staticmethod
    def _evalsha(conn, script, keys: list, args: list):
        try:
            _send(conn, ("EVALSHA", script.sha, len(keys), *keys, *args))
            return conn.read_response()
        except redis.exceptions.NoScriptError:  # Redis restarted or flushed its scripts: load it
            conn.send_command("SCRIPT", "LOAD", script.script)
            conn.read_response()
            _send(conn, ("EVALSHA", script.sha, len(keys), *keys, *args))
            return conn.read_response()


class HandoutPool(redis.BlockingConnectionPool):
    """redis-py's BlockingConnectionPool (same arguments), but a connection it hands out is one
    no `disconnect_free_connections` closes under its new user.

    redis-py's cluster client, on a connection error or timeout (a failover), lists a node pool's
    free connections and closes them, holding the pool's `_lock` for the whole pass; the pool's
    `get_connection` takes a connection from its queue without that lock. One taken between the
    listing and the closing was closed while its taker checked it, and hiredis's parser, its
    socket None under it, raised TypeError (no RedisError: the client was closed with 1011).
    Here a connection taken from the queue waits for `_lock` (and lets go at once) before it is
    checked: a pass that listed it ends before, a later pass cannot list it.

    Threads: any, as redis-py's pool. Who holds `_lock` (redis-py's RLock): the closing pass,
    and a taker for no time."""

    def __init__(self, **kwargs):
        super().__init__(queue_class=functools.partial(_Handout, self), **kwargs)


class _Handout(queue.LifoQueue):
    """A HandoutPool's queue of free connections (None: one to make)."""

    def __init__(self, pool: HandoutPool, maxsize: int):
        super().__init__(maxsize)
        self._pool = pool

    def get(self, block: bool = True, timeout: float | None = None):
        """What LifoQueue.get returns, once no closing pass that may have listed it is under way.
        Raises queue.Empty."""
        conn = super().get(block, timeout)
        with self._pool._lock:  # waits out a pass of disconnect_free_connections
            pass
        return conn


def _send(conn, command: tuple) -> None:
    """Send one command (str, bytes and int arguments) on `conn`. Raises what redis-py's
    `send_command` raises."""
    if pack_command is None:
        conn.send_command(*command)
    else:
        try:
            packed = pack_command(command)
        except TypeError as exc:  # as redis-py reports an argument it cannot send
            raise redis.DataError(exc) from exc
        conn.send_packed_command([packed])
