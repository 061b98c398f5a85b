"""Protocol v1's vocabulary, written once: close codes, error codes, request and event types,
the nick rule and nick equality, field rules, request decoding and the events the server sends.

PROTOCOL.md is the contract; this module is its executable half. Everything here is pure. Every
other copy of these facts (PROTOCOL.md's tables, schema/, metrics' labels, the handlers, the chat
page, the terminal client) is pinned to this module by tests/unit/test_vocabulary.py.

Imports: `chatserver.errors`, and `wire.frames` for `encode` only (at the end of the module, as
wire.frames takes CloseCode from here), so every layer may import this module.
"""

import enum
import functools
import re
import time
import unicodedata

import orjson

from chatserver import __version__
from chatserver.errors import ChatError

SERVER_NAME = f"roomchat/{__version__}"


class CloseCode(enum.IntEnum):
    """Every close code roomchat sends (RFC 6455 7.4.1, the IANA registry, and 4000-4999 our own).

    PROTOCOL.md "When the server closes the connection" says when each is sent."""

    NORMAL_CLOSURE = 1000  # the echo of a client's own close frame
    GOING_AWAY = 1001  # the server is shutting down
    PROTOCOL_ERROR = 1002  # the peer broke RFC 6455 framing
    UNSUPPORTED_DATA = 1003  # a binary frame
    INVALID_DATA = 1007  # text that is not UTF-8
    POLICY_VIOLATION = 1008  # flooding, or too slow to read its room events
    MESSAGE_TOO_BIG = 1009  # over max_message_bytes or MAX_FRAGMENTS
    INTERNAL_ERROR = 1011  # no pong in time, or a bug
    SERVICE_RESTART = 1012  # several processes: the history was reset, or a nick was lost while cut off
    TRY_AGAIN_LATER = 1013  # the connection could not be registered now
    TOKEN_EXPIRED = 4001  # the connection's token expired
    REPLACED = 4002  # a newer connection with the same token or resume token took over


ERROR_CODES = {  # the `code` of an `error` event -> when it is sent (PROTOCOL.md "Errors" says more)
    "bad_json": "the frame is not valid JSON",
    "bad_message": "not an object, no string type, a bad field or a bad id",
    "unknown_type": "no such request type",
    "bad_nick": "a nick outside the nick rule",
    "nick_taken": "someone else has that nick, or one that looks like it",
    "nick_reserved": "the nick is reserved (by the operator, or by a token for it)",
    "bad_token": "the token is expired, wrongly signed or malformed, or tokens are off",
    "forbidden": "not allowed (not an operator, banned, muted, outside the token's rooms or nick)",
    "bad_room": "a room name outside the room rule",
    "not_in_room": "chat, leave, history, edit, delete, react, typing, mark or search for a room the client is not in",
    "too_many_rooms": "a join over max_rooms",
    "no_such_user": "a dm or kick for a nick nobody has (in that room)",
    "too_long": "a text, topic or reason over its limit",
    "rate_limited": "over the connection's or the address's rate; the request was dropped",
    "recipient_busy": "a dm to someone with more than half of max_outbox_bytes unread, or with offline_dms waiting",
    "unavailable": "the history store or Redis cannot do it now; nothing was stored or sent",
    "moderated": "a member's chat in a moderated room (only operators chat there)",
    "slow_mode": "a member's chat sooner than the room's slow mode allows; retry_after says when",
    "too_late": "an edit or delete of your own chat past the edit window",
    "no_such_message": "an edit, delete or react of a seq that is no chat of the room (or one deleted or gone)",
    "too_many_reactions": "a new emoji on a chat that has MAX_REACTIONS different ones already",
    "unsupported": "the engine cannot do it; nothing was done (no engine here answers it now: older servers did)",
}

