"""Durable history end to end: restarts, resume with `after`, kill -9, and files roomchat cannot use."""

import contextlib
import http.client
import json
import sqlite3
import threading
import time

import pytest
import websocket

from chatclient.schema import problems, validator
from chatserver.engines.sqlite import SqliteEngine
from tests.helpers import Peer, ServerProcess, no_unclosed_resources, roomchat_env, run_to_exit, wait_for


def chat(peer: Peer, room: str, text: str) -> dict:
    """Send one chat and return its echo (the sender's acknowledgement)."""
    peer.send(type="chat", room=room, text=text, id=text)
    echo = peer.recv_type("chat")
    assert echo["id"] == text, echo
    return echo


def read_history(peer: Peer, room: str) -> list:
    """Every stored event of a room, paging forward 200 at a time."""
    events, after = [], 0
    while True:
        peer.send(type="history", room=room, after=after, limit=200)
        page = peer.recv_type("history")["messages"]
        if not page:
            return events
        events.extend(page)
        after = page[-1]["seq"]


# -- in-process restarts -------------------------------------------------------------------------


def test_restart_keeps_history_and_seqs(make_server, peers, tmp_path):
    """After a graceful restart on the same file: same epoch, history intact, seqs continue,
    and a client rejoining with `after` gets exactly what it missed."""
    db = str(tmp_path / "chat.db")
    first = make_server(db=db)
    alice, bob = peers(first.url), peers(first.url)
    epoch = alice.welcome["epoch"]
    alice.join("lobby")
    bob.join("lobby")
    for n in range(5):
        chat(alice, "lobby", f"before {n}")
    seen = [bob.recv_type("chat") for _ in range(5)]
    assert [e["seq"] for e in seen] == [1, 2, 3, 4, 5]
    bob.close()
    for n in range(3):
        chat(alice, "lobby", f"missed {n}")
    alice.close()
    first.shutdown()

    second = make_server(db=db)
    bob = peers(second.url)
    assert bob.welcome["epoch"] == epoch
    joined = bob.join("lobby", after=seen[-1]["seq"])
    assert [(e["seq"], e["text"]) for e in joined["history"]] == [(6, "missed 0"), (7, "missed 1"), (8, "missed 2")]
    assert "truncated" not in joined
    assert chat(bob, "lobby", "after restart")["seq"] == 9
    history = read_history(bob, "lobby")
    assert [e["seq"] for e in history] == list(range(1, 10))
    assert history[:5] == [{k: v for k, v in e.items() if k != "id"} for e in seen]
    carol = peers(second.url)
    assert [e["seq"] for e in carol.join("lobby")["history"]] == list(range(1, 10))


def test_memory_history_gets_a_new_epoch_at_every_start(make_server, peers):
    """With --db :memory: each start is a new history, so `welcome` carries a new epoch."""
    epochs = {peers(make_server(db=":memory:").url).welcome["epoch"] for _ in range(2)}
    assert len(epochs) == 2


