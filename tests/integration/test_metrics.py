"""GET /metrics, /livez and /readyz on a real server: exact counts after a scripted session, who
may read the metrics, the SQLite and Redis figures, readiness while the engine fails."""

import sqlite3
import struct

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatserver.engines.sqlite import SqliteEngine
from tests.helpers import frame, http_exchange, upgrade_request, wait_for

pytestmark = pytest.mark.timeout(60)


class Http:
    """GETs on new connections to one server, counting the bytes both ways as the server does."""

    def __init__(self, port: int):
        self.port = port
        self.sent = self.received = 0
        self.last_response = b""

    def get(self, path: str, **headers: str) -> tuple[int, bytes]:
        """(status, body); `headers` as x_forwarded_for="..."."""
        extra = "".join(f"{name.replace('_', '-').title()}: {value}\r\n" for name, value in headers.items())
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{extra}\r\n".encode()
        self.last_response = http_exchange(self.port, request)
        self.sent += len(request)
        self.received += len(self.last_response)
        head, _, body = self.last_response.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def scrape(self) -> dict:
        status, body = self.get("/metrics")
        assert status == 200, body
        return parse(body)


def parse(body: bytes) -> dict:
    """{(sample name, ((label, value), ...)): value}, read with prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: dict, name: str, label: str) -> dict:
    """{label value: sample value} of one labelled series, leaving out zeros."""
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name and v}


def test_metrics_count_exactly_what_a_session_did(make_server, raw_clients):
    """After a scripted session (three clients, chats, errors, a rate-limit refusal, refused
    handshakes, closes with three codes), every counter says exactly what happened, bytes too."""
    server = make_server(rate_burst=10, rate_per_second=0.001)
    port = server.port
    a, b = raw_clients(port), raw_clients(port)
    a.send_json(type="nick", nick="alice")
    assert a.read_json()["type"] == "nick"
    b.send_json(type="join", room="lobby")
    assert b.read_json()["type"] == "joined"
    a.send_json(type="join", room="lobby")
    assert a.read_json()["type"] == "joined"
    assert b.read_json()["event"] == "join"
    for sender, other, text in ((a, b, "one"), (a, b, "two"), (b, a, "three")):
        sender.send_json(type="chat", room="lobby", text=text)
        assert sender.read_json()["text"] == other.read_json()["text"] == text
    a.send_json(type="chat", room="nowhere", text="x")
    assert a.read_json()["code"] == "not_in_room"
    a.send_json(type="ping")
    assert a.read_json()["type"] == "pong"
    a.send_json(type="shout")
    assert a.read_json()["code"] == "unknown_type"
    a.send(frame(0x1, b"{not json"))
    assert a.read_json()["code"] == "bad_json"
    b.send_json(type="leave", room="lobby")
    assert b.read_json()["type"] == "left"
    assert a.read_json()["event"] == "leave"
    c = raw_clients(port)
    for _ in range(11):  # one over the burst of 10, with next to no refill
        c.send_json(type="ping")
    assert [c.read_json().get("code") for _ in range(11)] == [None] * 10 + ["rate_limited"]
    for client, code in ((a, 1000), (b, 4001), (c, 1001)):
        client.send(frame(0x8, struct.pack("!H", code)))
        assert client.read_close(reply=False) == code
        assert client.wait_eof()
    refused = [raw_clients(port, handshake=False) for _ in range(3)]
    refused[0].send(upgrade_request(f"127.0.0.1:{port}").replace(b"Version: 13", b"Version: 12"))
    refused[1].send(upgrade_request("evil.example"))
    refused[2].send(f"GET /livez HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())  # plain HTTP: not refused
    for client in refused:
        assert client.wait_eof()
    assert [client.buf.split(b" ", 2)[1] for client in refused] == [b"426", b"400", b"200"]
    http = Http(port)
    wait_for(lambda: sum(by_label(http.scrape(), "roomchat_connections_closed_total", "code").values()) == 3)

    m = http.scrape()
    assert value(m, "roomchat_connections_opened_total") == 3
    assert value(m, "roomchat_connections_open") == 0
    assert value(m, "roomchat_rooms") == 0
    assert by_label(m, "roomchat_connections_closed_total", "code") == {"1000": 1, "4xxx": 1, "1001": 1}
    assert by_label(m, "roomchat_handshakes_refused_total", "status") == {"426": 1, "400": 1}
    assert by_label(m, "roomchat_messages_received_total", "type") == {
        "nick": 1, "join": 2, "chat": 4, "ping": 12, "leave": 1, "unknown": 1, "invalid": 1}
    assert by_label(m, "roomchat_errors_total", "code") == {
        "not_in_room": 1, "unknown_type": 1, "bad_json": 1, "rate_limited": 1}
    assert value(m, "roomchat_rate_limited_total") == 1
    # presence: bob joins, alice joins, bob leaves, alice's disconnect; three chats
    assert by_label(m, "roomchat_room_events_published_total", "type") == {"presence": 4, "chat": 3}
    # alice's join reaches bob; each chat both; bob's leave reaches alice; alice left alone
    assert value(m, "roomchat_room_event_deliveries_total") == 1 + 3 * 2 + 1
    assert value(m, "roomchat_fanout_seconds_count") == 7  # one hand-back per event here
    assert value(m, "roomchat_slow_consumer_drops_total") == 0
    clients = [a, b, c, *refused]
    # the last scrape's request was read before its answer was made, and its answer not yet sent
    assert value(m, "roomchat_received_bytes_total") == sum(x.sent_bytes for x in clients) + http.sent
    assert value(m, "roomchat_sent_bytes_total") == (sum(x.received_bytes for x in clients) + http.received
                                                     - len(http.last_response))


def test_metrics_served_to_loopback_trusted_proxies_or_the_token_only(make_server):
    """/metrics answers loopback and a trusted proxy itself; a client a trusted proxy forwards from
    elsewhere gets 403 (saying how to open it up) unless it presents the bearer token."""
    http = Http(make_server(trusted_proxy=("127.0.0.1",), metrics_token="s3cret-token").port)
    assert http.get("/metrics")[0] == 200  # the proxy (or anything on loopback) itself
    assert http.get("/metrics", x_forwarded_for="127.0.0.1")[0] == 200  # a client on the proxy's host
    status, body = http.get("/metrics", x_forwarded_for="203.0.113.9")
    assert status == 403 and b"--metrics-token" in body and b"roomchat_" not in body
    assert http.get("/metrics", x_forwarded_for="203.0.113.9", authorization="Bearer s3cret-token")[0] == 200
    assert http.get("/metrics", x_forwarded_for="203.0.113.9", authorization="Bearer s3cret-tokeN")[0] == 403
    assert http.get("/metrics", x_forwarded_for="203.0.113.9", authorization="Basic s3cret-token")[0] == 403
    untrusted = Http(make_server().port)  # no trusted proxy: a forged X-Forwarded-For changes nothing
    assert untrusted.get("/metrics", x_forwarded_for="203.0.113.9")[0] == 200


def test_livez_and_readyz_answer_plain_text(server):
    """/livez and /readyz answer 200 "ok" while the engine accepts writes; /healthz still works."""
    http = Http(server.port)
    assert http.get("/livez") == (200, b"ok\n")
    assert http.get("/readyz") == (200, b"ok\n")
    assert http.get("/healthz")[0] == 200


def test_sqlite_commits_are_measured(make_server, peers, tmp_path):
    """With the SQLite engine, the commit histograms count every stored chat event and commit."""
    server = make_server(db=str(tmp_path / "h.db"), rate_burst=100)
    peer = peers(server.url)
    peer.join("r")
    assert len(peer.chat_all("r", [f"m{n}" for n in range(20)])) == 20
    m = Http(server.port).scrape()
    assert value(m, "roomchat_history_commit_events_sum") == 20
    commits = value(m, "roomchat_history_commit_events_count")
    assert 1 <= commits <= 20 and value(m, "roomchat_history_commit_seconds_count") == commits
    assert value(m, "roomchat_history_commit_seconds_sum") > 0
    assert value(m, "roomchat_engine_errors_total") == 0


def test_readyz_is_503_with_the_reason_while_commits_fail(make_server, peers, tmp_path):
    """History file write-locked by another program: /readyz is 503 naming the reason, /livez stays
    200, failed commits count as engine errors, the refused chat as an `unavailable` error; ready
    again once a commit works."""
    path = tmp_path / "h.db"
    server = make_server(engine=SqliteEngine(str(path), busy_timeout=0.1, fail_after=0.3))
    http = Http(server.port)
    peer = peers(server.url)
    peer.join("r")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert peer.request(type="chat", room="r", text="stuck")["code"] == "unavailable"
        status, body = http.get("/readyz")
        assert status == 503 and body.startswith(b"not ready: history store failing:") and b"locked" in body
        assert http.get("/livez")[0] == 200
        m = http.scrape()
        assert value(m, "roomchat_engine_errors_total") >= 1
        assert value(m, "roomchat_errors_total", code="unavailable") == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_for(lambda: peer.request(type="chat", room="r", text="back")["type"] == "chat", 5)
    assert http.get("/readyz") == (200, b"ok\n")


def test_readyz_follows_redis_and_reconnects_are_counted(make_server, redis_server):
    """With Redis stopped /readyz is 503 "Redis unreachable" and engine errors count up; once it
    is back the subscription is re-established (counted) and /readyz is 200 again."""
    http = Http(make_server(redis=redis_server.url).port)
    assert http.get("/readyz")[0] == 200
    redis_server.stop()
    body = wait_for(lambda: (r := http.get("/readyz"))[0] == 503 and r, timeout=10)[1]
    assert b"Redis unreachable" in body
    assert value(http.scrape(), "roomchat_engine_errors_total") >= 1
    redis_server.start()
    wait_for(lambda: http.get("/readyz")[0] == 200, timeout=15, interval=0.2)
    assert value(http.scrape(), "roomchat_engine_reconnects_total") >= 1


def test_slow_consumer_drop_is_counted(make_server, connect, raw_clients):
    """A member that stops reading and is closed for it counts as one slow-consumer drop and one
    close with 1008."""
    server = make_server(max_outbox_bytes=32 * 1024, rate_burst=100000, rate_per_second=100000)
    stalled = raw_clients(server.port, rcvbuf=4096)
    stalled.send_json(type="join", room="r")
    sender = connect(server.url)
    sender.join("r")
    http = Http(server.port)
    for i in range(2000):
        sender.send(type="chat", room="r", text=f"{i:04d}" + "." * 1500)
        sender.recv_type("chat")
        if server.registry.stats()["connections"] == 1:
            break
    m = wait_for(lambda: (m := http.scrape()) and value(m, "roomchat_connections_closed_total", code="1008") and m)
    assert value(m, "roomchat_slow_consumer_drops_total") == 1
    assert by_label(m, "roomchat_connections_closed_total", "code") == {"1008": 1}