REQUEST_TYPES = frozenset({  # the `type` of a request; handlers/ has one module for each
    "nick", "join", "leave", "chat", "dm", "rooms", "who", "history", "ping", "auth", "topic", "kick", "ban", "mute",
    "mode", "edit", "delete", "react",
    "typing", "mark",
    "search",
})
# The events that go through a room's stream:
ROOM_EVENTS = frozenset({"chat", "presence", "nick", "topic", "kick", "ban", "mute", "mode", "edit", "delete", "react",
                         "typing"})
# The room events that are stored and take the room's next seq (the others have none):
STORED_EVENTS = frozenset({"chat", "edit", "delete", "react"})
AMEND_EVENTS = ("edit", "delete", "react")  # the stored events about an earlier chat (`target`)
EVENT_TYPES = ROOM_EVENTS | {  # the `type` of an event the server sends
    "welcome", "joined", "left", "dm", "rooms", "who", "history", "pong", "error", "auth",
    "mark",
    "search",
}

# The nick rule: 1-32 ASCII letters, digits, '_', '.' or '-'. The page (web/static/state.js), the
# form (web/index.html) and schema/common.json copy it; tests/unit/test_vocabulary.py pins them.
NICK_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
ROOM_RE = re.compile(r"[A-Za-z0-9_.\-#]{1,64}")
MAX_ID_CHARS = 64
JOIN_HISTORY = 50  # chat events a plain `join` replays
MAX_RESUME = 1000  # chat events a `join` with `after` replays before it says truncated
MAX_HISTORY_LIMIT = 200
MAX_SEQ = 2**63 - 1  # what SQLite's INTEGER holds
MAX_TOPIC_CHARS = 300  # a room topic, in characters
MAX_REASON_CHARS = 200  # the reason given with a kick, ban or mute
MAX_DURATION = 30 * 86400  # seconds a ban or mute may last at most (30 days)
MAX_SLOW = 3600  # seconds of slow mode at most (an hour between a member's chats)
EDIT_WINDOW = 900  # seconds after its ts a chat may be edited or deleted by its author (--edit-window)
MAX_REACTIONS = 20  # different emoji on one chat at most (a new one past it: too_many_reactions)
MAX_REACTORS = 100  # nicks listed per emoji of a chat at most (later ones are stored, not listed)
MAX_EMOJI_CHARS = 32  # code points in a reaction at most (a family emoji with skin tones takes 11)
# After lower-casing, the ASCII characters that look alike: I/l/1 (so also i) and O/0.
_LOOKALIKES = str.maketrans("i10", "llo")


def decode(raw: str) -> dict:
    """Parse one client message: a JSON object (RFC 8259) with a string `type` and a valid `id`.

    Raises ChatError bad_json (not JSON, NaN, a lone surrogate, nesting over 1024) or
    bad_message (not an object, no string `type`, a bad `id`, which is then left out)."""
    msg = parse_json(raw, "That message is not valid JSON; send one JSON object per frame.")
    if not isinstance(msg, dict):
        raise ChatError("bad_message", "A message must be a JSON object with a \"type\" field.")
    msg_id = msg.get("id")
    if msg_id is not None and not _valid_id(msg_id):
        msg.pop("id")
        raise ChatError("bad_message", f"\"id\" must be an integer or a string of at most {MAX_ID_CHARS} characters.")
    if not isinstance(msg.get("type"), str):
        raise ChatError("bad_message", "A message needs a string \"type\" field, such as \"chat\" or \"join\".")
    return msg


def parse_json(raw: str | bytes, complaint: str):
    """One JSON value (RFC 8259), strictly: every text the server takes as JSON (a WebSocket
    message, an HTTP API body) goes through here, so none brings in what it cannot store or send
    back (a lone surrogate, which has no UTF-8 form), or costs a deep recursion.

    Raises ChatError bad_json (with `complaint`) for invalid UTF-8 or JSON, NaN or Infinity, a
    lone surrogate, nesting over 1024, or anything after the value."""
    try:
        return orjson.loads(raw)  # strict: no NaN, no lone surrogates, nesting limited to 1024
    except orjson.JSONDecodeError:
        raise ChatError("bad_json", complaint) from None


