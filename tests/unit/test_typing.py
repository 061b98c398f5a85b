"""Typing notices' rate (rooms/typing.py), with a clock of the test's own: pure logic, no sockets."""

from chatserver.protocol import TYPING_INTERVAL
from chatserver.rooms.typing import Typing


class _Client:
    """What Typing reads of a client."""

    def __init__(self):
        self.typed = {}


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_typing_is_due_once_per_interval_per_room():
    """Typing.due lets one notice per client and room through every TYPING_INTERVAL seconds,
    rooms apart; with max_members 0 none."""
    clock = _Clock()
    typing, client = Typing(None, 100, clock), _Client()
    assert typing.due(client, "a") and typing.due(client, "b")
    clock.now += TYPING_INTERVAL - 0.01
    assert not typing.due(client, "a")
    clock.now += 0.01
    assert typing.due(client, "a") and not typing.due(client, "a")
    assert not Typing(None, 0, clock).due(_Client(), "a")


def test_typing_remembers_only_recent_rooms():
    """A client's typing times stay bounded: past 64 rooms, those older than the interval are forgotten."""
    clock = _Clock()
    typing, client = Typing(None, 100, clock), _Client()
    for n in range(200):
        typing.due(client, f"r{n}")
        clock.now += TYPING_INTERVAL
    assert len(client.typed) <= 65
