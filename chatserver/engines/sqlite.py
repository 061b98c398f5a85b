"""The SQLite engine, roomchat's default: one process, chat history in a file.

Implements engine.Engine (its docstring states the contract). `publish` assigns seqs under
`_lock` and queues the events; one writer thread commits what has queued up (group commit),
then hands the batch to the hub. Presence and nick events (`announce`) are delivered at once:
not stored, they never wait for the disk; their place in the stream is where the hub delivers them.

When commits keep failing (disk full, the file locked by another program) for `fail_after`
seconds, the engine gives up on what is queued: seqs are rewound to the last committed ones, the
senders get `unavailable`, and until a commit works again each batch is tried only once, so
chats are refused quickly instead of piling up; `health()` says why for /healthz.
"""

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque

import orjson

from chatserver.engines import sqlite_search
from chatserver.engines.base import NOTICE_TYPES, LocalRules, Unavailable, amended, without_text
from chatserver.engines.sqlite_file import (
    BUSY_TIMEOUT,
    CLEAR_EDITS,
    DELETE_RULE,
    INSERT_AMEND,
    INSERT_EVENT,
    INSERT_NOTICE,
    PRUNE_NOTICES,
    PRUNE_ROOM,
    READ_BACK,
    READ_FORWARD,
    READ_RULES,
    READ_TARGET,
    SAVE_RULE,
    SET_LAST_SEQ,
    UPDATE_CHAT,
    StoreError,
    chat_data,
    connect,
    first_line,
    history_item,
    open_history,
    read_transcript,
)
from chatserver.engines.sqlite_personal import SqlitePersonal
from chatserver.engines.sqlite_quotas import HistoryQuotas, seq_floor
from chatserver.engines.sqlite_readers import PoolBusy, ReaderPool
from chatserver.ops import metrics
from chatserver.protocol import MAX_SEQ, chat_event

log = logging.getLogger("roomchat.store")


BATCH_MAX = 500  # events per commit at most; a batch is whatever queued up while the last one committed
BATCH_MAX_BYTES = 256 * 2**10  # ... and text bytes per commit (one event past it at most): bounds the WAL's overshoot
PRUNE_INTERVAL = 1.0  # seconds between retention passes of the writer over the rooms it wrote to
BACKLOG_CHUNK = 500  # rooms of the file given their retention pass, per pass, after start-up
CHECKPOINT_INTERVAL = 1.0  # seconds between WAL checkpoints, made by their own thread (see SqliteStore)
CHECKPOINT_WAIT = 0.5  # seconds a TRUNCATE checkpoint waits for a reader outside roomchat (a backup), commits with it
RETRY_MAX_DELAY = 2.0  # a failed commit is retried with backoff up to this many seconds apart
FAIL_AFTER = 10.0  # seconds of failing commits before queued chats are refused with `unavailable`

_STOP = object()  # put on the writer's queue by close()
_INDEX = object()  # put on it by a search that waits for the index: wakes the writer