def _valid_id(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and len(value) <= MAX_ID_CHARS)


def require_str(msg: dict, field: str) -> str:
    """`msg[field]` as a string. Raises ChatError bad_message when missing or not a string."""
    value = msg.get(field)
    if not isinstance(value, str):
        raise ChatError("bad_message", f"\"{field}\" must be a string.")
    return value


def require_nick(msg: dict, field: str = "nick") -> str:
    """A nick: 1-32 of A-Z a-z 0-9 _ . - (NICK_RE). Raises ChatError bad_message, bad_nick."""
    nick = require_str(msg, field)
    if not valid_nick(nick):
        raise ChatError("bad_nick", "A nick is 1-32 letters, digits, '_', '-' or '.'.")
    return nick


def valid_nick(nick: str) -> bool:
    """True when `nick` (a str) follows the nick rule, NICK_RE, as a whole."""
    return NICK_RE.fullmatch(nick) is not None


def fold_nick(nick: str) -> str:
    """The form that nicks which look alike share: two nicks with the same fold are one nick.

    This is nick equality everywhere: the server refuses a nick whose fold another client holds
    (nick_taken), and reservations, bans, mutes, kicks and dms compare folds. The chat page must
    compare nicks the same way (pinned by tests/unit/test_vocabulary.py).

    Folds case, then "rn" to "m", then "i", "l" and "1" to "l" and "0" to "o" (ASCII look-alikes:
    I/l/1, O/0, rn/m), so fold_nick("Bi11") == fold_nick("bill") and fold_nick("rnoe") ==
    fold_nick("Moe"). Nicks are ASCII (NICK_RE), so lower() is a full case fold."""
    return nick.lower().replace("rn", "m").translate(_LOOKALIKES)


def require_room(msg: dict, field: str = "room") -> str:
    """`msg[field]`: 1-64 of A-Z a-z 0-9 _ . - # (ROOM_RE). Raises ChatError bad_message, bad_room."""
    room = require_str(msg, field)
    if not ROOM_RE.fullmatch(room):
        raise ChatError("bad_room", "A room name is 1-64 letters, digits, '_', '-', '.' or '#'.")
    return room


def optional_room(msg: dict, field: str) -> str | None:
    """A room name in `field`, or None when absent. Raises ChatError bad_room."""
    if msg.get(field) is None:
        return None
    return require_room(msg, field)


def require_text(msg: dict, max_chars: int) -> str:
    """`msg["text"]`: 1 to `max_chars` code points. Raises ChatError bad_message, too_long."""
    text = require_str(msg, "text")
    if not text:
        raise ChatError("bad_message", "\"text\" must not be empty.")
    if len(text) > max_chars:
        raise ChatError("too_long", f"Text is {len(text)} characters; the limit is {max_chars}.")
    return text


def require_topic(msg: dict) -> str:
    """A room topic: 0 (clears it) to MAX_TOPIC_CHARS characters. Raises ChatError bad_message, too_long."""
    topic = require_str(msg, "topic")
    if len(topic) > MAX_TOPIC_CHARS:
        raise ChatError("too_long", f"A topic is at most {MAX_TOPIC_CHARS} characters; this one has {len(topic)}.")
    return topic


def optional_reason(msg: dict) -> str:
    """The optional `reason` of a kick, ban or mute ("" when absent). Raises ChatError bad_message, too_long."""
    reason = msg.get("reason", "")
    if not isinstance(reason, str):
        raise ChatError("bad_message", "\"reason\" must be a string.")
    if len(reason) > MAX_REASON_CHARS:
        raise ChatError("too_long", f"A reason is at most {MAX_REASON_CHARS} characters.")
    return reason


