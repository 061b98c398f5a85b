"""The chat page's copies of protocol facts, pinned to their sources without a browser: its table of
events (web/static/connection.js HANDLERS and IGNORED) to schema/events.json, and its nick and room
rules (web/static/nick.js, state.js) to chatserver/protocol.py."""

import json
import re

from chatserver import protocol
from tests.helpers import ROOT

STATIC = ROOT / "web" / "static"
# Types the page already handles whose server side is built on another branch of issue 19; once the
# schema lists them this set is empty and the check below is an exact match.
SCHEMA_TYPES = set(json.loads((ROOT / "schema" / "events.json").read_text())["properties"]["type"]["enum"])
PENDING = {"mode"} - SCHEMA_TYPES


def js_table(source: str, name: str) -> set[str]:
    """The keys of `const NAME = { key: ..., }` in `source`, one key per line."""
    body = re.search(rf"^const {name} = \{{\n(.*?)^\}};", source, re.S | re.M)
    assert body, f"no table {name} in connection.js"
    return set(re.findall(r"^  (\w+):", body.group(1), re.M))


def test_the_page_handles_or_ignores_every_event_type_once():
    """Every event type in schema/events.json is in the page's HANDLERS or IGNORED table, never in
    both, and the tables name no type the schema lacks."""
    source = (STATIC / "connection.js").read_text()
    handled, ignored = js_table(source, "HANDLERS"), js_table(source, "IGNORED")
    assert handled and ignored and not handled & ignored
    assert handled | ignored == SCHEMA_TYPES | PENDING


def test_the_page_has_the_servers_nick_and_room_rules():
    """The page's NICK_RE and ROOM_RE are the server's patterns, anchored."""
    nick = re.search(r"export const NICK_RE = /\^(.*)\$/;", (STATIC / "nick.js").read_text())
    room = re.search(r"export const ROOM_RE = /\^(.*)\$/;", (STATIC / "state.js").read_text())
    assert nick and nick.group(1) == protocol.NICK_RE.pattern
    assert room and room.group(1) == protocol.ROOM_RE.pattern
