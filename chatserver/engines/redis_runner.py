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
"""

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
