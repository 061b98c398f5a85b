"""Fakes for tests that need no sockets: a connection whose sends are kept in a list, an engine
that stores only when told to (its reads see committed events only, like SQLite's), and the
SQLite engine with its disk use measured. Imported through tests/helpers.py."""

import json
import os
import threading

from chatserver.engines.base import LocalRules, Meta
from chatserver.engines.sqlite import SqliteEngine


class FakeConn:
    """A transport connection whose sends are kept in a list: for registry and dispatch tests.
    `closed` is the (code, reason) the server closed it with, or None."""

    def __init__(self):
        self.frames = []
        self.closed = None
        self.own_bytes = 0

    def send_frame(self, frame: bytes, own: int = 0) -> None:
        self.frames.append(frame)
        self.own_bytes += own

    def pace(self) -> None:
        pass

    def backlog(self) -> int:
        return 0

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def events(self, kind=None) -> list:
        """Every event sent, in order; one write may carry several frames."""
        out = []
        for data in self.frames:
            pos = 0
            while pos < len(data):
                n = data[pos + 1] & 0x7F
                start = pos + 2
                if n == 126:
                    n, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
                elif n == 127:
                    n, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
                event = json.loads(data[start : start + n])
                pos = start + n
                if kind is None or event["type"] == kind:
                    out.append(event)
        return out


class ManualEngine(LocalRules):
    """An engine that stores a chat only when the test says `commit()`, like the SQLite writer:
    reads see committed events only, and `announce` delivers at once. `on_read` runs inside
    every read, so a test can make things happen between a join's place and its history read.
    Room rules and reserved nicks are the memory engine's (LocalRules)."""

    cluster = False
    location = "test"
    epoch = "manual"

    def __init__(self):
        self.committed: dict[str, list] = {}
        self.uncommitted: list = []
        self.seqs: dict[str, int] = {}
        self.on_read = None
        self.reads = 0
        self.hub = None
        self._init_rules()

    def start(self, hub) -> None:
        self.hub = hub

    def last_seqs(self) -> dict:
        return {room: events[-1]["seq"] for room, events in self.committed.items() if events}

    def publish(self, room: str, chats: list, member: bool = True, mode: tuple | None = None) -> None:
        from chatserver.protocol import chat_event

        for sender, text, meta in chats:
            seq = self.seqs[room] = self.seqs.get(room, 0) + 1
            self.uncommitted.append((room, chat_event(room, sender, text, seq), meta))

    def commit(self, n: int | None = None) -> None:
        """Store the first `n` waiting events (all by default) and deliver them, in order."""
        n = len(self.uncommitted) if n is None else n
        batch, self.uncommitted = self.uncommitted[:n], self.uncommitted[n:]
        for room, event, _meta in batch:
            self.committed.setdefault(room, []).append(event)
        if batch:
            self.hub.deliver(batch)

    def announce(self, room: str, event: dict, meta) -> None:
        self.hub.deliver([(room, event, meta)])

    def read(self, room, before=None, after=None, limit=50, max_bytes=None) -> list:
        self.reads += 1
        if self.on_read is not None:
            hook, self.on_read = self.on_read, None
            hook()
        events = [e for e in self.committed.get(room, [])
                  if (after is None or e["seq"] > after) and (before is None or e["seq"] < before)]
        return events[:limit] if after is not None else events[-limit:]

    def health(self):
        return None

    def close(self) -> None:
        pass


class RecordingHub:
    """Plays the Registry: records what the engine delivers and rejects."""

    process_id = "test"

    def __init__(self):
        self.batches = []
        self.rejected = []
        self._cond = threading.Condition()

    def deliver(self, items: list) -> None:
        with self._cond:
            self.batches.append([event for _room, event, _meta in items])
            self._cond.notify_all()

    def reject(self, items: list, reason: str) -> None:
        with self._cond:
            self.rejected.extend(items)
            self._cond.notify_all()

    def delivered(self) -> list:
        return [event for batch in self.batches for event in batch]

    def wait(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.delivered()) + len(self.rejected) >= count, timeout=5)


class RoomsHub:
    """Plays the Registry for an engine with quotas: keeps deliveries, knows which rooms have
    members (`live`), records the rooms the engine forgot."""

    process_id = "test"

    def __init__(self, live=()):
        self.live = set(live)
        self.delivered = []
        self.forgotten = []
        self._cond = threading.Condition()

    def deliver(self, items):
        with self._cond:
            self.delivered += [event for _room, event, _meta in items]
            self._cond.notify_all()

    def reject(self, items, reason):
        raise AssertionError(reason)

    def has_room(self, name):
        return name in self.live

    def forget(self, names):
        self.forgotten += names
        return {name for name in names if name in self.live}

    def memberships(self, after, most):
        return []  # no local members (a Redis Cluster's repair has no index entries to write)

    def publish(self, engine, room, texts):
        """Publish and wait until delivered; the events."""
        with self._cond:
            before = len(self.delivered)
        engine.publish(room, [("ann", text, Meta()) for text in texts])
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.delivered) >= before + len(texts), 5)
            return self.delivered[before:before + len(texts)]


def started(engine):
    engine.hub = RecordingHub()
    engine.start(engine.hub)
    return engine


def chat(room: str, seq: int, text: str | None = None, nick: str = "ann") -> tuple:
    """What a test publishes: the engine gives it the room's next seq, which the test names."""
    return room, seq, nick, text or f"{room} {seq}"


def write(store, chats) -> list:
    """Publish each (room, seq, nick, text) in order; wait until all are delivered; return them."""
    before = len(store.hub.delivered())
    for room, _seq, nick, text in chats:
        store.publish(room, [(nick, text, Meta())])
    store.hub.wait(before + len(chats))
    delivered = store.hub.delivered()[before:]
    assert [(e["room"], e["seq"]) for e in delivered] == [(room, seq) for room, seq, _n, _t in chats]
    return delivered


def seqs(events: list) -> list:
    return [event["seq"] for event in events]


class MeasuredSqlite(SqliteEngine):
    """The SQLite engine, measuring the bytes of its file and of its WAL after everything that can
    grow them: each commit and retention pass (the WAL; the writer thread) and each checkpoint
    (the file; the checkpoint thread or the writer). So `peak_total` (file + WAL) and `peak_wal`
    are the true maxima, not samples: no fast burst between two samples can hide."""

    def __init__(self, *args, **kwargs):
        self.peak_total = self.peak_wal = 0
        self.commits_measured = 0
        self._peaks_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def disk_bytes(self) -> tuple[int, int]:
        """(file bytes, WAL bytes) now."""
        wal = self.path + "-wal"
        return os.path.getsize(self.path), os.path.getsize(wal) if os.path.exists(wal) else 0

    def _measure(self) -> None:
        main, wal = self.disk_bytes()
        with self._peaks_lock:
            self.peak_total = max(self.peak_total, main + wal)
            self.peak_wal = max(self.peak_wal, wal)

    def _commit(self, batch: list) -> bool:
        committed = super()._commit(batch)
        self.commits_measured += 1
        self._measure()
        return committed

    def _prune(self, rooms: set) -> None:
        super()._prune(rooms)
        self._measure()

    def _checkpoint(self, *args, **kwargs) -> bool:
        done = super()._checkpoint(*args, **kwargs)
        self._measure()
        return done