def require_duration(msg: dict) -> int:
    """A ban's or mute's `duration`: whole seconds, 0 (lifts it) to MAX_DURATION. Raises ChatError bad_message."""
    value = msg.get("duration")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DURATION:
        raise ChatError("bad_message", f"\"duration\" must be whole seconds from 0 (lift) to {MAX_DURATION}.")
    return value


def require_mode(msg: dict) -> tuple:
    """A `mode` request's (moderated, slow): `moderated` true/false, `slow` whole seconds 0 (off)
    to MAX_SLOW; either may be absent (None: unchanged), not both. Raises ChatError bad_message."""
    moderated, slow = msg.get("moderated"), msg.get("slow")
    if moderated is not None and not isinstance(moderated, bool):
        raise ChatError("bad_message", "\"moderated\" must be true or false.")
    if slow is not None and (isinstance(slow, bool) or not isinstance(slow, int) or not 0 <= slow <= MAX_SLOW):
        raise ChatError("bad_message", f"\"slow\" must be whole seconds from 0 (off) to {MAX_SLOW}.")
    if moderated is None and slow is None:
        raise ChatError("bad_message", "Give \"moderated\", \"slow\" or both.")
    return moderated, slow


def optional_seq(msg: dict, field: str) -> int | None:
    """`msg[field]` as a seq (0 to 2**63 - 1), or None. Raises ChatError bad_message."""
    value = msg.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise ChatError("bad_message", f"\"{field}\" must be a seq: an integer from 0 to {MAX_SEQ}.")
    return value


def history_limit(msg: dict) -> int:
    """`msg["limit"]`: 1 to MAX_HISTORY_LIMIT, JOIN_HISTORY when absent. Raises ChatError bad_message."""
    value = msg.get("limit", JOIN_HISTORY)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HISTORY_LIMIT:
        raise ChatError("bad_message", f"\"limit\" must be an integer from 1 to {MAX_HISTORY_LIMIT}.")
    return value


# -- edit, delete and react (fields) -----------------------------------------------------------


def require_emoji(msg: dict) -> str:
    """`msg["emoji"]`: one emoji (a single grapheme the `emoji` package knows: "👍", "👍🏽", "🇫🇷"),
    in its fully-qualified form: spellings that differ only by the variation selector U+FE0F
    ("❤" and "❤️", "👍️" and "👍") are one emoji, so they are one reaction. Raises ChatError bad_message."""
    value = require_str(msg, "emoji")
    found = _emoji_forms().get(value.replace(VS16, "")) if 0 < len(value) <= MAX_EMOJI_CHARS else None
    if found is None:
        raise ChatError("bad_message", "\"emoji\" must be one emoji, such as \"👍\".")
    return found


VS16 = "\ufe0f"  # the variation selector asking for an emoji's colourful presentation


@functools.cache
def _emoji_forms() -> dict:
    """{an emoji without U+FE0F: its fully-qualified form} for every emoji of the `emoji` package
    (components such as a skin tone alone included), built at the first reaction (its tables take
    a moment to load)."""
    import emoji

    wanted = (emoji.STATUS["component"], emoji.STATUS["fully_qualified"])
    return {key.replace(VS16, ""): key for key, data in emoji.EMOJI_DATA.items() if data["status"] in wanted}


# -- typing, read markers, DMs that wait ---------------------------------------------------------

TYPING_INTERVAL = 3  # seconds: at most one `typing` per nick and room this often; the rest are dropped
MAX_MARKS = 1000  # read markers kept per identity (the rooms marked last); `welcome.marks` lists them


def require_seq(msg: dict, field: str = "seq") -> int:
    """`msg[field]` as the seq of a stored event (1 to MAX_SEQ), required: the chat an edit,
    delete or react is about, or where a mark goes. Raises ChatError bad_message."""
    value = msg.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEQ:
        raise ChatError("bad_message", f"\"{field}\" must be a seq: an integer from 1 to {MAX_SEQ}.")
    return value


