"""The shape of every event the server may send (PROTOCOL.md), checked before the client acts on it.

A server that breaks the contract (a bug, another program on the port, a hostile peer) must not
crash or stall the client: `problem(event)` names what is wrong in a few words, the client prints
that as one line and goes on with the next event. Keys the contract does not name are ignored,
as PROTOCOL.md asks ("events may gain fields").
"""

import math

# kind -> (test, how to say it)
KINDS = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "num": (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "id": (lambda v: isinstance(v, str | int) and not isinstance(v, bool), "an integer or a string"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "strs": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "list": (lambda v: isinstance(v, list), "a list"),
}

# type -> field -> kind; a field ending in "?" may be missing. "chats" and "rooms" are lists whose
# items are checked as a stored room event (a chat, edit, delete or react, by its type) or a rooms entry.
FIELDS = {
    "welcome": {"nick": "str", "epoch?": "str", "limits?": "dict", "resume?": "str", "resumed?": "bool",
                "rooms?": "strs", "auth?": "dict", "marks?": "dict"},
    # a chat in history is in its current state: `edited` (when), or `deleted` and no text; `reactions`
    "chat": {"room": "str", "from": "str", "text?": "str", "seq": "int", "ts?": "num", "edited?": "num",
             "deleted?": "bool", "reactions?": "dict"},
    "edit": {"room": "str", "seq": "int", "target": "int", "from": "str", "text?": "str", "ts?": "num"},
    "delete": {"room": "str", "seq": "int", "target": "int", "from": "str", "ts?": "num"},
    "react": {"room": "str", "seq": "int", "target": "int", "from": "str", "emoji": "str", "on": "bool",
              "ts?": "num"},
    "typing": {"room": "str", "nick": "str"},
    "mark": {"room": "str", "seq": "int"},
    "search": {"room": "str", "q": "str", "messages": "chats", "truncated?": "bool"},
    "dm": {"from": "str", "to": "str", "text": "str", "ts?": "num", "stored?": "bool"},
    "presence": {"room": "str", "event": "str", "nick": "str"},
    "nick": {"old": "str", "nick": "str"},
    "joined": {"room": "str", "members": "strs", "history": "chats", "truncated?": "bool", "topic?": "str",
               "mode?": "dict", "mark?": "int"},
    "left": {"room": "str"},
    "rooms": {"rooms": "rooms"},
    "who": {"room": "str", "members": "strs"},
    "history": {"room": "str", "messages": "chats"},
    "error": {"code": "str", "message?": "str", "retry_after?": "num"},
    "pong": {},
    "auth": {"nick": "str", "op?": "bool", "exp?": "num"},
    "topic": {"room": "str", "topic": "str", "by": "str"},
    "kick": {"room": "str", "nick": "str", "by": "str", "reason?": "str"},
    "ban": {"room": "str", "nick": "str", "by": "str", "duration": "int", "reason?": "str"},
    "mute": {"room": "str", "nick": "str", "by": "str", "duration": "int", "reason?": "str"},
    "mode": {"room": "str", "by": "str", "moderated": "bool", "slow": "int"},
}
ROOMS_ENTRY = {"room": "str", "members": "int"}
STORED = ("chat", "edit", "delete", "react")  # the room events a history list holds


def problem(event) -> str | None:
    """None when `event` (decoded JSON) has the shape PROTOCOL.md gives its type; otherwise what is
    wrong, e.g. "a chat event without 'seq'" or "an event of unknown type 'x'"."""
    if not isinstance(event, dict):
        return "a message that is not a JSON object"
    kind = event.get("type")
    if not isinstance(kind, str):
        return "an event without a string 'type'"
    if kind not in FIELDS:
        return f"an event of unknown type {kind!r}"
    return _check(event, {**FIELDS[kind], "id?": "id"}, f"{_a(kind)} {kind} event")


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _check(obj: dict, fields: dict, what: str) -> str | None:
    for spec, kind in fields.items():
        name = spec.rstrip("?")
        if name not in obj:
            if spec.endswith("?"):
                continue
            return f"{what} without {name!r}"
        value = obj[name]
        if kind in ("chats", "rooms"):
            if not isinstance(value, list):
                return f"{what} whose {name!r} is not a list"
            for item in value:
                found = _item(item, kind, name)
                if found:
                    return f"{what} with {found}"
            continue
        test, said = KINDS[kind]
        if not test(value):
            return f"{what} whose {name!r} is not {said}"
    return None


def _item(item, kind: str, name: str) -> str | None:
    """What is wrong with one item of a "chats" or "rooms" list, or None."""
    if not isinstance(item, dict):
        return f"an item in its {name!r} that is not an object"
    if kind == "rooms":
        return _check(item, ROOMS_ENTRY, f"an entry in its {name!r}")
    event_type = item.get("type", "chat")
    if event_type not in STORED:
        return f"an item of type {event_type!r} in its {name!r}"
    return _check(item, FIELDS[event_type], f"{_a(event_type)} {event_type} event in its {name!r}")
