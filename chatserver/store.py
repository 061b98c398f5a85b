"""History stores: where chat events are kept so `join` and `history` can replay them.

A store is told events in seq order (the Registry calls `append` under its lock) and answers
range reads. `append` returns True when the event is already stored, so the Registry delivers it
at once; a store that persists in the background returns False and calls `on_durable(events)`
from its own thread, in append order, once they are committed. That is how "committed before
any client receives it" holds without the sender waiting on the disk.
"""

import threading
import uuid
from collections import deque


class MemoryStore:
    """Keeps the last `per_room` events of each room in memory; gone when the process ends."""

    def __init__(self, per_room: int = 10000):
        self.epoch = uuid.uuid4().hex[:16]
        self.on_durable = None
        self._per_room = per_room
        self._rooms: dict[str, deque] = {}
        self._lock = threading.Lock()  # reads come from handler threads, outside the Registry lock

    def last_seqs(self) -> dict[str, int]:
        """The highest stored seq of every room, so seqs continue where they stopped."""
        with self._lock:
            return {room: events[-1]["seq"] for room, events in self._rooms.items() if events}

    def append(self, event: dict) -> bool:
        with self._lock:
            events = self._rooms.get(event["room"])
            if events is None:
                events = self._rooms[event["room"]] = deque(maxlen=self._per_room)
            events.append(event)
        return True

    def read(self, room: str, before: int | None = None, after: int | None = None, limit: int = 50) -> list:
        """Chat events with after < seq < before, oldest first: the first `limit` of them when
        `after` is given (paging forward), else the last `limit` (paging back)."""
        with self._lock:
            events = self._rooms.get(room)
            if not events:
                return []
            first = events[0]["seq"]  # seqs in a room are consecutive, so a seq is an index
            lo = 0 if after is None else max(0, after + 1 - first)
            hi = len(events) if before is None else max(0, min(len(events), before - first))
            if after is not None:
                hi = min(hi, lo + limit)
            else:
                lo = max(lo, hi - limit)
            return [events[i] for i in range(lo, hi)]

    def close(self) -> None:
        pass




def open_store(config):
    """The store `config.db` names: ':memory:' for MemoryStore."""
    return MemoryStore(per_room=config.history_per_room)
