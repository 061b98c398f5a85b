"""One connected client as the chat layer sees it: nick, rooms, rate limit, and a way to send."""

import time
from collections import deque

FLOOD_FACTOR = 3  # refusals in a row, as a multiple of the burst, before we hang up


class TokenBucket:
    """`burst` messages at once, refilled at `rate` per second; counts refusals in a row.

    `share`, when given, is a bucket several connections draw from (those of one address,
    budgets.AddressShares): a token is taken only when both have one. One thread uses a bucket
    (its connection's); a share has its own lock."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate", "refused_by_share", "refused_in_a_row", "share")

    def __init__(self, burst: int, rate: float, clock=time.monotonic, share=None):
        self.burst = burst
        self.rate = rate
        self.share = share
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.refused_in_a_row = 0
        self.refused_by_share = False  # the last refusal was the address's, not this connection's

    def take(self) -> bool:
        """One token, or False (a refusal in a row counted)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1 and (self.share is None or self.share.take()):
            self._tokens -= 1
            self.refused_in_a_row = 0
            return True
        self.refused_by_share = self._tokens >= 1
        self.refused_in_a_row += 1
        return False

    @property
    def wait(self) -> float:
        """Seconds until the next token, after a refused `take` (0.0 when one is there)."""
        return max(0.0, (1 - self._tokens) / self.rate)

    def charge(self, cost: int) -> bool:
        """`cost` tokens one by one; False if any was refused."""
        return sum(self.take() for _ in range(cost)) == cost

    @property
    def flooding(self) -> bool:
        """Still sending after FLOOD_FACTOR x burst refusals in a row."""
        return self.refused_in_a_row > FLOOD_FACTOR * self.burst


class Client:
    """A connection with a nick, as the Registry sees it. `conn` is the transport's connection:
    it sends frames in order and never blocks.

    Owned by the Registry and changed under its lock: `nick`; `rooms` (the rooms it is in: the
    index of `Room.members`); `pending` (the keys (Meta.key) of its chats and moderation
    events published and not yet delivered or rejected: its next request waits for them);
    `changes` (the last nick changes it was told of, so it hears of each once);
    `conn` (a resume moves the client onto a new connection); `identity` (identity.Identity from
    its token, or None: anonymous); `token` (its resume token); `bound` ({(room, "ban" | "mute"):
    (until, the folded nick it was bound under)}: the bans and mutes that hold this connection
    whatever nick it takes, rooms/moderation.py `bind`; read without the lock, a dict read being atomic).

    Its own connection thread only, no lock: `last_chat` ({room: time.monotonic() of its last
    chat there}, for slow mode); `invite` (rooms/invites.Invite it connected with, or None; set
    before its first request); `marks` ({room: seq}: its read markers while it has no token,
    rooms/marks.py; one process only: a cluster engine keeps them with the resume session, so
    they follow a resume to any process). Under the Registry lock: `typed` ({room:
    time.monotonic() of its last typing notice there}, rooms/typing.py).

    A resume on the same process keeps the whole Client; one on another process (cluster.py)
    carries the nick, rooms, identity and tokenless marks, and starts the rest afresh there, as a
    new connection does: `last_chat`, `limiter`, `bound`, `typed`, `changes` (PROTOCOL.md).
    """

    __slots__ = ("bound", "changes", "conn", "id", "identity", "invite", "last_chat", "limiter", "marks", "nick",
                 "pending", "rooms", "token", "typed")

    def __init__(self, client_id: int, conn, nick: str, limiter: TokenBucket, identity=None):
        self.id = client_id
        self.conn = conn
        self.nick = nick
        self.rooms: set[str] = set()
        self.pending: set[str] = set()
        self.changes: deque = deque(maxlen=16)
        self.limiter = limiter
        self.token: str | None = None  # its resume token: a new connection presenting it takes it over
        self.identity = identity
        self.bound: dict[tuple, tuple] = {}
        self.last_chat: dict[str, float] = {}
        self.marks: dict[str, int] = {}
        self.typed: dict[str, float] = {}
        self.invite = None

    def send(self, frame: bytes, own: bool = False) -> None:
        """Queue encoded frames; never blocks. `own`: they answer this client's own request (a
        reply), which never gets it dropped; others' traffic (room events, DMs) does when it falls
        too far behind (streams.Outbox)."""
        self.conn.send_frame(frame, len(frame) if own else 0)

    def send_mixed(self, data: bytes, own_bytes: int) -> None:
        """Queue frames of which `own_bytes` bytes are replies and the rest others' traffic. Never blocks."""
        self.conn.send_frame(data, own_bytes)

    def backlog(self) -> int:
        """Bytes of others' traffic waiting to be written to this client."""
        return self.conn.backlog()

    def pace(self) -> None:
        """On the client's own thread, before its next request: wait while its replies pile up unread."""
        self.conn.pace()

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.nick} {self.conn!r}>"
