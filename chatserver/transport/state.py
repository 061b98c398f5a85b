"""One connection's state: CONNECTING -> OPEN -> CLOSING -> CLOSED, changed in one method.

As websockets' `State` (RFC 6455 sections 4 and 7), and as h11's `_state.py`, the moves are data
(MOVES) and `ConnectionState.move` is the only code that changes the state.
"""

import enum
import threading


class State(enum.Enum):
    """Where a connection is in its life."""

    CONNECTING = "connecting"  # TCP accepted; the opening handshake is under way
    OPEN = "open"  # 101 sent: messages flow both ways
    CLOSING = "closing"  # a close frame was sent or received: no new request is handled
    CLOSED = "closed"  # the app has been told (or never knew of it); the socket may linger briefly


# The only moves there are; move() refuses every other one.
MOVES = {
    State.CONNECTING: {State.OPEN, State.CLOSED},
    State.OPEN: {State.CLOSING, State.CLOSED},
    State.CLOSING: {State.CLOSED},
    State.CLOSED: set(),
}


class ConnectionState:
    """`state`; `reason`: why the connection ended, for the log (the first reason given); `code`:
    the first close code sent or received (RFC 6455 section 7.4), None if none was.
    Any thread may read them; `self._lock` (a leaf: nothing is called while it is held) guards
    their changes."""

    __slots__ = ("_lock", "code", "reason", "state")

    def __init__(self):
        self.state = State.CONNECTING
        self.reason = ""
        self.code = None
        self._lock = threading.Lock()

    def move(self, to: State, reason: str = "", code: int | None = None) -> State | None:
        """Move to `to` if MOVES allows it from the current state and return the state left; return
        None when the move is not allowed (the caller then does nothing). `reason` and `code` are
        kept if none was given before.

        Several threads end connections: the connection's own (the peer's close, a protocol error,
        EOF), the housekeeper (ping timeout, a too-slow client), any sender (outbox overflow) and
        shutdown. A second close or disconnect from another thread is harmless because each caller
        acts only on a move it won here: the lock makes the check and the change one step and
        states only go forward, so exactly one caller sees OPEN -> CLOSING (and queues the close
        frame) and exactly one sees the move to CLOSED (and tells the app). Later callers get None.
        """
        with self._lock:
            was = self.state
            if to not in MOVES[was]:
                return None
            self.state = to
            if reason and not self.reason:
                self.reason = reason
            if code and not self.code:
                self.code = code
            return was
