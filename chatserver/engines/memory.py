"""The memory engine (`--db :memory:`, and the tests): history and room rules in this process only.

Implements engines.base.Engine (its docstring states the contract). Its history keeps to the
same quotas as the SQLite file's, with the same meaning (engines/sqlite_quotas.py): the last
`per_room` events of each room; `max_bytes` (--history-max-bytes: here the memory the events
take, EVENT_BYTES plus its text as Python holds it, e.g. 8.4 KB for 2000 emoji), `max_age`
(seconds since an event was stored) and `max_rooms` (rooms with history). Past one, events go
oldest first, each room losing a prefix (what is left is one run of seqs); past the room quota
the rooms quiet longest go first, whole, but never one someone is in. A room left with no event
is forgotten, here and in the hub, once nobody is in it; seqs are never reused: a room not
known starts above `_floor`, the highest last seq of any room forgotten.
"""

import heapq
import sys
import threading
import time
from collections import deque

from chatserver.engines.base import (
    NOTICE_TYPES,
    LocalRules,
    Meta,
    Registry,
    amended,
    matches,
    new_epoch,
    transcript_order,
    without_text,
)
from chatserver.engines.personal import LocalPersonal
from chatserver.protocol import chat_event

EVENT_BYTES = 400  # what an event takes in memory besides its text: the dict, its seq and ts (tracemalloc)


def event_bytes(event: dict) -> int:
    """What a stored event takes in memory, in bytes (the estimate the byte quota counts)."""
    return EVENT_BYTES + sys.getsizeof(event.get("text", ""))


