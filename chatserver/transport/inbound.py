"""What a connection does with what its client sends: the read loop, what each frame costs,
and the pause that keeps a client from queueing more replies than it reads.

`MessageLoop` is mixed into transport.Connection and runs on the connection's own thread. It
uses the connection's `reader` (streams.SocketReader), `outbox`, `server` (max_message_bytes,
the app), `state`/`_life`, `send_frame`, `fail` and `last_seen`, and `limiter` when the app has
set one (client.TokenBucket: the connection's rate, shared with its address).

Every frame costs one token of the client's rate (RFC 6455 section 10.3 leaves a server free to
limit what a peer may consume): the app charges the first frame of each text message (dispatch),
this loop every other one, so a ping, a pong or a continuation frame costs as much as a message.
A ping over the budget gets no pong; a client that keeps going past `FLOOD_FACTOR` x burst
refusals in a row is closed with 1008, as for messages.
"""

import logging
import time

from chatserver.errors import CloseConnection
from chatserver.protocol import CloseCode
from chatserver.transport.state import State
from chatserver.wire import frames

log = logging.getLogger("roomchat.transport")

MAX_BATCH = 64  # messages from one client handled together when they arrived together
PACE_TICK = 1.0  # seconds between progress checks while a client's requests wait for its replies to leave
CLOSE_LINGER = 1.0  # seconds we keep reading after our close frame so the peer can read it


class MessageLoop:
    """The read side of a transport.Connection (see the module docstring)."""

    limiter = None  # client.TokenBucket, set by the app in on_connect

    # upstream: reads any payload length it is told, unmasks byte by byte, ignores binary and
    # continuation frames (the stream falls out of step), never answers a close.
    # fix: frames.FrameReader (limits before reading, fast unmask, fragments, UTF-8 checks);
    # every CloseConnection becomes its close code. tests: tests/unit/test_frames.py, test_transport.py
    def read_messages(self) -> None:
        """Read frames until the connection ends (RFC 6455 section 5 and 6.2): texts go to the
        app in batches, pings are answered with pongs (5.5.2/5.5.3), a close is echoed (5.5.1),
        and a CloseConnection from the frame reader or the app ends it with its close code (7.1.7).
        EOF and socket errors end the loop."""
        reader = frames.FrameReader(self.reader.read_exact, self.server.max_message_bytes)
        texts = []  # messages read but not yet handled: all that arrived together, up to MAX_BATCH
        charged = 0  # frames read and paid for (reader.frames counts every frame read)
        while True:
            if texts and (len(texts) >= MAX_BATCH or not self.reader.frame_ready()):
                if not self._handle_texts(texts, reader):
                    return
                texts = []
            try:
                event = reader.next_event()
            except CloseConnection as exc:  # a payload may be left unread: the stream is out of step
                if not texts or self._handle_texts(texts, reader):
                    self.fail(exc.close_code, exc.reason)
                return
            except (OSError, EOFError, ValueError):
                return
            self.last_seen = time.monotonic()
            # every frame since the last event; a text message's first frame is the app's to charge
            cost, charged = reader.frames - charged - isinstance(event, frames.Text), reader.frames
            paid = self._pay(cost) if cost and not isinstance(event, frames.Close) else True
            if paid is None:
                if not texts or self._handle_texts(texts, reader):
                    self.fail(CloseCode.POLICY_VIOLATION, "rate limit exceeded", reader)
                return
            if isinstance(event, frames.Text):
                if self.state is State.OPEN:
                    texts.append(event.text)
            elif isinstance(event, frames.Ping):
                if paid:  # over the budget: no pong
                    pong = frames.encode_frame(frames.OP_PONG, event.payload)
                    self.send_frame(pong, own=len(pong))
            elif isinstance(event, frames.Close):
                if texts and not self._handle_texts(texts, reader):
                    return
                # RFC 6455 7.1.5: a close frame without a status code means 1005 for the log.
                said = f"{event.code}" if event.code else "no status code, 1005"
                if self._life.move(State.CLOSING, f"client closed ({said})", event.code or 1005) is not None:  # echo it
                    echo = frames.close_frame(event.code) if event.code else frames.encode_frame(frames.OP_CLOSE, b"")
                    self.outbox.put_last(echo)
                    self.outbox.drain(CLOSE_LINGER)
                return

    def _pay(self, cost: int) -> bool | None:
        """Charge `cost` frames to the client's rate: True if paid, False if over it, None when
        it keeps flooding (close it)."""
        limiter = self.limiter
        if limiter is None:
            return True
        paid = limiter.charge(cost)
        return None if not paid and limiter.flooding else paid

    def _handle_texts(self, texts: list, reader: frames.FrameReader) -> bool:
        """Hand messages that arrived together to the app in one call (so their fan-out can share
        one write per member). False if the connection was closed instead."""
        if self.state is not State.OPEN:  # dropped (too slow, ping timeout, shutdown): requests go unanswered
            return True
        try:
            self.server.app.on_texts(self, texts)
            return True
        except CloseConnection as exc:
            self.fail(exc.close_code, exc.reason, reader)
        except Exception:  # a bug: log it, and don't tell the peer details
            log.exception("handler failed for %s", self.peer)
            self.fail(CloseCode.INTERNAL_ERROR, "internal error", reader)
        return False

    def pace(self) -> None:
        """On this connection's thread, before it handles the client's next request: wait while
        more than `max_reply_bytes` of replies to its earlier requests are still queued, so a
        client that does not read cannot make us hold more. While the outbox makes progress the
        peer counts as alive (no ping timeout); one that takes nothing is found by the pings."""
        sent = self.outbox.sent
        while not self.outbox.wait_for_room(PACE_TICK):
            if self.outbox.sent != sent:
                sent, self.last_seen = self.outbox.sent, time.monotonic()

