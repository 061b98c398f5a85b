"""One connected client as the chat layer sees it: nick, rooms, rate limit, and a way to send."""

import time


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
    """A connection with a nick. `conn` is the transport's connection: it sends frames in order.

    `rooms` (the rooms it has asked to be in) and `joined` (the rooms fan-out sends it, which
    follow `rooms` in decision order) are owned by the Registry and changed under its lock.
    """

    __slots__ = ("conn", "joined", "limiter", "nick", "rooms", "shown")

    def __init__(self, conn, nick: str, limiter: TokenBucket):
        self.conn = conn
        self.nick = nick  # decided: what new chat events carry
        self.shown = nick  # what the peers have been told, in decision order (presence, member lists)
        self.rooms: set[str] = set()
        self.joined: set[str] = set()
        self.limiter = limiter

    def send(self, frame: bytes) -> None:
        """Queue an encoded frame; never blocks (a client that falls behind is closed instead)."""
        self.conn.send_frame(frame)

    def __repr__(self) -> str:
        return f"<Client {self.nick} {self.conn!r}>"