class SqliteEngine(LocalRules, SqlitePersonal):
    """Chat history in a SQLite file, written by one background thread with group commit (at
    most BATCH_MAX events per transaction, then `hub.deliver(batch)`).

    Durability: WAL journal with `synchronous=NORMAL`. A commit is in the WAL file (the OS page
    cache) when COMMIT returns, so every committed event survives the server being killed, even
    with `kill -9`; only a power cut or kernel crash can lose the last commits, because the WAL is
    fsynced at checkpoints rather than at every commit. `synchronous=FULL` would close that gap at
    the cost of one fsync per batch (bench/store_bench.py --store-only measures both).

    Checkpoints (copying the WAL into the main file, with the only fsyncs NORMAL makes) run in a
    thread of their own every CHECKPOINT_INTERVAL, not in the writer: SQLite's automatic
    checkpoint would run inside a commit and hold every pending chat back for two fsyncs (with a
    100 ms fsync, commits stalled for 200 ms; measured with strace fault injection).

    The WAL stays bounded by bytes, whatever the rate of chats: a PASSIVE checkpoint never waits,
    but under steady writes it never catches up either, and SQLite restarts the WAL only once it
    has (a flood grew it to 344 MB in 45 s). So past half of `wal_max` (HistoryQuotas: part of
    `--history-max-bytes`) the checkpoint thread follows with a TRUNCATE checkpoint, which holds
    commits back while it copies the rest and empties the file; and past `wal_max` the writer
    does it itself after its commit, so however fast chats come, the WAL outgrows `wal_max` by
    one commit at most (BATCH_MAX_BYTES of texts) or one retention pass. The retention pass runs
    every PRUNE_INTERVAL or every `wal_max` / 4 bytes of texts, whichever comes first, so the
    pages in use outgrow their quota by about that much at most.

    Reads use their own connections from a fixed pool (engines/sqlite_readers.py: a few at once, the rest
    wait their turn; idle ones are closed), so a reader never waits for the writer (WAL) and never
    needs uncommitted rows: the Registry only asks for seqs it has delivered, and it delivers
    only what the writer handed it.

    Retention: reads see at most the last `per_room` events of a room; the writer deletes older
    rows every PRUNE_INTERVAL seconds for the rooms it wrote to, never on the append path, and
    for every room of the file, BACKLOG_CHUNK at a time, after start-up (so opening a file with
    200,000 rooms stays fast). In the same pass, `quotas` (engines/sqlite_quotas.py) prune the oldest
    events of the whole file and forget rooms with none left; the hub forgets them too.

    One process at a time: the file is flock()ed for the store's lifetime, so a second roomchat on
    the same file fails at start-up instead of reusing seqs.

    Room rules and reserved nicks (engine.LocalRules) are read from the `rules` table at start and
    served from memory; a change is written (own short connection, on the caller's thread) before
    it takes effect. They change rarely, so they stay out of the writer's queue.
    """

    cluster = False

    def __init__(self, path: str, per_room: int = 10000, *, synchronous: str = "NORMAL",
                 batch_max: int = BATCH_MAX, prune_interval: float = PRUNE_INTERVAL,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL, busy_timeout: float = BUSY_TIMEOUT,
                 fail_after: float = FAIL_AFTER, quotas: HistoryQuotas | None = None):
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = os.path.abspath(path)
        self.location = self.path
        self._hub = None
        self._busy_timeout = busy_timeout
        self._fail_after = fail_after
        self._lock = threading.Lock()  # guards _seqs, _committed_seqs, _failing and the queue's order
        self._failing: str | None = None  # why commits fail, while they do
        self._per_room = per_room
        self._batch_max = batch_max
        self._prune_interval = prune_interval
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = False
        self.commits = self.committed = 0  # transactions and events written, for the log and the bench
        self._quotas = quotas or HistoryQuotas()
        self._wal_path = self.path + "-wal"
        self._wal_max = self._quotas.wal_max  # bytes: past half of it, TRUNCATE checkpoints
        self._prune_bytes = self._wal_max // 4  # text bytes committed that make a retention pass due
        self._purge_pages = max(16, self._wal_max // 4 // 4096)  # index pages merged per pass after a delete
        self._lock_fd, self._conn, self.epoch = open_history(self.path, synchronous, busy_timeout,
                                                             wal_keep=self._wal_max // 4)
        try:
            self._floor = seq_floor(self._conn)  # a room the file does not know starts above it
            self._seqs = dict(self._conn.execute("SELECT room, last_seq FROM rooms"))
            self._init_rules(self._conn.execute(READ_RULES).fetchall())
            self._load_personal(self._conn)  # read markers and DMs that wait (engines/personal.py)
            self._checkpoint_conn = connect(self.path, CHECKPOINT_WAIT)  # used under _checkpoint_lock
        except BaseException as exc:  # nothing left open or locked: the file can be opened again
            self._conn.close()
            os.close(self._lock_fd)  # after conn.close(), as in close()
            if isinstance(exc, sqlite3.Error | ValueError):  # a row that is not what roomchat wrote
                raise StoreError(f"cannot use history database {self.path}: {first_line(exc)}") from None
            raise
        self._readers = ReaderPool(self._connect_reader)
        self._committed_seqs = dict(self._seqs)  # writer thread only, once started
        self._backlog = deque(self._seqs)  # rooms still to get their retention pass: writer thread only
        self._checkpoints_stop = threading.Event()
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time (writer or checkpoint thread)
        self._truncate_after = 0  # after a TRUNCATE checkpoint gave up: bytes the WAL must pass first
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(checkpoint_interval,), name="roomchat-checkpoint", daemon=True
        )
        self._writer = threading.Thread(target=self._write_loop, name="roomchat-store", daemon=True)
        self._indexer = sqlite_search.Indexer()  # chats stored, indexed for search a moment later

    def start(self, hub) -> None:
        self._hub = hub
        self._metrics = metrics.of(hub)  # commit latency, batch size, failed commits
        self._checkpointer.start()
        self._writer.start()

    # -- the store interface -------------------------------------------------------------------

    def last_seqs(self) -> dict[str, int]:
        """The highest seq ever stored in each room (pruning keeps these)."""
        with self._lock:
            return dict(self._seqs)

    def publish(self, room: str, chats: list, member: bool = True, mode: tuple | None = None) -> None:
        """Assign seqs and queue the events for the writer; no SQLite here. Raises Unavailable
        once the engine is closing."""
        with self._lock:
            if self._closing:
                raise Unavailable("the server is shutting down")
            for sender, text, meta in chats:
                seq = self._seqs[room] = self._seqs.get(room, self._floor) + 1
                self._queue.put((room, chat_event(room, sender, text, seq), meta))

    def amend(self, room: str, event: dict, meta) -> None:
        """Assign the seq and queue the edit, delete or react for the writer, in order with the
        chats (the writer applies it to its chat in the same commit: `_amend`). Raises
        Unavailable once the engine is closing."""
        with self._lock:
            if self._closing:
                raise Unavailable("the server is shutting down")
            seq = self._seqs[room] = self._seqs.get(room, self._floor) + 1
            self._queue.put((room, {**event, "seq": seq}, meta))

    def message(self, room: str, seq: int) -> dict | None:
        """The committed event at `seq` (within the room's last `per_room`), or None. Raises Unavailable."""
        found = self.read(room, after=seq - 1, limit=1)  # (no `before=seq + 1`: over SQLite's INTEGER at MAX_SEQ)
        return found[0] if found and found[0]["seq"] == seq else None

    def announce(self, room: str, event: dict, meta) -> None:
        """Deliver at once; a moderation event (NOTICE_TYPES) is first written to `notices`, for
        transcripts, after the last committed chat (own short connection, like a rule). Raises
        Unavailable when it cannot be written (then it is not delivered)."""
        if event["type"] in NOTICE_TYPES:
            after = self._committed_seqs.get(room, 0)  # the writer's; one dict read, atomic (GIL)
            self._write_one(INSERT_NOTICE, (room, after, time.time(), orjson.dumps(event).decode()), "moderation event")
        self._hub.deliver([(room, event, meta)])

    def transcript(self, room: str, since: float = 0.0) -> list:
        """The room's stored chats and moderation events from `since` (Unix time), in stream order.
        Raises Unavailable."""
        try:
            with self._readers.connection() as conn:
                return read_transcript(conn, room, since)
        except (PoolBusy, sqlite3.Error) as exc:
            raise Unavailable(f"history cannot be read ({exc})") from None

    def health(self) -> str | None:
        return f"history store failing: {self._failing}" if self._failing else None

    def _save(self, key: tuple, value: str | None, until: float | None) -> None:
        """Write one rule row (under LocalRules' lock). Raises Unavailable."""
        if value is None:
            self._write_one(DELETE_RULE, key, "room rule")
        else:
            self._write_one(SAVE_RULE, (*key, value, until), "room rule")

    def _write_one(self, statement: str, params: tuple, what: str) -> None:
        """Run one write on a short connection of its own (beside the writer). Raises Unavailable."""
        try:
            conn = connect(self.path, self._busy_timeout)
            try:
                conn.execute(statement, params)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.error("cannot store a %s: %s", what, exc)
            raise Unavailable(f"the {what} cannot be stored") from None

    def read(self, room: str, before: int | None = None, after: int | None = None, limit: int = 50,
             max_bytes: int | None = None) -> list:
        """Chat events with after < seq < before, oldest first: the first `limit` of them when
        `after` is given (paging forward), else the last `limit` (paging back); with `max_bytes`,
        the reading stops one event after their texts passed it. Raises Unavailable."""
        params = (room, after or 0, room, self._per_room, MAX_SEQ if before is None else before, limit)
        rows = self._rows(READ_BACK if after is None else READ_FORWARD, params, max_bytes, f"history read for {room}")
        if after is None:
            rows.reverse()
        return [history_item(room, *row) for row in rows]

    def search(self, room: str, words: list, before: int | None = None, limit: int = 50,
               max_bytes: int | None = None) -> list:
        """Chats of `room` with seq < `before` whose current text has every one of `words` as the
        start of one of its words (engines/sqlite_search.py), newest first, at most `limit`; with
        `max_bytes`, the reading stops one chat after their texts passed it. Raises Unavailable."""
        self._indexer.wait(lambda: self._queue.put(_INDEX))  # what was delivered before it, indexed
        params = (sqlite_search.match_expression(room, words), room, MAX_SEQ if before is None else before, MAX_SEQ,
                  room, self._per_room, limit)
        rows = self._rows(sqlite_search.QUERY, params, max_bytes, f"search in {room}")
        return [history_item(room, *row) for row in rows]  # in their current state (edited, reactions)

    def _rows(self, statement: str, params: tuple, max_bytes: int | None, what: str) -> list:
        """The rows of a read on a pooled connection (`_take`); `what` names it in the log.
        Raises Unavailable."""
        try:
            with self._readers.connection() as conn:
                return _take(conn.execute(statement, params), max_bytes)
        except PoolBusy as exc:
            log.warning("%s refused: %s", what, exc)
            raise Unavailable("history is busy") from None
        except sqlite3.Error as exc:
            log.error("%s failed: %s", what, exc)
            raise Unavailable("history cannot be read") from None

    def close(self) -> None:
        """Commit what is queued (and deliver it), stop the writer, close the file."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._queue.put(_STOP)
        if self._writer.is_alive():
            self._writer.join()
        self._checkpoints_stop.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join()
        self._readers.close()
        self._close_personal()
        self._checkpoint_conn.close()
        self._conn.close()  # the last connection out checkpoints the WAL into the main file
        if self.commits:
            log.info("history: %d chat events stored in %d commits this run", self.committed, self.commits)
        os.close(self._lock_fd)  # last: closing a descriptor of the file drops SQLite's own locks

    def _connect_reader(self) -> sqlite3.Connection:
        conn = connect(self.path, self._busy_timeout)
        conn.execute("PRAGMA query_only = 1")
        return conn

    # -- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        touched: set[str] = set()  # rooms written since the last retention pass
        last_prune = time.monotonic()
        written = 0  # text bytes committed since the last retention pass
        stopping = False
        while True:
            batch, stopping = self._take_batch(stopping)
            if batch and self._commit(batch):
                touched.update(room for room, _event, _meta in batch)
                written += sum(_text_bytes(event) for _room, event, _meta in batch)
                self._indexer.stored(batch)
                self._hand_over(batch)
            if self._indexer.due():
                self._index()
            due = stopping or written >= self._prune_bytes or time.monotonic() - last_prune >= self._prune_interval
            if due and (touched or self._backlog or self._quotas):
                self._prune(touched)
                touched.clear()
                last_prune, written = time.monotonic(), 0
            if self._wal_bytes() > self._wal_max:  # the checkpoint thread fell behind: do it here
                self._checkpoint("TRUNCATE", above=self._wal_max)
            if stopping and self._queue.empty():
                if self._index() and not self._indexer.lost:
                    sqlite_search.mark_clean(self._conn)
                return

    def _take_batch(self, stopping: bool) -> tuple[list, bool]:
        """Wait for an event, then take whatever else is queued, up to batch_max events or
        BATCH_MAX_BYTES of texts. Once close() has queued _STOP, only drain what is left (an
        append may have raced with close)."""
        batch = []
        size = 0
        try:  # wake up for the next retention pass even when nothing is written
            item = (self._queue.get_nowait() if stopping
                    else self._queue.get(timeout=self._indexer.timeout(self._prune_interval)))
            while True:
                if item is _STOP:
                    stopping = True
                elif item is not _INDEX:
                    batch.append(item)
                    size += _text_bytes(item[1])
                    if len(batch) >= self._batch_max or size >= BATCH_MAX_BYTES:
                        break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        return batch, stopping

    def _commit(self, batch: list) -> bool:
        """Insert the batch in one transaction. A failure (disk full, a foreign lock) is retried
        with backoff for `fail_after` seconds (once only while already failing); then the batch
        and everything queued behind it are refused (`_give_up`), as they are at once after an
        exception other than sqlite3.Error (a bug, logged). False if not committed."""
        last = {e["room"]: e["seq"] for _room, e, _meta in batch}
        delay = 0.05
        give_up_at = time.monotonic() + (0 if self._failing else self._fail_after)
        while True:
            started = time.perf_counter()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                written = self._insert(batch)
                self._conn.executemany(SET_LAST_SEQ, last.items())
                self._conn.execute("COMMIT")
                batch[:] = written
                self._metrics.committed(len(batch), started)
                self.commits += 1
                self.committed += len(batch)
                self._committed_seqs.update(last)
                if self._failing:
                    log.warning("history store: commits work again")
                    self._failing = None
                return True
            except sqlite3.Error as exc:
                self._metrics.engine_errors.inc()
                self._rollback()
                if self._closing or time.monotonic() >= give_up_at:
                    self._give_up(batch, first_line(exc))
                    return False
                log.error("cannot store %d chat events, retrying in %.2f s: %s", len(batch), delay, exc)
                time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_DELAY)
            except Exception:  # a bug: retrying cannot help, and the writer thread must live on
                log.exception("history store: storing %d chat events failed", len(batch))
                self._rollback()
                self._give_up(batch, "internal error")
                return False

    def _insert(self, batch: list) -> list:
        """Write the batch's events in order (inside the writer's transaction); the items to
        deliver (an edit of a deleted chat goes without its text). Raises sqlite3.Error."""
        if all(event["type"] == "chat" for _room, event, _meta in batch):  # the usual batch: chats only
            self._conn.executemany(INSERT_EVENT, [(e["room"], e["seq"], e["from"], e["text"], e["ts"])
                                                  for _room, e, _meta in batch])
            return batch
        written, chats = [], []
        for room, event, meta in batch:
            if event["type"] == "chat":
                chats.append((room, event["seq"], event["from"], event["text"], event["ts"]))
                written.append((room, event, meta))
                continue
            if chats:  # the chats before it first: it may be about one of them
                self._conn.executemany(INSERT_EVENT, chats)
                chats = []
            written.append((room, self._amend(room, event), meta))
        if chats:
            self._conn.executemany(INSERT_EVENT, chats)
        return written

    def _amend(self, room: str, event: dict) -> dict:
        """Store an edit, delete or react and change its chat's row (`text`: the current text, ''
        once deleted; `data`: edited, reactions, deleted); a delete also empties the texts of the
        chat's edits. Returns the event as stored. Writer thread, in its transaction. Raises sqlite3.Error."""
        target = event["target"]
        row = self._conn.execute(READ_TARGET, (room, target)).fetchone()
        chat = None if row is None else history_item(room, target, row[0], row[1], row[2], "chat", None, row[3])
        changed = chat if chat is None else amended(chat, event)
        if changed is not chat:
            self._conn.execute(UPDATE_CHAT, (changed.get("text", ""), chat_data(changed), room, target))
            if event["type"] == "delete":
                self._conn.execute(CLEAR_EDITS, (room, target))
        elif event["type"] == "edit":  # its chat is deleted or gone: the text is not kept
            event = without_text(event)
        data = orjson.dumps({"emoji": event["emoji"], "on": event["on"]}).decode() if event["type"] == "react" else None
        self._conn.execute(INSERT_AMEND, (room, event["seq"], event["from"], event.get("text", ""), event["ts"],
                                          event["type"], target, data))
        return event

    def _give_up(self, batch: list, reason: str) -> None:
        """Refuse the batch and everything queued: rewind seqs to the committed ones, so the next
        chat takes the seq after the last stored one, and tell the senders."""
        with self._lock:
            refused = list(batch)
            stop = False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                elif item is not _INDEX:
                    refused.append(item)
            if stop:
                self._queue.put(_STOP)
            for room, _event, _meta in refused:
                self._seqs[room] = self._committed_seqs.get(room, self._floor)
            self._failing = reason
        log.error("history store failing (%s): %d chat events refused", reason, len(refused))
        self._hub.reject(refused, "history cannot be stored")

    def _index(self) -> bool:
        """Index the chats stored since the last time (sqlite_search.Indexer); a failure is
        logged and they wait for the next try. True if it worked."""
        try:
            self._indexer.index(self._conn)
            return True
        except sqlite3.Error as exc:
            self._indexer.failed()
            self._metrics.engine_errors.inc()
            log.error("search index: the chats stored last wait for the next try: %s", exc)
            return False

    def _hand_over(self, batch: list) -> None:
        try:
            self._hub.deliver(batch)
        except Exception:  # a bug in the hub must not stop the writer
            log.exception("delivery failed")

    def _prune(self, rooms: set) -> None:
        """Delete events older than the last `per_room` of each room (of `rooms` and a slice of
        the backlog), then apply the quotas; failures wait for the next pass."""
        rooms = set(rooms)
        while self._backlog and len(rooms) < BACKLOG_CHUNK:
            rooms.add(self._backlog.popleft())
        forgotten, floor = {}, self._floor
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(PRUNE_ROOM, [(room, room, self._per_room) for room in rooms])
            self._conn.executemany(PRUNE_NOTICES, [(room, room, self._per_room) for room in rooms])
            if self._quotas:
                forgotten, floor = self._quotas.prune(self._conn, self._committed_seqs, self._hub.has_room, floor)
            sqlite_search.purge_step(self._conn, self._purge_pages)  # deleted chats' words out of the index
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            log.warning("history retention pass failed: %s", exc)
            return
        if forgotten:
            self._forget(forgotten, floor)

    def _forget(self, forgotten: dict, floor: int) -> None:
        """Rooms the quotas emptied and whose rows are gone: drop their seqs here and in the hub
        (unless someone joined one meanwhile, or a chat to it is queued: then it goes on from its
        last seq, and its next commit writes its row again)."""
        kept = self._hub.forget(list(forgotten))
        with self._lock:
            self._floor = floor
            for room, last in forgotten.items():
                if room not in kept and self._seqs.get(room) == last:
                    del self._seqs[room]
                    del self._committed_seqs[room]
        log.info("history quotas: %d rooms with no history left forgotten (seqs continue above %d)",
                 len(forgotten), floor)

    def _checkpoint_loop(self, interval: float) -> None:
        """Copy committed WAL frames into the main file, beside the writer (PASSIVE never waits);
        once the WAL is past half its bound, empty it (TRUNCATE: commits wait meanwhile)."""
        while not self._checkpoints_stop.wait(interval):
            self._checkpoint("PASSIVE")
            self._checkpoint("TRUNCATE", above=self._wal_max // 2)
            self._readers.close_idle()

    def _checkpoint(self, mode: str, above: int = -1) -> bool:
        """One checkpoint, if the WAL is larger than `above` bytes; by the checkpoint thread or
        the writer (outside a transaction), one at a time (`_checkpoint_lock`: SQLite would turn
        the second away at once; this way the writer waits for the thread's, then finds the WAL
        emptied).

        TRUNCATE holds commits back while it copies what is left and empties the WAL file. It
        needs every reader on the newest snapshot: the pool lends nothing meanwhile (readers
        that overlap could otherwise hold it off for ever), and a reader outside roomchat (a
        backup) is waited for CHECKPOINT_WAIT at most; after such a failure, the next TRUNCATE
        waits until the WAL has doubled, so a long backup costs a few short stalls, not one per
        commit. True if every frame was copied (and, TRUNCATE, the file emptied)."""
        with self._checkpoint_lock:
            wal = self._wal_bytes()
            if wal <= above or (mode == "TRUNCATE" and wal <= self._truncate_after):
                return True
            started = time.monotonic()
            pause = self._readers.paused(CHECKPOINT_WAIT) if mode == "TRUNCATE" else contextlib.nullcontext()
            try:
                with pause:
                    busy, logged, copied = self._checkpoint_conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint (%s) failed: %s", mode, exc)
                return False
            if mode == "TRUNCATE":
                self._truncate_after = 2 * wal if busy else 0
        if busy and mode == "TRUNCATE":
            log.warning("WAL checkpoint (TRUNCATE) gave up after %.1f s: a reader of an older snapshot (a backup?) "
                        "kept %d of %d frames; the WAL (%d bytes) is tried again at twice that",
                        time.monotonic() - started, max(0, logged - copied), logged, wal)
        return not busy and logged == copied

    def _wal_bytes(self) -> int:
        """The WAL file's size now, in bytes (0 when there is none)."""
        try:
            return os.stat(self._wal_path).st_size
        except OSError:
            return 0

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")


def _text_bytes(event: dict) -> int:
    """What a stored event's text takes in the file, in bytes (UTF-8)."""
    return len(event.get("text", "").encode())


def _take(cursor, max_bytes: int | None) -> list:
    """The cursor's rows; with `max_bytes`, only until their texts passed it, and one more (so
    the caller, cutting to size, knows there was more). Raises sqlite3.Error."""
    if max_bytes is None:
        return cursor.fetchall()
    rows, total = [], 0
    try:
        for row in cursor:
            rows.append(row)
            if total > max_bytes:
                break
            total += len(row[2].encode())  # at most what the text takes in JSON, so never too early
    finally:
        cursor.close()  # a statement left open would hold its snapshot, and hold checkpoints back
    return rows


def open_engine(config):
    """The engine the settings name: Redis with `redis`, else memory for `--db :memory:`, else a
    SQLite file. Raises EngineError (StoreError) when it cannot be used."""
    if getattr(config, "redis", ""):
        from chatserver.engines.redis import RedisEngine  # only Redis users need redis-py
        from chatserver.engines.redis_quotas import RedisQuotas

        quotas = RedisQuotas(config.history_max_bytes, config.history_max_age, config.history_max_rooms)
        return RedisEngine(config.redis, per_room=config.history_per_room, lease=config.redis_lease,
                           resume_window=config.ping_interval + config.ping_timeout, quotas=quotas)
    if config.db == ":memory:":
        from chatserver.engines.memory import MemoryEngine

        return MemoryEngine(per_room=config.history_per_room, max_bytes=config.history_max_bytes,
                            max_age=config.history_max_age, max_rooms=config.history_max_rooms)
    if not config.db:
        raise StoreError("--db must name a file, or ':memory:' to keep history in memory only")
    quotas = HistoryQuotas(config.history_max_bytes, config.history_max_age, config.history_max_rooms)
    return SqliteEngine(config.db, per_room=config.history_per_room, quotas=quotas)
