"""Server events as one terminal line each: time, room, sender, text.

Everything from the network is shown as text, every field alike (nicks, rooms, member lists, error
messages, not only chat text): characters that could move the cursor, recolour the terminal,
reorder what is shown or hide in it appear as visible escapes (`\\x1b`, `\\u202e`):
- C0 and C1 controls and DEL (ECMA-48 control functions);
- bidirectional controls U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C (Unicode UAX #9);
- zero-width characters U+200B-U+200D, U+2060, U+FEFF; line and paragraph separators U+2028, U+2029;
- lone surrogates, which JSON can carry (`"\\ud800"`) but a terminal cannot print.
In chat and dm text a newline starts an indented line; in any other field it is `\\n`.
"""

import time

INDENT = "    "
INVISIBLE = frozenset(
    [0x061C, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2028, 0x2029, 0x2060, 0xFEFF,
     *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)


def clock(ts: float | None = None) -> str:
    """Local wall-clock time of an event; events without `ts` (presence), or with one the
    platform cannot convert, use now."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(time.time() if ts is None else ts))
    except (OverflowError, OSError, ValueError):
        return time.strftime("%H:%M:%S")


def _visible(ch: str) -> bool:
    code = ord(ch)
    return not (code < 0x20 or 0x7F <= code < 0xA0 or code in INVISIBLE or 0xD800 <= code < 0xE000)


def safe(value, multiline: bool = False) -> str:
    """`value` as text with every character listed above made visible, e.g. ESC as `\\x1b`.
    With `multiline`, a newline starts a new indented line instead."""
    out = []
    for ch in str(value):
        if multiline and ch == "\n":
            out.append("\n" + INDENT)
        elif _visible(ch):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def plural(count: int, noun: str) -> str:
    """`1 message`, `2 messages`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def chat(event: dict) -> str:
    """`HH:MM:SS [room] #SEQ <sender> text`: the seq names the message for /edit, /delete and /react.
    A chat from history is in its current state: `(edited)`, `(message deleted)`, its reactions."""
    head = f"{clock(event.get('ts'))} [{safe(event['room'])}] #{event['seq']} <{safe(event['from'])}>"
    if event.get("deleted") or not isinstance(event.get("text"), str):
        return f"{head} (message deleted)"
    text = safe(event["text"], multiline=True)
    edited = " (edited)" if event.get("edited") else ""
    return f"{head} {text}{edited}{reactions(event.get('reactions'))}"


def reactions(given) -> str:
    """`  [👍 ann, bob; 🎉 cy]`, or "" when there are none."""
    if not isinstance(given, dict):
        return ""
    parts = [f"{safe(emoji)} {', '.join(safe(n) for n in nicks)}" for emoji, nicks in given.items()
             if isinstance(nicks, list) and nicks]
    return f"  [{'; '.join(parts)}]" if parts else ""


def stored_event(event: dict) -> str:
    """An edit, delete or react of message #TARGET, as one line naming who did it."""
    kind, target, who = event["type"], event["target"], safe(event["from"])
    if kind == "edit":
        said = f"edited #{target}: {safe(event['text'], multiline=True)}" if isinstance(event.get("text"), str) \
            else f"edited #{target} (since deleted)"
    elif kind == "delete":
        said = f"deleted #{target}"
    else:
        said = f"reacted {safe(event['emoji'])} to #{target}" if event["on"] \
            else f"took back {safe(event['emoji'])} on #{target}"
    return f"{clock(event.get('ts'))} [{safe(event['room'])}] * {who} {said}"


def typing(event: dict) -> str:
    return f"{clock()} [{safe(event['room'])}] * {safe(event['nick'])} is typing…"


def dm(event: dict, mine: bool = False) -> str:
    """A direct message; one that waits (or waited) for its recipient (`stored`) says so: our copy
    `(stored: ...)`, theirs `(sent DAY TIME while you were away)`."""
    text = safe(event["text"], multiline=True)
    line = f"{clock(event.get('ts'))} [dm] <{safe(event['from'])}> -> {safe(event['to'])}: {text}"
    if event.get("stored") is True:
        line += f"  (stored: {safe(event['to'])} gets it on connecting)" if mine \
            else f"  (sent {day(event.get('ts'))} while you were away)"
    return line


def day(ts) -> str:
    """`2026-12-06 17:30`: a date and time, for events that may be from another day."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
    except (OverflowError, OSError, ValueError, TypeError):
        return time.strftime("%Y-%m-%d %H:%M")


def presence(event: dict) -> str:
    verb = {"join": "joined", "leave": "left"}.get(event["event"]) or safe(event["event"])
    return f"{clock()} [{safe(event['room'])}] * {safe(event['nick'])} {verb}"


def renamed(event: dict) -> str:
    return f"{clock()} * {safe(event['old'])} is now known as {safe(event['nick'])}"


def mode_words(mode: dict) -> str:
    """A room's mode in words: "moderated, slow mode 30 s", or "open"."""
    parts = ["moderated (only operators write)"] if mode.get("moderated") else []
    if mode.get("slow"):
        parts.append(f"slow mode {safe(mode['slow'])} s")
    return ", ".join(parts) or "open"


def moderation(event: dict) -> str:
    """A topic, kick, ban, mute or mode event: who did what in which room."""
    kind, nick = event["type"], safe(event.get("nick", ""))
    if kind == "mode":
        what = f"set the mode: {mode_words(event)}"
    elif kind == "topic":
        what = f"set the topic: {safe(event['topic'])}" if event["topic"] else "cleared the topic"
    elif kind != "kick" and not event.get("duration"):
        what = f"lifted the {kind} on {nick}"
    else:
        what = {"kick": "kicked", "ban": "banned", "mute": "muted"}[kind] + " " + nick
        what += f" for {event['duration']} s" if kind != "kick" else ""
        what += f" ({safe(event['reason'])})" if event.get("reason") else ""
    return f"{clock()} [{safe(event['room'])}] * {safe(event['by'])} {what}"


def notice(text: str) -> str:
    """A line from the client itself; any server field in `text` must have been through safe()."""
    return f"{clock()} * {text}"


def error(message: str) -> str:
    """A refusal or a problem; `message` may come from the server and is made safe here."""
    return f"{clock()} ! {safe(message)}"


def members(room: str, nicks: list, joined: bool = False) -> str:
    """`who` and `joined` replies: who is in the room."""
    listed = ", ".join(safe(n) for n in nicks) or "nobody"
    return notice(f"{'you joined ' if joined else ''}{safe(room)}: {plural(len(nicks), 'member')}: {listed}")


def rooms(entries: list) -> str:
    if not entries:
        return notice("no rooms have members yet")
    listed = ", ".join(f"{safe(e['room'])} ({safe(e['members'])})" for e in entries)
    return notice(f"rooms: {listed}")


def history(room: str, count: int) -> str:
    if not count:
        return notice(f"no messages yet in {safe(room)}")
    return notice(f"last {plural(count, 'message')} in {safe(room)}")
