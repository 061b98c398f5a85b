"""Chats posted without a connection: the HTTP API's `POST /api/rooms/ROOM/messages` (ops/api.py).

A post is a chat by a token's holder (its `sub` is the nick), who need not be connected nor a
member of the room. `Registry.post` puts it through the same steps as a connection's chat: the
room's rules for that nick (token rooms, ban, mute, moderated, slow mode; moderation.py), then
`engine.publish` into the room's stream, where every member on every process gets it. The post
waits until the engine hands the chat back stored (`Posts`: a waiter per post, found by the
origin of the delivered event, Meta.origin = (process, post id)), or rejects it.

`Poster` is what the rules need to know of a sender that has no connection: its nick and
identity, and its last chat per room for slow mode, kept per identity in `Posters` (so a bot
cannot escape slow mode by posting from new connections: it has none).
"""

import threading
from collections import Counter, OrderedDict

from chatserver.errors import ChatError
from chatserver.protocol import fold_nick

POST_TIMEOUT = 30.0  # seconds a post waits for its chat to be stored (past the SQLite engine's give-up time)
MAX_POSTERS = 10_000  # identities whose slow-mode times are kept, the least recently posting dropped first


class Poster:
    """A token's holder as the chat rules see it (duck-typed like rooms.client.Client):
    `nick`, `identity`, `bound` (always empty: no connection to bind), `last_chat` (room ->
    time.monotonic() of its last post there), and `lock`, held while its slow mode is checked."""

    __slots__ = ("bound", "identity", "last_chat", "lock", "nick")

    def __init__(self, identity):
        self.identity = identity
        self.nick = identity.nick
        self.bound: dict = {}
        self.last_chat: dict = {}
        self.lock = threading.Lock()


class Posters:
    """The Poster of each identity (by folded nick), at most MAX_POSTERS. Any thread; `_lock` (a leaf)."""

    def __init__(self, size: int = MAX_POSTERS):
        self._size = size
        self._lock = threading.Lock()
        self._posters: OrderedDict = OrderedDict()

    def of(self, identity) -> Poster:
        """The Poster for `identity` (a verified token), with that token's claims from now on."""
        key = fold_nick(identity.nick)
        with self._lock:
            poster = self._posters.pop(key, None) or Poster(identity)
            poster.identity, poster.nick = identity, identity.nick
            self._posters[key] = poster
            if len(self._posters) > self._size:
                self._posters.popitem(last=False)
            return poster


class Waiter:
    """One post between its publish and its answer: `wait` returns the stored chat event."""

    __slots__ = ("_done", "error", "event")

    def __init__(self):
        self._done = threading.Event()
        self.event: dict | None = None
        self.error: ChatError | None = None

    def wait(self, timeout: float = POST_TIMEOUT) -> dict:
        """The chat event as stored. Raises ChatError: the engine's refusal (`unavailable`), or
        `unavailable` when no answer came within `timeout` seconds."""
        if not self._done.wait(timeout):
            raise ChatError("unavailable", f"The chat was not confirmed within {timeout:g} s; it may still appear "
                                           "in the room: read its history before posting again.")
        if self.error is not None:
            raise self.error
        return self.event


class Posts:
    """The posts in flight in this process: a Waiter per post id and how many go to each room
    (a cluster registry stays subscribed to those rooms). The registry's delivery calls `done`
    and `failed` (its lock held); `_lock` is a leaf."""

    def __init__(self, process_id: str):
        self._process_id = process_id
        self._lock = threading.Lock()
        self.waiters: dict[int, Waiter] = {}  # read without the lock, for whether it is empty (one dict read)
        self._rooms: Counter = Counter()

    def start(self, post_id: int, room: str) -> Waiter:
        with self._lock:
            waiter = self.waiters[post_id] = Waiter()
            self._rooms[room] += 1
            return waiter

    def finish(self, post_id: int, room: str) -> None:
        with self._lock:
            self.waiters.pop(post_id, None)
            self._rooms[room] -= 1
            if self._rooms[room] <= 0:
                del self._rooms[room]

    def busy(self, room: str) -> bool:
        """True while a post to `room` waits."""
        with self._lock:
            return room in self._rooms

    def done(self, meta, event: dict) -> None:
        """A room event was delivered: if it is one of our posts, its waiter has it."""
        waiter = self._waiter(meta)
        if waiter is not None and event.get("type") == "chat":
            waiter.event = event
            waiter._done.set()

    def failed(self, meta, error: ChatError) -> None:
        """A published chat will not be delivered: if it is one of our posts, its waiter gets `error`."""
        waiter = self._waiter(meta)
        if waiter is not None:
            waiter.error = error
            waiter._done.set()

    def _waiter(self, meta) -> Waiter | None:
        if not self.waiters or meta.origin is None or meta.origin[0] != self._process_id:
            return None
        with self._lock:
            return self.waiters.get(meta.origin[1])
