"""Rates on a real server (issue 10, items 6 and 7): every frame costs, connections of one
address share a rate, and a DM to a recipient that is not keeping up is refused to its sender."""

import json
import time

from chatclient.schema import problems, validator
from tests.helpers import RawClient, frame


def read_until_close(client: RawClient) -> tuple[list, int]:
    """(every frame before the close frame as (opcode, payload), the close code)."""
    seen = []
    while True:
        opcode, payload = client.read_frame()
        if opcode == 0x8:
            return seen, int.from_bytes(payload[:2], "big")
        seen.append((opcode, payload))


def test_ping_flood_is_answered_to_the_burst_then_closed_1008(make_server, raw_clients):
    """Ping frames cost a token each: a flood gets pongs for the burst, none after, then 1008."""
    server = make_server(rate_burst=20, rate_per_second=1)
    client = raw_clients(server.port)
    client.send(frame(0x9, b"p") * 500)
    seen, code = read_until_close(client)
    assert code == 1008
    assert 20 <= len([op for op, _ in seen if op == 0xA]) <= 22


def test_unsolicited_pongs_cost_too(make_server, raw_clients):
    """Pong frames nobody asked for cost like any frame: a stream of them is closed 1008."""
    server = make_server(rate_burst=10, rate_per_second=1)
    client = raw_clients(server.port)
    client.send(frame(0xA, b"") * 200)
    assert read_until_close(client)[1] == 1008


def test_fragments_cost_one_token_each(make_server, raw_clients):
    """A message in 25 fragments costs 25 tokens: past a burst of 10 it is refused
    (rate_limited); one in 80 fragments is a flood and closes 1008."""
    server = make_server(rate_burst=10, rate_per_second=0.5)
    client = raw_clients(server.port)
    msg = json.dumps({"type": "ping", "id": 1}).encode()
    parts = [msg[i:i + 1] for i in range(25)] + [msg[25:]]
    client.send(frame(0x1, parts[0], fin=False) + b"".join(frame(0x0, p, fin=False) for p in parts[1:-1])
                + frame(0x0, parts[-1]))
    assert client.read_json()["code"] == "rate_limited"
    client.send(frame(0x1, b" ", fin=False) + frame(0x0, b" ", fin=False) * 78 + frame(0x0, msg))
    assert read_until_close(client)[1] == 1008


def test_connections_of_one_address_share_a_rate(make_server, connect):
    """Each connection stays within its own burst, yet together they are held to the address's
    share (address_rate_factor x the burst): the rest are refused with rate_limited, saying why."""
    server = make_server(rate_burst=5, rate_per_second=0.01, address_rate_factor=2)
    peers = [connect(server.url) for _ in range(4)]
    assert peers[0].welcome["limits"]["address_rate_burst"] == 10
    replies = []
    for peer in peers:
        for n in range(5):
            peer.send(type="ping", id=n)
        replies += [peer.recv() for _ in range(5)]
    assert len([r for r in replies if r["type"] == "pong"]) == 10
    refused = [r for r in replies if r["type"] == "error"]
    assert len(refused) == 10 and all(r["code"] == "rate_limited" and "your address" in r["message"] for r in refused)


def test_dm_fan_in_is_refused_to_the_senders_not_the_recipient(make_server, connect, raw_clients):
    """Twenty senders DMing one recipient that does not read: once half its outbox limit waits,
    their DMs are refused with recipient_busy; the recipient is never dropped, and when it reads
    it gets every DM that was acknowledged, in order per sender."""
    server = make_server(max_outbox_bytes=64 * 1024, rate_burst=1000, rate_per_second=1000)
    recipient = raw_clients(server.port, rcvbuf=4096)
    target = recipient.welcome["nick"]
    senders = [connect(server.url) for _ in range(20)]
    acked, busy = {}, []
    for round_ in range(30):
        for n, sender in enumerate(senders):
            sender.send(type="dm", to=target, text=f"{n}:{round_}:" + "d" * 1990)
        for n, sender in enumerate(senders):
            reply = sender.recv()
            if reply["type"] == "dm":
                acked.setdefault(n, []).append(reply["text"].split(":")[:2])
            else:
                busy.append(reply)
    assert busy and all(r["code"] == "recipient_busy" for r in busy)
    assert problems(validator("events"), busy[0]) == []
    conn = next(c for c in server.transport.housekeeper.connections() if c.client and c.client.nick == target)
    assert conn.state.value == "open" and conn.outbox.others_queued <= 64 * 1024
    got = {}
    for _ in range(sum(len(texts) for texts in acked.values())):
        event = recipient.read_json()
        got.setdefault(int(event["text"].split(":")[0]), []).append(event["text"].split(":")[:2])
    assert got == acked
    time.sleep(0.1)
    assert conn.state.value == "open"
