"""A recording chat client for the fault suite: one WebSocket connection at a time (websocket-client),
a reader thread that records every event it receives with its time, and the client's own view of
what it is told: its nick, the members of each room it is in, and each room's chat stream.

It behaves as roomchat's own clients do after a 1012 close: it reconnects with `?resume=<last
resume token>`, asks for its nick again when the new `welcome` did not give it back, and re-joins
each room it was in with `after=<last seq seen>` (without `after` when the `welcome` names a new
epoch).

Threads: the test's thread sends requests and waits for their answers; the reader thread receives,
records and reconnects. `_cond` (a Condition on an RLock) guards every field below it in
__init__; it is taken before the Rig's lock (tests/faults/harness.py), never after it. The Rig's
nick monitor reads `nick` and `connected` without it (one attribute read each).
"""

import contextlib
import itertools
import json
import threading
import time
from urllib.parse import urlencode

import websocket

from chatserver.protocol import fold_nick
from tests.faults.streams import Streams

REPLY_TIMEOUT = 20.0  # seconds a request may wait for its answer before the test fails (faults included)
RECONNECT_FOR = 20.0  # seconds a client keeps trying to reconnect after a 1012 close
NICK_RETRIES = 20  # times a reconnected client asks again for its nick while it is taken, 0.5 s apart


class Closed(dict):
    """What request() returns when the connection closed before the request was answered:
    {"type": "closed", "code": <close code, None when the socket just dropped>}."""

    def __init__(self, code):
        super().__init__(type="closed", code=code)
        self.code = code


