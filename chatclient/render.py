"""Server events as one terminal line each: time, room, sender, text.

Text from the network is shown as text: control characters (which could move the cursor or
recolour the terminal) appear as visible escapes, and a multi-line message is indented.
"""

import time

INDENT = "    "


def clock(ts: float | None = None) -> str:
    """Local wall-clock time of an event; events without `ts` (presence) use now."""
    return time.strftime("%H:%M:%S", time.localtime(time.time() if ts is None else ts))


def safe(text) -> str:
    """`text` with every control character but newline made visible, e.g. ESC as \\x1b."""
    text = str(text)
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\n":
            out.append("\n" + INDENT)
        elif code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def chat(event: dict) -> str:
    return f"{clock(event.get('ts'))} [{safe(event['room'])}] <{safe(event['from'])}> {safe(event['text'])}"


def dm(event: dict) -> str:
    return f"{clock(event.get('ts'))} [dm] <{safe(event['from'])}> -> {safe(event['to'])}: {safe(event['text'])}"


def presence(event: dict) -> str:
    verb = {"join": "joined", "leave": "left"}.get(event.get("event"), safe(event.get("event")))
    return f"{clock()} [{safe(event['room'])}] * {safe(event['nick'])} {verb}"


def renamed(event: dict) -> str:
    return f"{clock()} * {safe(event['old'])} is now known as {safe(event['nick'])}"


def moderation(event: dict) -> str:
    """A topic, kick, ban or mute event: who did what in which room."""
    kind, nick = event["type"], safe(event.get("nick", ""))
    if kind == "topic":
        what = f"set the topic: {safe(event['topic'])}" if event["topic"] else "cleared the topic"
    elif kind != "kick" and not event.get("duration"):
        what = f"lifted the {kind} on {nick}"
    else:
        what = {"kick": "kicked", "ban": "banned", "mute": "muted"}[kind] + " " + nick
        what += f" for {event['duration']} s" if kind != "kick" else ""
        what += f" ({safe(event['reason'])})" if event.get("reason") else ""
    return f"{clock()} [{safe(event['room'])}] * {safe(event['by'])} {what}"


def notice(text: str) -> str:
    """A line from the client itself (not from another user)."""
    return f"{clock()} * {text}"


def error(message: str) -> str:
    return f"{clock()} ! {safe(message)}"


def members(room: str, nicks: list, joined: bool = False) -> str:
    """`who` and `joined` replies: who is in the room."""
    listed = ", ".join(safe(n) for n in nicks) or "nobody"
    count = f"{len(nicks)} {'member' if len(nicks) == 1 else 'members'}"
    return notice(f"{'you joined ' if joined else ''}{safe(room)}: {count}: {listed}")


def rooms(entries: list) -> str:
    if not entries:
        return notice("no rooms have members yet")
    listed = ", ".join(f"{safe(e['room'])} ({e['members']})" for e in entries)
    return notice(f"rooms: {listed}")