class MemoryEngine(LocalRules, LocalPersonal):
    """History and room rules in memory, within the quotas (module docstring); gone when the
    process ends.

    `publish` stores, applies the quotas and delivers on the calling thread, under `_lock`, so
    concurrent publishers to a room deliver in seq order; `announce` delivers at once. The lock
    order is engine -> Registry: `_lock` is held while the hub is called (deliver, has_room,
    forget). `_lock` guards every field below: the chats, the seqs and the moderation events
    kept for transcripts (`_notices`, pruned like SQLite's: the last `per_room` of each room).
    """

    location = "memory only (--db :memory:), lost when the server stops"
    cluster = False

    def __init__(self, per_room: int = 10000, *, max_bytes: int = 0, max_age: float = 0, max_rooms: int = 0):
        self.epoch = new_epoch()
        self._per_room = per_room
        self.max_bytes, self.max_age, self.max_rooms = max_bytes, max_age, max_rooms  # 0: none
        self._rooms: dict[str, deque] = {}  # room -> its events, oldest first (consecutive seqs); never empty
        self._seqs: dict[str, int] = {}  # room -> last seq; outlives pruning, not forgetting
        self._notices: dict[str, deque] = {}  # room -> [(seq it followed, moderation event)]
        self._floor = 0  # the highest last seq of any forgotten room: a new room starts above it
        self._bytes = 0  # event_bytes() of every event kept
        self._oldest: list = []  # heap of (ts of a room's oldest event, or older, room): one per room kept
        self._quiet: list = []  # (newest ts, room), quietest last: what the room quota takes next
        self._waiting: set = set()  # rooms emptied while someone was in them: forgotten later
        self._waiting_checked = 0.0  # when they were last looked at (once a second at most)
        self._lock = threading.Lock()
        self._hub = None
        self._init_rules()
        self._init_personal()

    def start(self, hub: Registry) -> None:
        self._hub = hub

    def last_seqs(self) -> dict[str, int]:
        """The highest seq of every room, so the hub knows where each stream stands."""
        with self._lock:
            return dict(self._seqs)

    def publish(self, room: str, chats: list, member: bool = True, mode: tuple | None = None) -> None:
        with self._lock:
            items = []
            for sender, text, meta in chats:
                seq = self._seqs[room] = self._seqs.get(room, self._floor) + 1
                event = chat_event(room, sender, text, seq)
                self._append(room, event)
                items.append((room, event, meta))
            self._hub.deliver(items)
            self._apply_quotas()

    def amend(self, room: str, event: dict, meta: Meta) -> None:
        """Store the edit, delete or react and apply it to its chat, in one step under `_lock`."""
        with self._lock:
            seq = self._seqs[room] = self._seqs.get(room, self._floor) + 1
            event = {**event, "seq": seq}
            events = self._rooms.get(room)
            at = None if not events else event["target"] - events[0]["seq"]
            chat = events[at] if at is not None and 0 <= at < len(events) else None
            changed = chat if chat is None or chat["type"] != "chat" else amended(chat, event)
            if changed is not chat:
                self._replace(events, at, changed)
                if event["type"] == "delete":  # the texts of its edits go too
                    for i, other in enumerate(events):
                        if other["type"] == "edit" and other["target"] == event["target"] and "text" in other:
                            self._replace(events, i, without_text(other))
            elif event["type"] == "edit":  # its chat is deleted or gone: the text is not kept
                event = without_text(event)
            self._append(room, event)
            self._hub.deliver([(room, event, meta)])
            self._apply_quotas()

    def message(self, room: str, seq: int) -> dict | None:
        with self._lock:
            events = self._rooms.get(room)
            at = None if not events else seq - events[0]["seq"]
            return events[at] if at is not None and 0 <= at < len(events) else None

    def _append(self, room: str, event: dict) -> None:
        """Keep a new event of the room (its last `per_room`). Under `_lock`."""
        events = self._rooms.get(room)
        if events is None:
            events = self._rooms[room] = deque()
            heapq.heappush(self._oldest, (float("-inf"), room))
        events.append(event)
        self._bytes += event_bytes(event)
        if len(events) > self._per_room:
            self._bytes -= event_bytes(events.popleft())

    def _replace(self, events: deque, at: int, event: dict) -> None:
        """A kept event in its new state (an amended chat, an edit without its text). Under `_lock`."""
        self._bytes += event_bytes(event) - event_bytes(events[at])
        events[at] = event

    def announce(self, room: str, event: dict, meta: Meta) -> None:
        with self._lock:
            if event["type"] in NOTICE_TYPES:
                notices = self._notices.setdefault(room, deque(maxlen=self._per_room))
                notices.append((self._seqs.get(room, 0), {**event, "ts": time.time()}))
            self._hub.deliver([(room, event, meta)])

    def transcript(self, room: str, since: float = 0.0) -> list:
        """The room's kept chats (in their current text; deleted ones left out) and moderation
        events from `since` (Unix time), in stream order."""
        with self._lock:
            chats = [e for e in self._rooms.get(room, ())
                     if e["ts"] >= since and e["type"] == "chat" and not e.get("deleted")]
            notices = [(at, e) for at, e in self._notices.get(room, ()) if e["ts"] >= since]
        return transcript_order(chats, notices)

    def read(self, room: str, before: int | None = None, after: int | None = None, limit: int = 50,
             max_bytes: int | None = None) -> list:
        with self._lock:
            self._apply_quotas()  # an event past the age quota is never read, publishing or not
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

    def search(self, room: str, words: list, before: int | None = None, limit: int = 50,
               max_bytes: int | None = None) -> list:
        """A scan of the room's kept chats, newest first (as engines.base.Engine.search). The scan
        runs on the room's events as they were when it began, outside `_lock` (stored events are
        replaced, never changed in place), so however long it takes, it holds up no chat."""
        with self._lock:
            self._apply_quotas()
            events = list(self._rooms.get(room, ()))
        found, total = [], 0
        words = list(dict.fromkeys(words))  # a word given twice is looked up once
        for event in reversed(events):
            if len(found) >= limit or (max_bytes is not None and total > max_bytes):
                break
            if before is not None and event["seq"] >= before:
                continue
            text = event.get("text") if event["type"] == "chat" else None
            if text and matches(words, text):
                found.append(event)
                total += len(text.encode())
        return found

    def health(self) -> str | None:
        return None

    # -- the quotas (under _lock) --------------------------------------------------------------

    def _apply_quotas(self) -> None:
        """Drop the oldest events past the age and byte quotas, the quietest rooms past the room
        quota, and forget the rooms left with none (the hub too) once nobody is in them."""
        emptied = []
        if self.max_age or self.max_bytes:
            cutoff = time.time() - self.max_age if self.max_age else float("-inf")
            while self._oldest:
                key, room = self._oldest[0]
                events = self._rooms.get(room)
                if events is None:  # gone whole (room quota) or emptied
                    heapq.heappop(self._oldest)
                elif events[0]["ts"] != key:  # its first event went since (per_room): a later key
                    heapq.heapreplace(self._oldest, (events[0]["ts"], room))
                elif key < cutoff or 0 < self.max_bytes < self._bytes:
                    self._bytes -= event_bytes(events.popleft())
                    if not events:
                        del self._rooms[room]
                        emptied.append(room)
                else:
                    break
        if self.max_rooms and len(self._rooms) > self.max_rooms:
            emptied += self._drop_quietest(len(self._rooms) - self.max_rooms)
        now = time.monotonic()
        if self._waiting and now - self._waiting_checked >= 1.0:
            emptied += self._waiting
            self._waiting, self._waiting_checked = set(), now
        if emptied:
            self._forget([room for room in emptied if room not in self._rooms])

    def _drop_quietest(self, excess: int) -> list:
        """Drop the `excess` rooms quiet longest, whole, except rooms someone is in; returns
        them. The order found is kept while a backlog of rooms is worked off."""
        if not self._quiet:
            self._quiet = sorted(((events[-1]["ts"], room) for room, events in self._rooms.items()), reverse=True)
        dropped = []
        while self._quiet and len(dropped) < excess:
            ts, room = self._quiet.pop()
            events = self._rooms.get(room)
            if events and events[-1]["ts"] == ts and not self._hub.has_room(room):  # (else: later list)
                self._bytes -= sum(event_bytes(event) for event in events)
                del self._rooms[room]
                dropped.append(room)
        return dropped

    def _forget(self, rooms: list) -> None:
        """Rooms with no event left: forget their seqs here and in the hub, keeping seqs above
        all of them; a room someone is in waits (its members would see its seq jump)."""
        live = {room for room in rooms if self._hub.has_room(room)}
        self._waiting |= live
        gone = [room for room in rooms if room not in live]
        if not gone:
            return
        kept = self._hub.forget(gone)  # someone may have joined one since has_room
        for room in gone:
            if room in kept:
                self._waiting.add(room)
            elif room in self._seqs:
                self._floor = max(self._floor, self._seqs.pop(room))

    def close(self) -> None:
        pass
