"""search: a room's chats by their words, newest first, paged and byte-bounded, on SQLite (FTS5),
memory (a scan), one Redis and a Redis Cluster (a scan of the room's stream); over real sockets.
Redis across processes, its quotas and paging inside a scan: test_redis_search.py."""

import sqlite3

import pytest
import redis

from chatserver.engines.sqlite import SqliteEngine
from tests.helpers import FAST_LIMITS, wait_for
from tests.services import RedisCluster

TEXTS = ["Deploy of build 41 failed", "lunch at noon?", "build 42 is green", "Café crème at the Bäckerei",
         "BUILDING the release notes", "o'brien said deploy-now", "builds are slow today"]


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """One 3-master Redis Cluster for this module's tests (emptied before each that uses it)."""
    service = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield service
    service.kill()


@pytest.fixture(params=["sqlite", "memory", "redis", "redis-cluster"])
def engine_options(request, tmp_path):
    """The server options of each engine: a history file, memory, one Redis, a Redis Cluster (asked
    for before make_server, so that a Redis outlives the servers on it)."""
    if request.param == "redis":
        return {"redis": request.getfixturevalue("redis_server").url}
    if request.param == "redis-cluster":
        service = request.getfixturevalue("redis_cluster")
        for port in service.ports:
            with redis.Redis(port=port) as client:
                client.flushall()
        return {"redis": service.urls[0]}
    return {"db": str(tmp_path / "history.db") if request.param == "sqlite" else ":memory:"}


def seeded(make_server, connect, db, texts=TEXTS, room="lobby", **overrides):
    """A server with options `db` (engine_options') and `texts` chatted into `room` by one member."""
    server = make_server(**db, **FAST_LIMITS, **overrides)
    peer = connect(server.url)
    peer.join(room)
    peer.chat_all(room, texts)
    return server, peer


def search(peer, **msg) -> dict:
    return peer.request(type="search", **{"room": "lobby", **msg})


def test_search_finds_every_word_as_a_prefix_newest_first(engine_options, make_server, connect):
    """All words must match, each as the start of a word, case-insensitively, newest first."""
    _server, peer = seeded(make_server, connect, engine_options)
    reply = search(peer, q="BUILD", id=7)
    assert reply["type"] == "search" and reply["room"] == "lobby" and reply["q"] == "BUILD" and reply["id"] == 7
    assert [m["seq"] for m in reply["messages"]] == [7, 5, 3, 1]
    assert reply["messages"][-1] == {**reply["messages"][-1], "type": "chat", "from": peer.nick,
                                     "text": "Deploy of build 41 failed"}
    assert [m["seq"] for m in search(peer, q="build gre")["messages"]] == [3]
    assert search(peer, q="build lunch")["messages"] == []
    assert "truncated" not in search(peer, q="build")


def test_search_ignores_case_diacritics_and_punctuation(engine_options, make_server, connect):
    """Diacritics and case don't matter; punctuation only separates words; the user's text is never FTS5 syntax."""
    _server, peer = seeded(make_server, connect, engine_options)
    assert [m["seq"] for m in search(peer, q="cafe CREME")["messages"]] == [4]
    assert [m["seq"] for m in search(peer, q="bäck")["messages"]] == [4]
    assert [m["seq"] for m in search(peer, q="deploy")["messages"]] == [6, 1]
    assert [m["seq"] for m in search(peer, q='brien" OR "lunch')["messages"]] == []
    assert [m["seq"] for m in search(peer, q="NEAR(lunch noon) *")["messages"]] == []
    assert [m["seq"] for m in search(peer, q="lunch AND noon")["messages"]] == []
    assert [m["seq"] for m in search(peer, q="noon lunch")["messages"]] == [2]
    assert [m["seq"] for m in search(peer, q="-noon")["messages"]] == [2]
    assert [m["seq"] for m in search(peer, q="o")["messages"]] == [6]  # one character: a whole word
    assert [m["seq"] for m in search(peer, q="b 4")["messages"]] == []


