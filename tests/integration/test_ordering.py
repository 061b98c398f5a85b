"""Per-room order under concurrency: many senders in many threads, every member sees one order."""

import json
import threading

import pytest
import websocket

SENDERS, RECEIVERS, MESSAGES = 4, 3, 2000


def collect(ws, want: int, out: list) -> None:
    """Read until `want` chat events arrived; keep (seq, from, text)."""
    while len(out) < want:
        event = json.loads(ws.recv())
        if event["type"] == "chat":
            out.append((event["seq"], event["from"], event["text"]))


@pytest.mark.timeout(120)
def test_four_senders_three_receivers_same_order_no_gaps(make_server):
    """4 senders x 2000 messages: every member (senders too) sees seq 1..8000 in order, identically,
    and each sender's own messages appear in the order it sent them."""
    server = make_server(rate_burst=1_000_000, rate_per_second=1_000_000, max_outbox_bytes=64 * 1024 * 1024)
    total = SENDERS * MESSAGES
    members = []
    for _ in range(SENDERS + RECEIVERS):
        ws = websocket.create_connection(server.url, timeout=30)
        json.loads(ws.recv())
        ws.send(json.dumps({"type": "join", "room": "race"}))
        members.append(ws)
    for ws in members:  # wait until every join is answered, so nobody misses the first message
        while json.loads(ws.recv())["type"] != "joined":
            pass
    seen = [[] for _ in members]
    readers = [threading.Thread(target=collect, args=(ws, total, out)) for ws, out in zip(members, seen, strict=True)]
    for t in readers:
        t.start()

    def send_all(ws, tag):
        for i in range(MESSAGES):
            ws.send(json.dumps({"type": "chat", "room": "race", "text": f"{tag}:{i}"}))

    senders = [threading.Thread(target=send_all, args=(ws, n)) for n, ws in enumerate(members[:SENDERS])]
    for t in senders:
        t.start()
    for t in senders + readers:
        t.join(100)
    reference = seen[0]
    assert [seq for seq, _, _ in reference] == list(range(1, total + 1))
    for other in seen[1:]:
        assert other == reference
    for tag in range(SENDERS):
        mine = [int(text.split(":")[1]) for _, _, text in reference if text.startswith(f"{tag}:")]
        assert mine == list(range(MESSAGES))
    for ws in members:
        ws.close()
