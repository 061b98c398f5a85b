"""The per-room stream contract under random interleavings (PROTOCOL.md "What a client can rely on").

Random runs of chats, partial commits (also in the middle of a join's history read), joins with and
without `after`, leaves and disconnects, against the real Registry and an engine whose reads see
only committed events. For every member, `joined` plus the live events that follow must be exactly
the room's stream from its join's place on: history = the stored chats before that place, then
every chat and presence event after it, in order, until it leaves.
"""

import random

import pytest

from chatserver.config import Config
from chatserver.protocol import JOIN_HISTORY
from chatserver.rooms.client import TokenBucket
from chatserver.rooms.registry import ChatRequest, Registry
from tests.helpers import FakeConn, ManualEngine

ROOMS = ("r1", "r2")


class RecordingEngine(ManualEngine):
    """ManualEngine that also records each room's stream: every event it hands the hub, in order."""

    def __init__(self):
        super().__init__()
        self.streams = {room: [] for room in ROOMS}

    def start(self, hub) -> None:
        real = hub.deliver

        def deliver(items):
            for room, event, _meta in items:
                self.streams[room].append(event)
            real(items)

        hub.deliver = deliver
        super().start(hub)


def label(event: dict) -> tuple:
    if event["type"] == "chat":
        return ("chat", event["seq"], event["text"])
    return (event["type"], event.get("event"), event.get("nick"))


def episodes(events: list, room: str) -> list:
    """A client's view of one room: [(joined reply, [live events...])], one per join."""
    found, current = [], None
    for event in events:
        if event["type"] == "joined" and event["room"] == room:
            current = (event, [])
            found.append(current)
        elif event["type"] == "left" and event.get("room") == room:
            current = None
        elif current is not None and event.get("room") == room and event["type"] in ("chat", "presence"):
            current[1].append(event)
    return found


def check(engine: RecordingEngine, clients: list) -> None:
    for room in ROOMS:
        stream = engine.streams[room]
        for client, conn in clients:
            nick = client.nick
            joins = [i for i, e in enumerate(stream) if label(e) == ("presence", "join", nick)]
            leaves = [i for i, e in enumerate(stream) if label(e) == ("presence", "leave", nick)]
            for k, (joined, live) in enumerate(episodes(conn.events(), room)):
                place = joins[k]
                end = leaves[k] if k < len(leaves) else len(stream)
                last = max([e["seq"] for e in stream[:place] if e["type"] == "chat"], default=0)
                history = [label(e) for e in joined["history"]]
                expected_history = [label(e) for e in stream[:place] if e["type"] == "chat"]
                after = [a for r, a in conn.afters if r == room][k]
                if after is None:
                    expected_history = expected_history[-JOIN_HISTORY:]
                else:
                    expected_history = [h for h in expected_history if h[1] > after][:1000]
                assert history == expected_history, (nick, room, k, last)
                expected_live = [label(e) for e in stream[place + 1 : end]]
                assert [label(e) for e in live] == expected_live[: len(live)], (nick, room, k)
                if client.id in connected_ids(clients):  # still here: it got everything up to its end
                    assert len(live) == len(expected_live), (nick, room, k)


def connected_ids(clients):
    return {client.id for client, conn in clients if not conn.gone}


@pytest.mark.parametrize("seed", range(150))
def test_joined_plus_live_stream_is_the_room_stream(seed):
    """Whatever the interleaving, each member sees the room's stream from its join on, whole."""
    rng = random.Random(seed)
    engine = RecordingEngine()
    registry = Registry(engine, {**Config().limits(), "max_rooms": 32})
    clients = []

    def new_client():
        conn = FakeConn()
        conn.gone, conn.afters = False, []
        clients.append((registry.connect(conn, TokenBucket(10**6, 10**6)), conn))

    for _ in range(3):
        new_client()
    for _step in range(rng.randrange(20, 120)):
        client, conn = rng.choice(clients)
        room = rng.choice(ROOMS)
        op = rng.random()
        if conn.gone:
            continue
        if op < 0.35:
            if room in client.rooms:
                registry.chat_many(client, [ChatRequest(room, f"{client.nick}:{_step}")] * rng.randint(1, 3))
        elif op < 0.55:
            engine.commit(rng.randint(0, len(engine.uncommitted)))
        elif client.pending:
            continue  # its thread is waiting for its chats: it sends nothing else meanwhile
        elif op < 0.75:
            if room not in client.rooms:
                after = rng.choice([None, None, 0, rng.randint(0, 30)])
                engine.on_read = (lambda: engine.commit(rng.randint(0, len(engine.uncommitted)))) \
                    if rng.random() < 0.5 else None
                registry.join(client, room, after=after)
                conn.afters.append((room, after))
        elif op < 0.9:
            if room in client.rooms:
                registry.leave(client, room)
        elif op < 0.95:
            registry.disconnect(client)
            conn.gone = True
            new_client()
        else:
            new_client()
    engine.commit()
    check(engine, clients)