def test_search_pages_with_before_and_limit(engine_options, make_server, connect):
    """`limit` cuts a page; `before` (the last seq of the previous page) gives the next one."""
    _server, peer = seeded(make_server, connect, engine_options)
    first = search(peer, q="build", limit=2)["messages"]
    assert [m["seq"] for m in first] == [7, 5]
    second = search(peer, q="build", limit=2, before=first[-1]["seq"])["messages"]
    assert [m["seq"] for m in second] == [3, 1]
    assert search(peer, q="build", before=1)["messages"] == []


def test_search_is_byte_bounded_like_history(engine_options, make_server, connect):
    """A page stays within max_reply_bytes and says truncated; the newest that fit are kept."""
    texts = [f"needle {i} " + "x" * 1500 for i in range(40)]
    _server, peer = seeded(make_server, connect, engine_options, texts, max_reply_bytes=32 * 1024)
    peer.ws.settimeout(10)
    reply = search(peer, q="needle", limit=200)
    assert reply["truncated"] is True
    seqs = [m["seq"] for m in reply["messages"]]
    assert seqs == list(range(40, 40 - len(seqs), -1)) and 10 <= len(seqs) < 22


def test_search_is_for_members_and_checks_its_fields(engine_options, make_server, connect):
    """Not a member: not_in_room; q empty, wordless or over 200 characters, or a bad limit: bad_message."""
    server, peer = seeded(make_server, connect, engine_options)
    assert search(peer, room="elsewhere", q="build")["code"] == "not_in_room"
    for q in ("", "x" * 201, "?!", 5):
        reply = search(peer, q=q)
        assert (reply["type"], reply["code"]) == ("error", "bad_message"), q
    assert search(peer, q="x" * 200)["messages"] == []
    assert search(peer, q="build", limit=0)["code"] == "bad_message"
    assert search(peer, q="build", before=-1)["code"] == "bad_message"
    other = connect(server.url)
    assert search(other, q="build")["code"] == "not_in_room"


def test_search_survives_a_restart_and_indexes_an_older_file(make_server, connect, tmp_path):
    """SQLite: the index is in the file (found after a restart); a file from before search gets indexed at open."""
    path = str(tmp_path / "history.db")
    server, _peer = seeded(make_server, connect, {"db": path})
    server.shutdown(timeout=0.5)
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE search; DROP TABLE search_ids; DROP TRIGGER IF EXISTS search_insert;"
                       " DROP TRIGGER IF EXISTS search_update; DROP TRIGGER IF EXISTS search_delete;")
    conn.close()
    again = make_server(db=path, **FAST_LIMITS)
    peer = connect(again.url)
    peer.join("lobby")
    assert [m["seq"] for m in search(peer, q="build")["messages"]] == [7, 5, 3, 1]
    again.shutdown(timeout=0.5)
    conn = sqlite3.connect(path)
    try:  # a clean stop: every chat indexed, so the next open has nothing to catch up on
        assert conn.execute("SELECT value FROM meta WHERE key = 'search_clean'").fetchone() == ("1",)
    finally:
        conn.close()
    third = make_server(db=path, **FAST_LIMITS)
    peer = connect(third.url)
    peer.join("lobby")
    assert [m["seq"] for m in search(peer, q="green")["messages"]] == [3]


