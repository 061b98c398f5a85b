"""The JSON Schema files themselves: valid draft 2020-12, strict on field types, open to new event keys."""

import json

import pytest
from jsonschema import Draft202012Validator

from chatclient.schema import SCHEMA_DIR, problems, validator

CHAT = {"type": "chat", "room": "lobby", "from": "alice", "text": "hi", "seq": 42, "ts": 1764150000.123}


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.json")), ids=lambda p: p.name)
def test_schema_file_is_valid_draft_2020_12(path):
    """Every file in schema/ is itself a valid draft 2020-12 schema."""
    schema = json.loads(path.read_text("utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(("change", "field"), [
    ({"seq": "42"}, "seq"), ({"seq": 0}, "seq"), ({"ts": "now"}, "ts"), ({"text": ""}, "text"),
    ({"room": "a room"}, "room"), ({"from": 7}, "from"), ({"id": True}, "id"), ({"id": "x" * 65}, "id"),
])
def test_event_with_a_wrong_field_is_refused(change, field):
    """A chat event with one field of the wrong type or out of range fails, naming that field."""
    found = problems(validator("events"), {**CHAT, **change})
    assert found and all(p.startswith(f"{field}:") for p in found), found


def test_event_missing_a_required_field_is_refused():
    """Leaving out a required field of an event fails."""
    event = {k: v for k, v in CHAT.items() if k != "seq"}
    assert problems(validator("events"), event) == ["'seq' is a required property"]


def test_event_with_extra_keys_is_valid():
    """Clients ignore keys they do not know, so events may carry more fields, nested ones too."""
    welcome = {"type": "welcome", "nick": "guest-1", "server": "roomchat/1.0.0", "epoch": "ab", "resume": "t",
               "limits": {"max_message_bytes": 1, "max_text_chars": 1, "max_rooms": 1, "rate_burst": 1,
                          "rate_per_second": 0.5, "max_reply_bytes": 262144}}
    assert problems(validator("events"), welcome) == []
    assert problems(validator("events"), {**CHAT, "pinned": False}) == []


def test_unknown_types_and_error_codes_are_refused():
    """A type or an error code the protocol does not define fails."""
    assert problems(validator("events"), {"type": "shout"})
    assert problems(validator("requests"), {"type": "shout"})
    assert problems(validator("events"), {"type": "error", "code": "oops", "message": "x"})


def test_request_with_unknown_key_is_refused():
    """A request key the server does not read is refused, so a client's typo shows."""
    assert problems(validator("requests"), {"type": "chat", "room": "lobby", "txt": "hi"}) == [
        "'text' is a required property", "Unevaluated properties are not allowed ('txt' was unexpected)"]


@pytest.mark.parametrize("request_", [
    {"type": "join", "room": "lobby\n"}, {"type": "nick", "nick": "x" * 33},
    {"type": "history", "room": "r", "limit": 0}, {"type": "history", "room": "r", "limit": 201},
    {"type": "join", "room": "r", "after": -1},
    {"type": "join", "room": "r", "after": 2**63}, {"type": "dm", "to": "bob", "text": ""},
])
def test_request_out_of_range_is_refused(request_):
    """Requests outside PROTOCOL.md's field rules fail (a final newline, too long, out of range, empty)."""
    assert problems(validator("requests"), request_)
