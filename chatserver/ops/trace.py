"""The teaching trace (`python roomchat.py --trace`): every message's way through the server in
plain words, one short line per step, on the `roomchat.trace` logger (stderr, text or JSON).

The steps, in the order a chat takes them, and where each is told:

    frame     the frame as it arrived: FIN bit, opcode, MASK bit, payload length    wire/frames.py
    json      the message's text, as decoded from the frame's payload             rooms/dispatch.py
    handler   the handler its `type` picked (or none, or why it was refused)      rooms/dispatch.py
    registry  what the registry decided: a room event, its seq, members reached   rooms/registry.py
    fan-out   the writes: how many members, how many bytes, how many sends       rooms/registry.py
    reply     a direct answer to the sender (pong, error, who, ...)               rooms/registry.py

Off (the default), a hook costs one check of the module flag, `if trace.ON:`, and nothing else:
no call, no string formatted. `enable()` turns it on for the whole process (the command line does,
before the server starts). Lines are labelled with the client's nick: the connection's own thread
binds its connection (`bind`, from app.on_connect), so steps run on that thread know whose they
are; the registry and fan-out lines name the room instead, as they may run on the engine's thread.
Texts are cut to TEXT_LIMIT characters; the log formatter escapes control characters and redacts
tokens (an `auth` request's token, `?token=` in a target: ops/logs.py), so a class can watch the
trace of a server that hands out tokens.
"""

import logging
import threading

ON = False  # read by every hook; written only by enable()/disable()
TEXT_LIMIT = 200
OPCODES = {0x0: "continuation", 0x1: "text", 0x2: "binary", 0x8: "close", 0x9: "ping", 0xA: "pong"}

log = logging.getLogger("roomchat.trace")
_local = threading.local()  # .conn: the connection this thread serves


def enable() -> None:
    """Trace from now on, at INFO whatever --log-level says. Raises nothing."""
    global ON
    log.setLevel(logging.INFO)
    ON = True


def disable() -> None:
    """Stop tracing. Raises nothing."""
    global ON
    ON = False


def bind(conn) -> None:
    """Label this thread's lines with `conn` (its client's nick, or its peer before it has one)."""
    _local.conn = conn


def _who() -> str:
    conn = getattr(_local, "conn", None)
    client = getattr(conn, "client", None)
    return client.nick if client is not None else getattr(conn, "peer", "?")


def _n(count: int, word: str) -> str:
    """'1 member', '2 members'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f"... ({len(text)} characters)"


def frame(fin: int, opcode: int, masked: int, length: int) -> None:
    """A frame header read from a client (RFC 6455 section 5.2)."""
    log.info("frame    %s: FIN=%d opcode=0x%x (%s) MASK=%d payload %d bytes", _who(), bool(fin), opcode,
             OPCODES.get(opcode, "reserved"), bool(masked), length)


def message(raw: str) -> None:
    """A whole text message, before it is decoded."""
    log.info("json     %s: %s", _who(), _cut(raw))


def handler(kind: str, chosen, batched: bool) -> None:
    """The handler `chosen` for type `kind` (None: no such type)."""
    if chosen is None:
        log.info("handler  %s: no handler for type %r", _who(), _cut(kind))
    else:
        together = " (batched with same-type messages that arrived together)" if batched else ""
        log.info("handler  %s: %s -> %s.%s%s", _who(), kind, chosen.__module__, chosen.__name__, together)


def refused(error) -> None:
    """A request refused before (or by) its handler: a ChatError."""
    log.info("handler  %s: refused, %s: %s", _who(), error.code, error.message)


def room_event(room: str, event: dict, batch: dict, *frames: bytes) -> None:
    """A room event the hub has just queued: `batch` is the step's {client: [own bytes, frames...]}
    and `frames` this event's encodings, so the members reached are those whose last frame is one."""
    reached = sum(1 for queued in batch.values() if any(queued[-1] is f for f in frames))
    to = f"reaches {_n(reached, 'member')}"
    kind = event["type"]
    if kind == "chat":
        log.info("registry %s: seq %d assigned to %s's chat; %s", room, event["seq"], event["from"], to)
    elif kind == "presence":
        log.info("registry %s: presence %s of %s; %s", room, event["event"], event["nick"], to)
    else:
        log.info("registry %s: %s %s; %s", room, kind, {k: v for k, v in event.items() if k != "type"}, to)


def fanout(batch: dict) -> None:
    """One step's writes: {client: [own bytes, frames...]}, each client's frames joined into one
    send (none: no line)."""
    if not batch:
        return
    size = sum(len(f) for queued in batch.values() for f in queued[1:])
    frames = sum(len(queued) - 1 for queued in batch.values())
    log.info("fan-out  %s, %s, %d bytes in %s (one send per member)", _n(len(batch), "member"),
             _n(frames, "frame"), size, _n(len(batch), "write"))


def reply(client, event: dict, size: int) -> None:
    """A direct answer to `client`: what it says, `size` bytes encoded."""
    kind = event.get("type")
    if kind == "error":
        what = f"error {event['code']}"
    elif kind == "joined":
        what = f"joined {event['room']}: {_n(len(event['members']), 'member')}, {len(event['history'])} history events"
    elif kind == "nick":
        what = f"nick {event['old']} -> {event['nick']}"
    else:
        what = kind
    log.info("reply    %s: %s, %d bytes", client.nick, what, size)
