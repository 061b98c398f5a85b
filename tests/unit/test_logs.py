"""Log formatting: text and JSON lines, the extra= fields, and control characters always escaped."""

import io
import json
import logging
import sys
import threading

import pytest

from chatserver.ops.logs import JsonFormatter, TextFormatter, configure, context, escape, redact

UNSAFE = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x061C, 0x200E, 0x200F,
                           *range(0x202A, 0x202F), *range(0x2066, 0x206A))]
HOSTILE = "a\x1b[2J\x1b]52;c;aGVsbG8=\x07b\rFORGED\nline\x85\u2028\u202e\x7f"


def record(msg="hello %s", args=("world",), exc=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("roomchat.test", logging.INFO, __file__, 1, msg, args, exc)
    rec.__dict__.update(extra)
    return rec


def raw_controls(text: str) -> list[str]:
    """The unsafe characters in `text`, line breaks between lines left out."""
    return [c for c in text if c in UNSAFE and c != "\n"]


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_escape_writes_every_unsafe_character_as_an_escape(char):
    """Each C0, DEL, C1, line/paragraph separator and bidi control becomes \\xNN or \\uNNNN."""
    escaped = escape(f"<{char}>")
    assert escaped == "<" + (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}") + ">"


def test_escape_keeps_ordinary_text():
    """Letters of any script, emoji, quotes and backslashes pass unchanged."""
    text = "ann \u00e9\u6f22\u0627 \U0001f600 \"q\" C:\\dir"
    assert escape(text) == text


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_hostile_message_stays_one_escaped_line(formatter):
    """A message (and a field) holding ESC, OSC 52, CR, LF, NEL, U+2028, RLO and DEL is one line
    with none of them raw."""
    line = formatter.format(record("http GET %s", (HOSTILE,), peer=HOSTILE))
    assert "\n" not in line and raw_controls(line) == []
    shown = json.loads(line)["event"] if isinstance(formatter, JsonFormatter) else line
    assert "\\x1b]52;c;aGVsbG8=\\x07b\\x0dFORGED\\x0aline\\x85\\u2028\\u202e\\x7f" in shown


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJl-_x"


@pytest.mark.parametrize("text, shown", [
    (f"http GET /?token={JWT}&x=1", "http GET /?token=<redacted>&x=1"),
    ("GET /?nick=ann&resume=r3sum3#lobby", "GET /?nick=ann&resume=<redacted>#lobby"),
    ("/?INVITE=abc;x", "/?INVITE=<redacted>;x"),
    ("/%3Ftoken%3Dabc", "/%3Ftoken%3D<redacted>"),
    ('{"type": "auth", "token": "a\\"b", "id": 2}', '{"type": "auth", "token": "<redacted>", "id": 2}'),
    (f"bad token {JWT} refused", "bad token <redacted> refused"),
    ("the token=field of a sentence", "the token=field of a sentence"),
])
def test_redact_hides_tokens_in_targets_requests_and_jwts(text, shown):
    """?token=/?resume=/?invite= values, an auth request's token and any JWT become <redacted>."""
    assert redact(text) == shown


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_formatters_redact_message_fields_and_tracebacks(formatter):
    """A token in the message, in a field and in a traceback reaches neither format."""
    try:
        raise ValueError(f"bad {JWT}")
    except ValueError:
        exc = sys.exc_info()
    line = formatter.format(record("http GET %s", (f"/?token={JWT}",), exc=exc, peer=JWT))
    assert "c2lnbmF0dXJl" not in line and "<redacted>" in line


def test_text_line_shape_and_fields():
    """Text: time, level, logger, message, then the extra= fields present as key=value."""
    line = TextFormatter().format(record(**context(peer="127.0.0.1:5000", nick="ann", room=None)))
    assert line.endswith(" INFO roomchat.test: hello world peer=127.0.0.1:5000 nick=ann")


def test_json_line_keys_and_fields():
    """JSON: time (UTC, ISO 8601), level, logger, event, and the extra= fields given."""
    out = json.loads(JsonFormatter().format(record(**context(room="lobby", code="rate_limited"))))
    assert out.pop("time").endswith("+00:00")
    assert out == {"level": "INFO", "logger": "roomchat.test", "event": "hello world", "room": "lobby",
                   "code": "rate_limited"}


def test_context_refuses_unknown_fields():
    """A misspelt field name raises at the log call instead of vanishing."""
    with pytest.raises(KeyError):
        context(peer="x", nik="ann")


def traceback_record() -> logging.LogRecord:
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        return record("failed", (), exc=sys.exc_info())


def test_text_traceback_lines_are_indented_and_escaped():
    """A traceback follows its record on lines indented by four spaces; its text is escaped too,
    so a newline in an exception message cannot start a line of its own."""
    first, *rest = TextFormatter().format(traceback_record()).split("\n")
    assert first.endswith("roomchat.test: failed") and rest and all(line.startswith("    ") for line in rest)
    assert raw_controls("\n".join(rest)) == [] and any("ValueError: a\\x1b[2J" in line for line in rest)


def test_json_traceback_is_the_exc_key():
    """In JSON the traceback is one escaped string under `exc`; the line stays one line."""
    line = JsonFormatter().format(traceback_record())
    assert "\n" not in line and raw_controls(line) == []
    assert "ValueError: a\\x1b[2J" in json.loads(line)["exc"]


@pytest.fixture
def configured():
    """configured(fmt) -> the stream configure(DEBUG, fmt) logs to; logging is restored after."""
    root, hook = logging.getLogger(), threading.excepthook
    handlers, level = root.handlers[:], root.level

    def setup(fmt: str) -> io.StringIO:
        out = io.StringIO()
        configure("DEBUG", fmt, stream=out)
        return out

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)
    threading.excepthook = hook


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_covers_every_logger(configured, fmt):
    """After configure(), any logger (websocket_server's included) writes through the safe formatter."""
    out = configured(fmt)
    logging.getLogger("websocket_server.websocket_server").warning("x%sy", "\x1b[31m")  # it sets WARNING itself
    text = out.getvalue()
    event = json.loads(text)["event"] if fmt == "json" else text
    assert text.count("\n") == 1 and raw_controls(text) == [] and "x\\x1b[31my" in event


def test_uncaught_thread_exception_is_logged_escaped(configured):
    """An exception escaping a thread is logged (one record, traceback indented), not printed raw."""
    out = configured("text")
    thread = threading.Thread(target=lambda: (_ for _ in ()).throw(ValueError(HOSTILE)), name="worker")
    thread.start()
    thread.join()
    first, *rest = out.getvalue().rstrip("\n").split("\n")
    assert first.endswith("ERROR roomchat: uncaught exception in thread worker"), first
    assert rest and all(line.startswith("    ") for line in rest) and raw_controls(out.getvalue()) == []