def typing_event(room: str, nick: str) -> dict:
    """`nick` is typing in `room`: sent to the room's other members, never stored, no seq."""
    return {"type": "typing", "room": room, "nick": nick}


def mark_event(room: str, seq: int) -> dict:
    """The reply to `mark`: the identity's (or connection's) read marker in `room` now."""
    return {"type": "mark", "room": room, "seq": seq}


# -- search ------------------------------------------------------------------------------------

MAX_QUERY_CHARS = 200  # a search's `q`, in characters
_WORD = re.compile(r"[^\W_]+")  # a word: letters and digits (SQLite FTS5's unicode61 tokens)


def require_query(msg: dict) -> str:
    """A search's `q`: 1 to MAX_QUERY_CHARS characters with at least one word (letters or digits).
    Raises ChatError bad_message."""
    query = require_str(msg, "q")
    if not 1 <= len(query) <= MAX_QUERY_CHARS:
        raise ChatError("bad_message", f"\"q\" must be 1 to {MAX_QUERY_CHARS} characters.")
    if not search_words(query):
        raise ChatError("bad_message", "\"q\" must contain a word to search for (letters or digits).")
    return query


def search_words(text: str) -> list:
    """The words of `text` as search compares them: runs of letters and digits, case-folded,
    without diacritics ("Café-Crème" -> ["cafe", "creme"]). A search's words must each be the
    start of a word of the chat, and a word of one character the whole of one (as a prefix it
    would match nearly everything, and cost the index a pass over most of its words);
    engines/sqlite_search.py asks FTS5 the same."""
    if text.isascii():  # the common case, 5 times faster: NFKD changes nothing, casefold is lower
        return _WORD.findall(text.lower())
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _WORD.findall(plain.casefold())


# -- events the server sends -------------------------------------------------------------------


def welcome(nick: str, limits: dict, epoch: str) -> dict:
    return {"type": "welcome", "nick": nick, "server": SERVER_NAME, "epoch": epoch, "limits": limits}


def chat_event(room: str, nick: str, text: str, seq: int, ts: float | None = None) -> dict:
    """The chat event, the one place its shape is built: `ts` is Unix time in seconds, now when None."""
    return {"type": "chat", "room": room, "from": nick, "text": text, "seq": seq,
            "ts": time.time() if ts is None else ts}


def amend_event(kind: str, room: str, target: int, nick: str, seq: int = 0, ts: float | None = None,
                **fields) -> dict:
    """An edit, delete or react event (AMEND_EVENTS), the one place its shape is built: `fields`
    are the edit's `text` or the react's `emoji` and `on`; `seq` is the engine's to fill in."""
    return {"type": kind, "room": room, "seq": seq, "target": target, "from": nick, **fields,
            "ts": time.time() if ts is None else ts}


def dm_event(sender: str, recipient: str, text: str) -> dict:
    return {"type": "dm", "from": sender, "to": recipient, "text": text, "ts": time.time()}


def presence(room: str, event: str, nick: str) -> dict:
    return {"type": "presence", "room": room, "event": event, "nick": nick}


def error(exc: ChatError, msg_id=None) -> dict:
    return with_id({"type": "error", "code": exc.code, "message": exc.message, **exc.fields}, msg_id)


def with_id(event: dict, msg_id) -> dict:
    """The direct reply to a request carries the request's `id`; broadcasts do not."""
    return event if msg_id is None else {**event, "id": msg_id}


def encode(event: dict) -> bytes:
    """A ready-to-send text frame: the JSON is built once and the same bytes go to every member.

    Every string in an event came from orjson.loads or from our own code, so none holds a lone
    surrogate, and the output is always valid UTF-8."""
    return frames.text_frame(orjson.dumps(event))


# Last, because wire.frames imports CloseCode from this module: imported either way round, each
# finds what it needs of the other defined by the time it is called.
from chatserver.wire import frames  # noqa: E402