# -- roomchat.py as a process --------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_kill_9_loses_no_event_any_client_saw(tmp_path):
    """4 senders in 2 rooms, 3 receivers, kill -9 mid-stream: after a restart every event anyone
    received is in history with the same seq, sender and text, no seq twice, and seqs continue."""
    db = str(tmp_path / "crash.db")
    server = ServerProcess("--db", db, log_path=tmp_path / "first.log")
    rooms = ["alpha", "beta"]
    receivers = [Peer(server.url) for _ in range(3)]
    for peer in receivers:
        for room in rooms:
            peer.join(room)
    senders = []
    for n in range(4):
        peer = Peer(server.url)
        peer.set_nick(f"sender{n}")
        peer.join(rooms[n % 2])
        senders.append(peer)
    epoch = receivers[0].welcome["epoch"]
    seen = {id(peer): [] for peer in receivers + senders}  # chat events each client received

    def receive(peer):
        with contextlib.suppress(websocket.WebSocketException, OSError, ValueError):
            while True:
                event = peer.recv()
                if event["type"] == "chat":
                    seen[id(peer)].append(event)

    def send(peer, room, window=16):
        """Keep `window` chats in flight; each echo lets the next one go."""
        sent = inflight = 0
        with contextlib.suppress(websocket.WebSocketException, OSError, ValueError):
            while True:
                while inflight < window:
                    peer.send(type="chat", room=room, text=f"{peer.nick} #{sent}", id=sent)
                    sent, inflight = sent + 1, inflight + 1
                event = peer.recv()
                if event["type"] == "chat":
                    seen[id(peer)].append(event)
                    inflight -= event.get("id") is not None

    threads = [threading.Thread(target=receive, args=(p,), daemon=True) for p in receivers]
    threads += [threading.Thread(target=send, args=(p, rooms[n % 2]), daemon=True) for n, p in enumerate(senders)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: min(len(seen[id(p)]) for p in receivers) > 300, timeout=10)
    finally:
        server.proc.kill()  # SIGKILL while all four senders are mid-stream
        server.stop()
    for thread in threads:
        thread.join(5)
    for peer in receivers + senders:
        peer.close()

    restarted = ServerProcess("--db", db, log_path=tmp_path / "second.log")
    try:
        reader = Peer(restarted.url)
        assert reader.welcome["epoch"] == epoch
        stored = {}
        for room in rooms:
            reader.join(room)
            history = read_history(reader, room)
            assert [e["seq"] for e in history] == list(range(1, len(history) + 1)), "a gap or a seq twice"
            stored.update({(room, e["seq"]): (e["from"], e["text"]) for e in history})
        for peer in receivers + senders:
            events = seen[id(peer)]
            for room in rooms:
                in_room = [e["seq"] for e in events if e["room"] == room]
                assert in_room == sorted(set(in_room)), "a client got a seq twice or out of order"
            for e in events:
                assert stored.get((e["room"], e["seq"])) == (e["from"], e["text"]), e
        highest = {room: max(seq for (r, seq) in stored if r == room) for room in rooms}
        writer = Peer(restarted.url)
        for room in rooms:
            writer.join(room)
            assert chat(writer, room, f"after the crash in {room}")["seq"] == highest[room] + 1
        reader.close()
        writer.close()
    finally:
        assert restarted.stop() == 0


def test_default_database_is_roomchat_db_in_the_working_directory(spawn, tmp_path):
    """Without --db, history goes to ./roomchat.db, the start-up output says where, and a
    graceful stop folds the WAL back into the file."""
    server = spawn(cwd=tmp_path)
    assert f"history in {tmp_path / 'roomchat.db'}" in server.lines
    peer = Peer(server.url)
    peer.join("lobby")
    chat(peer, "lobby", "kept")
    peer.close()
    assert server.stop() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roomchat.db"]
    with contextlib.closing(sqlite3.connect(tmp_path / "roomchat.db")) as conn, conn:
        assert conn.execute("SELECT sender, text FROM events").fetchall() == [(peer.nick, "kept")]


def test_db_from_environment_and_memory(spawn, tmp_path):
    """ROOMCHAT_DB chooses the file; --db :memory: says the history is in memory and writes nothing."""
    server = spawn(env=roomchat_env(ROOMCHAT_DB=str(tmp_path / "env.db")))
    assert f"history in {tmp_path / 'env.db'}" in server.lines
    assert server.stop() == 0
    server = spawn("--db", ":memory:", cwd=tmp_path)
    assert any(line.startswith("history in memory") for line in server.lines)
    assert server.stop() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.db"]


def corrupt(path) -> None:
    path.write_bytes(b"definitely not SQLite\n" * 200)


def inside_a_file(path) -> None:
    path.parent.write_text("")


