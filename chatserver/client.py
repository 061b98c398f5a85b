"""One connected client as the chat layer sees it: nick, rooms, rate limit, and a way to send."""

import time
from collections import deque


class TokenBucket:
    """`burst` messages at once, refilled at `rate` per second; counts refusals in a row."""

    def __init__(self, burst: int, rate: float, clock=time.monotonic):
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.refused_in_a_row = 0

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        return False


class Client:
    """A connection with a nick, as the Registry sees it. `conn` is the transport's connection:
    it sends frames in order and never blocks.

    Owned by the Registry and changed under its lock: `nick`; `rooms` (the rooms it is in: the
    index of `Room.members`); `pending` (chats published and not yet delivered: its next request
    waits for them); `changes` (the last nick changes it was told of, so it hears of each once);
    `conn` (a resume moves the client onto a new connection); `identity` (identity.Identity from
    its token, or None: anonymous); `token` (its resume token).
    """

    __slots__ = ("changes", "conn", "id", "identity", "limiter", "nick", "pending", "rooms", "token")

    def __init__(self, client_id: int, conn, nick: str, limiter: TokenBucket, identity=None):
        self.id = client_id
        self.conn = conn
        self.nick = nick
        self.rooms: set[str] = set()
        self.pending = 0
        self.changes: deque = deque(maxlen=16)
        self.limiter = limiter
        self.token: str | None = None  # its resume token: a new connection presenting it takes it over
        self.identity = identity

    def send(self, frame: bytes) -> None:
        """Queue an encoded frame; never blocks (a client that falls behind is closed instead)."""
        self.conn.send_frame(frame)

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.nick} {self.conn!r}>"
