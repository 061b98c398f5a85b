"""The memory engine (`--db :memory:`, and the tests): history and room rules in this process only.

Implements engines.base.Engine (its docstring states the contract).
"""

import threading
from collections import deque

from chatserver.engines.base import Hub, LocalRules, Meta, new_epoch
from chatserver.protocol import chat_event


class MemoryEngine(LocalRules):
    """History and room rules in memory, the last `per_room` events of each room; gone when the
    process ends.

    `publish` stores and delivers on the calling thread, under `_lock`, so concurrent publishers
    to a room deliver in seq order; `announce` delivers at once (lock order: engine -> Registry).
    """

    location = "memory only (--db :memory:), lost when the server stops"
    cluster = False

    def __init__(self, per_room: int = 10000):
        self.epoch = new_epoch()
        self._per_room = per_room
        self._rooms: dict[str, deque] = {}  # room -> its last per_room events
        self._seqs: dict[str, int] = {}  # room -> last seq; outlives pruning
        self._lock = threading.Lock()
        self._hub = None
        self._init_rules()

    def start(self, hub: Hub) -> None:
        self._hub = hub

    def last_seqs(self) -> dict[str, int]:
        """The highest seq of every room, so the hub knows where each stream stands."""
        with self._lock:
            return dict(self._seqs)

    def publish(self, room: str, chats: list) -> None:
        with self._lock:
            events = self._rooms.get(room)
            if events is None:
                events = self._rooms[room] = deque(maxlen=self._per_room)
            items = []
            for sender, text, meta in chats:
                seq = self._seqs[room] = self._seqs.get(room, 0) + 1
                events.append(chat_event(room, sender, text, seq))
                items.append((room, events[-1], meta))
            self._hub.deliver(items)

    def announce(self, room: str, event: dict, meta: Meta) -> None:
        with self._lock:
            self._hub.deliver([(room, event, meta)])

    def read(self, room: str, before: int | None = None, after: int | None = None, limit: int = 50,
             max_bytes: int | None = None) -> list:
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

    def health(self) -> str | None:
        return None

    def close(self) -> None:
        pass