def test_search_follows_edits_deletes_and_pruning_of_the_events_table(tmp_path):
    """SQLite: chat rows a stop left unindexed (no `search_clean` mark, as after a crash between a
    commit and its index) are indexed at open; then the triggers: an UPDATE of a chat's text is
    found by its new words only, text '' (deleted) and DELETEd (pruned) rows never, and a room's
    words stay in that room."""
    path = str(tmp_path / "history.db")
    SqliteEngine(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    rows = [("lobby", 1, "ann", "the old plan", 1.0), ("lobby", 2, "bob", "plan b", 2.0),
            ("lobby", 3, "cy", "secret plan", 3.0), ("other", 1, "dee", "plan elsewhere", 4.0)]
    conn.executemany("INSERT INTO rooms (room, last_seq) VALUES (?, ?)", [("lobby", 3), ("other", 1)])
    conn.executemany("INSERT INTO events (room, seq, sender, text, ts) VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute("DELETE FROM meta WHERE key = 'search_clean'")  # (a clean close's mark: none after this one)
    engine = SqliteEngine(path)
    try:
        assert [e["seq"] for e in engine.search("lobby", ["plan"])] == [3, 2, 1]
        conn.execute("UPDATE events SET text = 'the new idea' WHERE room = 'lobby' AND seq = 1")
        assert [e["seq"] for e in engine.search("lobby", ["plan"])] == [3, 2]
        assert [(e["seq"], e["text"]) for e in engine.search("lobby", ["idea"])] == [(1, "the new idea")]
        conn.execute("UPDATE events SET text = '' WHERE room = 'lobby' AND seq = 3")
        assert [e["seq"] for e in engine.search("lobby", ["secret"])] == []
        conn.execute("DELETE FROM events WHERE room = 'lobby' AND seq = 2")
        assert [e["seq"] for e in engine.search("lobby", ["plan"])] == []
        assert [e["seq"] for e in engine.search("other", ["plan"])] == [1]
        assert conn.execute("SELECT count(*) FROM search_ids").fetchone()[0] == 3
        conn.execute("INSERT INTO search(search) VALUES ('integrity-check')")  # raises when the index is wrong
    finally:
        conn.close()
        engine.close()


def test_search_index_counts_in_the_byte_quota(make_server, connect, tmp_path):
    """With --history-max-bytes the history file (its search index included) stays within the quota."""
    import os

    path = str(tmp_path / "history.db")
    quota = 1024 * 1024
    server = make_server(db=path, history_max_bytes=quota, **FAST_LIMITS)
    peer = connect(server.url)
    peer.join("lobby")
    for batch in range(30):
        peer.chat_all("lobby", [f"word{batch}x{i} alpha beta gamma delta " + "lorem ipsum " * 10 for i in range(100)])
    wait_for(lambda: os.path.getsize(path) + os.path.getsize(path + "-wal") <= quota * 1.25, timeout=30)
    found = search(peer, q="word29x99")["messages"]
    assert [m["seq"] for m in found] == [3000]
    assert search(peer, q="word0x1")["messages"] == []  # pruned long ago


def test_a_deleted_chats_words_leave_the_index_pages(make_server, connect, tmp_path):
    """SQLite: once a chat's text is emptied (a delete), its words are merged out of the index's
    pages by the writer's retention passes, not only out of the answers."""
    path = str(tmp_path / "history.db")
    texts = [f"filler number{i}" for i in range(300)] + ["zqxjvword here"]
    _server, peer = seeded(make_server, connect, {"db": path}, texts)
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        def in_index(word: bytes) -> int:
            return conn.execute("SELECT count(*) FROM search_data WHERE instr(block, ?) > 0", (word,)).fetchone()[0]

        assert [m["seq"] for m in search(peer, q="zqxjvword")["messages"]] == [301]  # indexed by now
        assert in_index(b"jvword") == 1
        conn.execute("UPDATE events SET text = '' WHERE room = 'lobby' AND seq = 301")
        assert search(peer, q="zqxjvword")["messages"] == []
        wait_for(lambda: in_index(b"jvword") == 0, timeout=30)
        wait_for(lambda: conn.execute("SELECT count(*) FROM meta WHERE key = 'search_purge'").fetchone()[0] == 0,
                 timeout=30)
        assert [m["seq"] for m in search(peer, q="number150")["messages"]] == [151]
        conn.execute("INSERT INTO search(search) VALUES ('integrity-check')")
    finally:
        conn.close()


def test_search_finds_current_texts_after_edits_and_deletes(engine_options, make_server, connect):
    """An edited chat is found by its new words only (and says `edited`), a deleted one never;
    edits' own texts are not searched."""
    _server, peer = seeded(make_server, connect, engine_options, ["deploy the old plan", "lunch plan", "secret plan"])
    peer.request(type="edit", room="lobby", seq=1, text="deploy the new idea")
    peer.request(type="delete", room="lobby", seq=3)
    peer.request(type="react", room="lobby", seq=2, emoji="👍")
    found = search(peer, q="plan")["messages"]
    assert [m["seq"] for m in found] == [2]
    assert found[0]["reactions"] == {"👍": [peer.nick]}
    (edited,) = search(peer, q="idea")["messages"]
    assert (edited["seq"], edited["text"]) == (1, "deploy the new idea") and edited["edited"] > 0
    assert search(peer, q="secret")["messages"] == [] and search(peer, q="old")["messages"] == []
    assert [m["seq"] for m in search(peer, q="deploy")["messages"]] == [1]
