"""Transcripts: a room's history, moderation events included, as Markdown, JSON lines or one HTML page.

    python roomchat.py export --room class [--since 2026-12-01] [--format md|jsonl|html] [--db FILE]

reads the SQLite history file (read-only, beside a running server: WAL lets it), or with
`--redis URL` the room's streams in Redis, and writes to stdout. The events are those the engine
keeps (engines/base.py `transcript`): the chats within `--history-per-room`, in their current
state as `history` gives them (the last edit's text, `edited`, `reactions`; deleted ones left
out), and the topic, kick, ban, mute and mode events placed among them. Times are UTC. `jsonl`
is one event per line as `history` gives it (plus `ts` on moderation events); `md` and `html`
say each event in words (a chat: "(edited)" and its reactions after its text), and `html` is
one self-contained page (its style inline, no script, nothing fetched) with every text escaped.
"""

import argparse
import html
import os
import re
import sys
from datetime import UTC, datetime

import orjson

from chatserver.protocol import ROOM_RE

FORMATS = ("md", "jsonl", "html")
_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|~!])")


def parse_since(text: str) -> float:
    """"2026-12-01" (midnight UTC) or an ISO 8601 time ("2026-12-01T09:30", UTC unless it says) ->
    Unix time. Raises ValueError."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _for(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def describe(event: dict) -> str:
    """A moderation event in words (plain text, not escaped): "ann muted bob for 10 minutes: spam"."""
    kind, by = event["type"], event.get("by", "?")
    reason = f": {event['reason']}" if event.get("reason") else ""
    if kind == "topic":
        return f'{by} set the topic to "{event["topic"]}"' if event["topic"] else f"{by} cleared the topic"
    if kind == "kick":
        return f"{by} removed {event['nick']} from the room{reason}"
    if kind in ("ban", "mute"):
        if event["duration"] == 0:
            return f"{by} lifted the {kind} on {event['nick']}{reason}"
        return f"{by} {kind}{'ned' if kind == 'ban' else 'd'} {event['nick']} for {_for(event['duration'])}{reason}"
    if kind == "mode":
        slow = f"slow mode {_for(event['slow'])}" if event["slow"] else "slow mode off"
        who = "only operators may chat" if event["moderated"] else "everyone may chat"
        return f"{by} set the room's mode: {who}, {slow}"
    return f"{kind} event"


def reactions_said(chat: dict) -> str:
    """A chat's reactions in words (plain text, not escaped): "👍 ann, bob; 🎉 cy", "" for none."""
    return "; ".join(f"{emoji} {', '.join(nicks)}" for emoji, nicks in chat.get("reactions", {}).items())


def render(room: str, events: list, fmt: str) -> str:
    """The transcript of `room` in `fmt` (FORMATS) from its events in stream order."""
    if fmt == "jsonl":
        return "".join(orjson.dumps(event).decode() + "\n" for event in events)
    if fmt == "md":
        return _markdown(room, events)
    return _html(room, events)


def _markdown(room: str, events: list) -> str:
    def esc(text: str) -> str:
        return _MARKDOWN.sub(r"\\\1", text).replace("\n", "  \n    ")

    lines = [f"# Transcript of {esc(room)}", "", f"{len(events)} events; times in UTC.", ""]
    for event in events:
        stamp = _when(event.get("ts", 0))
        if event["type"] == "chat":
            said = reactions_said(event)
            lines.append(f"- {stamp} **{esc(event['from'])}**: {esc(event['text'])}"
                         + (" _(edited)_" if event.get("edited") else "") + (f" {esc(f'[{said}]')}" if said else ""))
        else:
            lines.append(f"- {stamp} _{esc(describe(event))}_")
    return "\n".join(lines) + "\n"


_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem;color:#1d2330}
h1{font-size:1.4rem}ol{list-style:none;padding:0}li{padding:.2rem 0;white-space:pre-wrap;overflow-wrap:anywhere}
time{color:#6b7280;font-size:.8rem;margin-right:.5rem}b{margin-right:.4rem}li.notice{color:#6b4e00;font-style:italic}
small{color:#6b7280}.reactions{display:block;font-size:.85rem;color:#4b5563;margin-left:1rem}"""


def _html(room: str, events: list) -> str:
    esc = html.escape  # quotes too: nothing a chat says can become markup or leave an attribute
    items = []
    for event in events:
        stamp = _when(event.get("ts", 0))
        head = f'<time datetime="{esc(stamp)}Z">{esc(stamp)}</time>'
        if event["type"] == "chat":
            said = reactions_said(event)
            items.append(f"<li>{head}<b>{esc(event['from'])}</b>{esc(event['text'])}"
                         + (" <small>(edited)</small>" if event.get("edited") else "")
                         + (f'<span class="reactions">{esc(said)}</span>' if said else "") + "</li>")
        else:
            items.append(f'<li class="notice">{head}{esc(describe(event))}</li>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>Transcript of {esc(room)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>Transcript of {esc(room)}</h1><p>{len(events)} events; times in UTC.</p>\n<ol>\n"
        + "\n".join(items) + "\n</ol></body></html>\n"
    )


def export_main(argv, environ=None, out=None) -> int:
    """`python roomchat.py export --room R [--since DATE] [--format md|jsonl|html] [--db FILE | --redis URL]`."""
    environ = os.environ if environ is None else environ
    from chatserver.config import env_name
    from chatserver.engines.base import EngineError
    from chatserver.engines.sqlite_file import transcript_of_file

    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="roomchat.py export", description="Write a room's transcript to stdout.")
    parser.add_argument("--room", required=True, help="the room")
    parser.add_argument("--since", help="only events from this day or time on (2026-12-01, 2026-12-01T09:30; UTC)")
    parser.add_argument("--format", choices=FORMATS, default="md", help="md (default), jsonl or html")
    parser.add_argument("--db", help=f"the server's SQLite history file [{env_name('db')}; default roomchat.db]")
    parser.add_argument("--redis", help=f"the server's Redis, redis://HOST:PORT/DB [{env_name('redis')}]")
    args = parser.parse_args(argv)
    if not ROOM_RE.fullmatch(args.room):
        parser.error(f"{args.room!r} is not a room name")
    try:
        since = 0.0 if args.since is None else parse_since(args.since)
    except ValueError:
        parser.error(f"--since {args.since!r} is not a date (2026-12-01) or time (2026-12-01T09:30)")
    redis_url = args.redis or (None if args.db else environ.get(env_name("redis")))
    db = args.db or environ.get(env_name("db")) or "roomchat.db"
    if not redis_url and db == ":memory:":
        parser.error("a :memory: history lives only inside its server; export needs --db FILE")
    try:
        if redis_url:
            from chatserver.engines.redis import transcript_of_redis  # only Redis users need redis-py

            events = transcript_of_redis(redis_url, args.room, since)
        else:
            events = transcript_of_file(db, args.room, since)
    except EngineError as exc:  # StoreError is one
        print(f"roomchat export: {exc}", file=sys.stderr)
        return 2
    out.write(render(args.room, events, args.format))
    out.flush()
    return 0