class Recorder:
    """A chat client on `node` (tests/faults/harness.py Node) that records everything; see the
    module docstring. `label` names it in failure messages; `token` is presented at connect."""

    def __init__(self, rig, node, label: str, token: str | None = None):
        self.rig = rig
        self.node = node
        self.label = label
        self.token = token
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self.ws = None
        self.connection = 0  # how many connections it has made
        self.connected = False
        self.gone = False  # closed for good (by the test, or a close it does not follow)
        self.closed_by_test = False  # close() was called: how its own close ended is not a fault
        self.nick = None
        self.wanted_nick = None  # asked for again after a reconnect that did not keep it
        self.epoch = None
        self.resume = None
        self.events: list = []  # (time.monotonic(), connection, event)
        self.closes: list = []  # (time.monotonic(), connection, code or None for a dropped socket, reason)
        self.rooms: dict = {}  # room -> its members as this client was told (join order)
        self.streams = Streams()  # its chat streams, room by room
        self.sent: dict = {}  # id -> (connection, request, time.monotonic())
        self.answers: dict = {}  # id -> [answer events]
        self.problems: list = []  # what went wrong on its side (a reconnect that failed)
        self._connect_once()
        self._reader = threading.Thread(target=self._read, name=f"recorder-{label}", daemon=True)
        self._reader.start()

    def __repr__(self):
        return f"{self.label} ({self.nick}) on {self.node.name}"

    # -- requests ------------------------------------------------------------------------------

    def send(self, **msg) -> str:
        """Send a request with a fresh id; return the id."""
        with self._cond:
            msg_id = f"{self.label}-{next(self._ids)}"
            msg = {**msg, "id": msg_id}
            self.sent[msg_id] = (self.connection, msg, time.monotonic())
            ws = self.ws
        # On a closed connection the reader notices the close; the request is one sent too late.
        with contextlib.suppress(websocket.WebSocketException, OSError):
            ws.send(json.dumps(msg))
        return msg_id

    def answer(self, msg_id: str, timeout: float = REPLY_TIMEOUT):
        """The first answer to `msg_id`, or Closed if its connection closed first. Raises
        AssertionError after `timeout` seconds without either."""
        deadline = time.monotonic() + timeout
        with self._cond:
            connection, msg, _sent = self.sent[msg_id]
            while True:
                if self.answers.get(msg_id):
                    return self.answers[msg_id][0]
                if connection != self.connection or not self.connected:
                    code = next((c for _t, n, c, _r in self.closes if n == connection), None)
                    return Closed(code)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self}: no answer to {msg} within {timeout:g} s")
                self._cond.wait(min(left, 0.5))

    def request(self, timeout: float = REPLY_TIMEOUT, **msg):
        """Send and wait for the answer (see answer())."""
        return self.answer(self.send(**msg), timeout)

    def set_nick(self, nick: str):
        """Ask for `nick` (and want it back after a reconnect if granted); the answer."""
        reply = self.request(type="nick", nick=nick)
        if reply.get("type") == "nick":
            with self._cond:
                self.wanted_nick = nick
        return reply

    def join(self, room: str):
        """Join `room`; the answer (`joined`, an error, or Closed)."""
        return self.request(type="join", room=room)

    def chat(self, room: str, text: str | None = None):
        """Chat `text` (a unique one by default) in `room`; the answer."""
        return self.request(type="chat", room=room, text=text or f"{self.label} {next(self._ids)}")

    def in_room(self, room: str) -> bool:
        with self._cond:
            return room in self.rooms

    def view(self, room: str) -> list | None:
        """The members of `room` as this client was told (None when it is not in it)."""
        with self._cond:
            members = self.rooms.get(room)
            return None if members is None else list(members)

    def received(self, kind: str, since: float = 0.0, **match) -> list:
        """The events of type `kind` received at or after `since` whose fields include `match`."""
        with self._cond:
            return [e for t, _n, e in self.events
                    if t >= since and e.get("type") == kind and all(e.get(k) == v for k, v in match.items())]

    def wait(self, predicate, timeout: float, what: str):
        """Wait until `predicate()` (called under this client's lock) is truthy; return its value.
        Raises AssertionError saying `what` was not seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self}: {what} not seen within {timeout:g} s")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        """Close for good (no reconnect)."""
        with self._cond:
            self.gone = self.closed_by_test = True
            ws = self.ws
        with contextlib.suppress(Exception):
            ws.close(timeout=5)
        with contextlib.suppress(Exception):
            ws.shutdown()
        self._reader.join(5)

    # -- the reader thread --------------------------------------------------------------------

    def _url(self) -> str:
        query = {}
        if self.token:
            query["token"] = self.token
        if self.resume:
            query["resume"] = self.resume
        return self.node.url + (("?" + urlencode(query)) if query else "")

    def _connect_once(self) -> None:
        """Connect and read `welcome`. Raises websocket/OS errors."""
        ws = websocket.create_connection(self._url(), timeout=REPLY_TIMEOUT, enable_multithread=True)
        try:
            welcome = json.loads(ws.recv())
        except Exception:
            ws.shutdown()
            raise
        ws.settimeout(None)
        with self._cond:
            self.ws = ws
            self.connection += 1
            self.connected = True
            self._record(welcome)

    def _read(self) -> None:
        while True:
            with self._cond:
                ws, connection = self.ws, self.connection
            code, reason = self._read_connection(ws)
            with self._cond:
                self.closes.append((time.monotonic(), connection, code, reason))
                self.connected = False
                self.streams.end()
                rooms, self.rooms = list(self.rooms), {}
                follow = code == 1012 and not self.gone
                if not follow:
                    self.gone = True
                self._cond.notify_all()
            with contextlib.suppress(Exception):
                ws.shutdown()
            if not follow or not self._reconnect():
                return
            self._restore(rooms)

    def _read_connection(self, ws) -> tuple:
        """Record events until the connection closes; its close code (None: no close frame)."""
        while True:
            try:
                opcode, frame = ws.recv_data_frame(True)
            except (websocket.WebSocketException, OSError, AttributeError):
                return None, "connection lost"
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                return code, data[2:].decode("utf-8", "replace")
            if opcode == websocket.ABNF.OPCODE_TEXT:
                event = json.loads(frame.data)
                with self._cond:
                    self._record(event)
                    self._cond.notify_all()

    def _reconnect(self) -> bool:
        deadline = time.monotonic() + RECONNECT_FOR
        while time.monotonic() < deadline and not self.gone:
            try:
                self._connect_once()
                return True
            except (websocket.WebSocketException, OSError, ValueError):
                time.sleep(0.2)
        with self._cond:
            self.gone = True
            self.problems.append(f"could not reconnect to {self.node.name} within {RECONNECT_FOR:g} s after 1012")
            self._cond.notify_all()
        return False

    def _restore(self, rooms: list) -> None:
        """After a reconnect: the nick again (unless kept), then each room with `after` if the
        epoch is the same."""
        with self._cond:
            ask = self.wanted_nick if self.wanted_nick and self.nick != self.wanted_nick and not self.token else None
        if ask:
            threading.Thread(target=self._reclaim, args=(ask,), daemon=True).start()
        for room in rooms:
            with self._cond:
                after = self.streams.last_seq(room, self.epoch)
            self.send(type="join", room=room, **({} if after is None else {"after": after}))

    def _reclaim(self, nick: str) -> None:
        for _ in range(NICK_RETRIES):
            try:
                reply = self.request(type="nick", nick=nick)
            except AssertionError:  # unanswered: the checks report it
                return
            if reply.get("type") != "error" or reply.get("code") not in ("nick_taken", "unavailable"):
                return
            time.sleep(0.5)

    # -- what events mean to this client (under _cond) ------------------------------------------

    def _record(self, event: dict) -> None:
        now = time.monotonic()
        self.events.append((now, self.connection, event))
        kind, room = event.get("type"), event.get("room")
        msg_id = event.get("id")
        request = None
        if msg_id is not None and msg_id in self.sent:
            self.answers.setdefault(msg_id, []).append(event)
            request = self.sent[msg_id][1]
        if kind == "welcome":
            self.nick, self.epoch, self.resume = event["nick"], event.get("epoch"), event.get("resume")
            if event.get("resumed"):
                for name in event.get("rooms", []):
                    self.rooms.setdefault(name, [])
        elif kind == "joined":
            self._joined(event, request, now)
        elif kind == "left":
            self.rooms.pop(room, None)
            self.streams.end(room)
        elif kind == "presence" and room in self.rooms:
            members = self.rooms[room]
            if event["event"] == "join" and event["nick"] not in members:
                members.append(event["nick"])
            elif event["event"] == "leave" and event["nick"] in members:
                members.remove(event["nick"])
        elif kind == "nick":
            if fold_nick(event["old"]) == fold_nick(self.nick or "") and (request is not None or msg_id is None):
                self.nick = event["nick"]
            for members in self.rooms.values():
                if event["old"] in members:
                    members[members.index(event["old"])] = event["nick"]
        elif kind in ("kick", "ban") and room in self.rooms and (kind == "kick" or event.get("duration")):
            if fold_nick(event["nick"]) == fold_nick(self.nick):
                self.rooms.pop(room)
                self.streams.end(room)
            elif event["nick"] in self.rooms[room]:
                self.rooms[room].remove(event["nick"])
        elif kind == "chat":
            self._chat(event, request)
        elif kind == "history":
            for chat in event.get("messages", []):
                self.rig.record_chat(self.epoch, chat, self)

    def _joined(self, event: dict, request, now: float) -> None:
        room, history = event["room"], event.get("history", [])
        self.rooms[room] = list(event.get("members", []))
        for chat in history:
            self.rig.record_chat(self.epoch, chat, self)
        self.streams.joined(room, self.epoch, history, request.get("after") if request else None, now)

    def _chat(self, event: dict, request) -> None:
        room = event["room"]
        if request is not None and request.get("type") == "chat":
            self.rig.record_ack(self.epoch, event, self, self.sent[event["id"]][2])
        self.rig.record_chat(self.epoch, event, self)
        if room not in self.rooms:
            self.streams.problems.append(f"chat seq {event.get('seq')} of {room} received while not in it: {event}")
        else:
            self.streams.chat(room, event)
