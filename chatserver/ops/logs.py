"""Log lines: `--log-format text` (for people) or `json` (one object per line, for collectors).

Convention: a log call says what it is about through `extra=` with the keys in FIELDS, and
`context()` builds that dict, leaving out what is unknown:

    log.info("connect", extra=context(peer=conn.peer, nick=client.nick))
    log.info("refused", extra=context(peer=conn.peer, code="rate_limited"))

JSON lines carry them as keys (`{"time":..., "level":..., "logger":..., "event":..., "peer":...}`);
text lines end with them as `peer=... nick=...`. Both formats show the same records.

No control character reaches a line raw, whatever the logger, the level or where the text
came from (a request line at DEBUG is the peer's bytes): C0 controls, DEL, C1 controls, the
line and paragraph separators (U+2028, U+2029) and the bidi controls become `\\x1b` or
`\\u2028`, so an ESC or OSC 52 sequence cannot reach a terminal and a CR or LF cannot forge a
line. A backslash is left as it is, so `\\x1b` in a line may also be those four characters as
sent.

No secret reaches a line either: a token in a request target (`?token=`, `?resume=`,
`?invite=`), the token of an `auth` request's JSON (the teaching trace prints requests) and
anything shaped like a signed token (a JWT: `eyJ....`) are written as `<redacted>`, by both
formatters, at every level, in messages, fields and tracebacks alike (`redact`).

A traceback is the one thing that spans lines: in text, each of its lines (escaped the
same way) is indented by four spaces under its record; in JSON it is the `exc` key.

Runs in whichever thread logs; the handler's own lock serialises writes.
"""

import json
import logging
import re
import sys
import threading
from datetime import UTC, datetime

FIELDS = ("peer", "nick", "room", "code")
FORMATS = ("text", "json")
TEXT_LAYOUT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
INDENT = "    "  # before each continuation line of a traceback (text format)

# C0, DEL, C1; line and paragraph separators; bidi marks, embeddings, overrides and isolates.
_UNSAFE = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x061C, 0x200E, 0x200F,
           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _UNSAFE}
_ESCAPES_KEEP_NEWLINES = {c: e for c, e in _ESCAPES.items() if c != 0x0A}


REDACTED = "<redacted>"
_SECRETS = re.compile(
    r"(?P<query>(?:[?&;]|%3f|%26)(?:token|resume|invite)(?:=|%3d))[^&;\s\"'#<>]+"  # ?token=... in a target
    r"|(?P<json>\"token\"\s*:\s*\")(?:[^\"\\]|\\.)*"  # "token": "..." in a request's JSON
    r"|\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",  # a JWT anywhere (its header is {"...)
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every secret the module docstring lists written as `<redacted>`. Raises nothing."""
    return _SECRETS.sub(lambda m: (m["query"] or m["json"] or "") + REDACTED, text)


def escape(text: str, keep_newlines: bool = False) -> str:
    """`text` with its secrets redacted and every unsafe character (see the module docstring)
    written as an escape. Raises nothing."""
    return redact(text).translate(_ESCAPES_KEEP_NEWLINES if keep_newlines else _ESCAPES)


def context(**fields) -> dict:
    """The `extra=` dict for a log call: the FIELDS given and not None. Raises KeyError for
    another name, so a misspelt field is found at once."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise KeyError(f"not a log field: {', '.join(sorted(unknown))}")
    return {k: v for k, v in fields.items() if v is not None}


requests = logging.getLogger("roomchat.requests")  # DEBUG: one line per request and per refusal


def request(client, kind: str, msg: dict, code: str | None = None) -> None:
    """Log one request of `client` (`request join`) or its refusal with error `code` (`refused
    chat: too_long`) at DEBUG on `requests`, with the peer, nick, room (from `msg`) and code as
    fields. Callers check `requests.isEnabledFor(logging.DEBUG)` first. Raises nothing."""
    room = msg.get("room") if isinstance(msg.get("room"), str) else None
    fields = context(peer=getattr(client.conn, "peer", None), nick=client.nick, room=room, code=code)
    if code is None:
        requests.debug("request %s", kind, extra=fields)
    else:
        requests.debug("refused %s: %s", kind, code, extra=fields)


def _fields(record: logging.LogRecord) -> list[tuple[str, object]]:
    return [(name, getattr(record, name)) for name in FIELDS if getattr(record, name, None) is not None]


class TextFormatter(logging.Formatter):
    """`2026-11-30 11:27:03,123 INFO roomchat: connect peer=127.0.0.1:5000 nick=ann`."""

    def __init__(self):
        super().__init__(TEXT_LAYOUT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        line = (f"{self.formatTime(record)} {escape(record.levelname)} {escape(record.name)}: "
                f"{escape(record.message)}")
        for name, value in _fields(record):
            line += f" {name}={escape(str(value))}"
        for block in self._blocks(record):
            line += "\n" + INDENT + escape(block, keep_newlines=True).replace("\n", "\n" + INDENT)
        return line

    def _blocks(self, record: logging.LogRecord) -> list[str]:
        blocks = []
        if record.exc_info:
            blocks.append(self.formatException(record.exc_info))
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        return blocks


class JsonFormatter(logging.Formatter):
    """`{"time":"2026-11-30T11:27:03.123+00:00","level":"INFO","logger":"roomchat","event":"connect",...}`.

    Strings are escaped as in text lines (so `event` reads the same in both) before JSON
    encoding; `exc` and `stack` keep their newlines, which JSON encodes as \\n."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": escape(record.levelname),
            "logger": escape(record.name),
            "event": escape(record.getMessage()),
        }
        for name, value in _fields(record):
            out[name] = value if isinstance(value, int | float | bool) else escape(str(value))
        if record.exc_info:
            out["exc"] = escape(self.formatException(record.exc_info), keep_newlines=True)
        if record.stack_info:
            out["stack"] = escape(self.formatStack(record.stack_info), keep_newlines=True)
        return json.dumps(out, ensure_ascii=False)


FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def configure(level: str, fmt: str = "text", stream=None) -> None:
    """Send every logger's records to `stream` (stderr) at `level` in `fmt` ("text" or "json"),
    replacing any handler set before (websocket_server calls basicConfig() at import). An
    exception that escapes a thread is logged the same way instead of printed raw.

    Raises KeyError for an unknown format."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(FORMATTERS[fmt]())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("roomchat").error("uncaught exception in thread %s", name, exc_info=exc_info)