@pytest.mark.parametrize(
    ("prepare", "db", "reason"),
    [
        (corrupt, "chat.db", "file is not a database"),
        (inside_a_file, "plain/chat.db", "Not a directory"),
        (lambda path: path.mkdir(), "chat.db", "Is a directory"),
    ],
    ids=["corrupt", "unwritable", "directory"],
)
def test_unusable_database_exits_2_with_one_line(tmp_path, prepare, db, reason):
    """A corrupt or unwritable database: exit status 2 and one line on stderr, no traceback."""
    path = tmp_path / db
    prepare(path)
    done = run_to_exit("--db", str(path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("roomchat: "), done.stderr
    assert reason in done.stderr and str(path) in done.stderr
    assert "listening" not in done.stdout


@pytest.mark.timeout(15)
def test_database_in_use_exits_2_with_one_line(tmp_path):
    """A second roomchat on a file another one is using, or a file write-locked by another
    program, exits with status 2 and one line."""
    db = tmp_path / "chat.db"
    server = ServerProcess("--db", str(db))
    try:
        done = run_to_exit("--db", str(db))
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith(f"roomchat: history database {db} is in use by another roomchat process")
        assert "--db" in done.stderr and "--port" in done.stderr  # says the way out
    finally:
        assert server.stop() == 0
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        done = run_to_exit("--db", str(db))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert done.returncode == 2
    assert done.stderr == f"roomchat: cannot use history database {db}: database is locked\n"


def test_a_server_that_fails_to_start_leaves_its_history_file_closed(make_server, tmp_path):
    """A token secret file that cannot be read when the server starts (gone since the settings
    were checked) raises OSError before the history file is opened: nothing is left open or
    locked, and a server on the same file starts in the same process."""
    db = str(tmp_path / "chat.db")
    with no_unclosed_resources(), pytest.raises(OSError):
        make_server(db=db, token_secret_file=str(tmp_path / "gone"))
    make_server(db=db)  # not "in use by another roomchat process"


FAIL_AFTER = 3.0  # seconds the disk stalls before chats are refused: answers that waited for it come later


@pytest.mark.timeout(30)
def test_stalled_disk_holds_up_only_chats(make_server, peers, tmp_path):
    """With the history file write-locked by another program (a stalled disk, as far as commits
    can tell): ping, who and dm are answered at once for everybody; chats get `unavailable` once
    commits keep failing; /healthz says the store is failing, and recovers with the disk."""
    path = tmp_path / "h.db"
    engine = SqliteEngine(str(path), busy_timeout=0.2, fail_after=FAIL_AFTER)
    server = make_server(engine=engine)
    alice, bob = peers(server.url), peers(server.url)
    alice.set_nick("alice")
    alice.join("r")
    bob.join("r")
    assert alice.chat_all("r", ["stored"])[0]["seq"] == 1
    bob.recv_type("chat")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        alice.send(type="chat", room="r", text="stuck", id="c1")
        started = time.monotonic()
        assert bob.request(type="ping") == {"type": "pong"}
        assert bob.request(type="who", room="r")["members"] == ["alice", bob.nick]
        assert bob.request(type="dm", to="alice", text="psst")["type"] == "dm"
        assert time.monotonic() - started < FAIL_AFTER  # none of that waited for the disk to give up
        got = {}
        while len(got) < 2:
            event = alice.recv()
            got[event["type"]] = event
        assert got["dm"]["text"] == "psst"  # before the error: the dm did not wait for the disk
        assert got["error"]["code"] == "unavailable" and got["error"]["id"] == "c1"
        assert problems(validator("events"), got["error"]) == []  # as schema/events.json says
        status, body = http_get(server.port, "/healthz")
        assert status == 503 and body["status"] == "failing" and "locked" in body["reason"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    chat = wait_for(lambda: (r := alice.request(type="chat", room="r", text="back"))["type"] == "chat" and r, 5)
    assert chat["seq"] == 2  # the refused chat's seq was not used up
    assert http_get(server.port, "/healthz")[0] == 200


def http_get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
