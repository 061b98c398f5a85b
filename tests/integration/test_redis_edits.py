"""Edit, delete and react with several roomchat processes on Redis (one redis-server, and a Redis
Cluster): real redis-server and roomchat processes started by the test."""

import json
import subprocess
import threading

import pytest
import redis

from tests.helpers import EMOJI, ROOMCHAT, members_in, roomchat_env, wait_for
from tests.integration.test_edits import play
from tests.services import RedisCluster

pytestmark = pytest.mark.timeout(90)


def stored_text(url: str) -> bytes:
    """Everything Redis keeps of room lobby's history (its stream and its chats' states), as bytes."""
    client = redis.Redis.from_url(url)
    try:
        hist = client.xrange("roomchat:{lobby}:hist")
        kept = client.zrange("roomchat:{lobby}:cur", 0, -1)
    finally:
        client.close()
    return b"".join(fields[b"e"] for _id, fields in hist) + b"".join(kept)


def test_an_edit_on_one_process_reaches_members_on_the_other_and_is_replayed(cluster, redis_server, peers):
    """Two processes: ann's edits and delete and bob's reaction reach the other process's members
    in one order with gapless seqs; history and join with after (there, and on the other process)
    give the chats in their current state; the deleted text is nowhere in Redis."""
    a, b = cluster(2)
    ann, bob, carol = members_in([a.url, b.url, b.url], peers, ["ann", "bob", "carol"])
    first = ann.ask(type="chat", room="lobby", text="one")["seq"]
    second = ann.ask(type="chat", room="lobby", text="SECRET-two")["seq"]
    ann.ask(type="edit", room="lobby", seq=first, text="one, edited")
    ann.ask(type="edit", room="lobby", seq=second, text="SECRET-edited")
    bob.ask(type="react", room="lobby", seq=first, emoji="🎉")
    ann.ask(type="delete", room="lobby", seq=second)
    live = []
    while len(live) < 6:  # carol, on the other process, saw it all live
        event = carol.recv()
        if event["type"] in ("chat", "edit", "react", "delete"):
            live.append(event)
    assert [e["seq"] for e in live] == list(range(first, first + 6))
    assert [e["type"] for e in live] == ["chat", "chat", "edit", "edit", "react", "delete"]
    for peer in (bob, ann):
        messages = peer.ask(type="history", room="lobby")["messages"]
        assert play(messages) == play(live)
        assert messages[0]["text"] == "one, edited" and messages[0]["reactions"] == {"🎉": ["bob"]}
        assert messages[1].get("deleted") is True and "text" not in messages[3]
    page = bob.ask(type="history", room="lobby", before=first + 3, limit=2)["messages"]  # paging back over it
    assert [(e["seq"], e.get("deleted", False)) for e in page] == [(first + 1, True), (first + 2, False)]
    replay = carol.ask(type="join", room="lobby", after=first)["history"]  # a re-join: what came after `first`
    assert [e["seq"] for e in replay] == list(range(first + 1, first + 6))
    assert b"SECRET" not in stored_text(redis_server.url)
    assert carol.ask(type="chat", room="lobby", text="after")["seq"] == first + 6


def test_an_edited_chat_past_the_rooms_window_is_gone_from_history_and_transcript(cluster, redis_server, peers):
    """With --history-per-room 5, an edited and reacted-to chat that later chats push out of the
    room's window is in no history read (on either process, history or a join's) and in no
    transcript, though no edit came since to trim what Redis keeps of its state."""
    a, b = cluster(2, "--history-per-room", "5")
    ann, bob = members_in([a.url, b.url], peers, ["ann", "bob"])
    old = ann.ask(type="chat", room="lobby", text="OLD-one")["seq"]
    ann.ask(type="edit", room="lobby", seq=old, text="OLD-edited")
    bob.ask(type="react", room="lobby", seq=old, emoji="🎉")
    sent = [ann.ask(type="chat", room="lobby", text=f"new {i}")["seq"] for i in range(6)]
    while bob.recv().get("seq") != sent[-1]:  # delivered on bob's process too: its history reaches it
        pass
    for peer in (ann, bob):
        messages = peer.ask(type="history", room="lobby", limit=50)["messages"]
        assert old not in [m["seq"] for m in messages] and sent[-1] == messages[-1]["seq"]
        assert all("OLD" not in m.get("text", "") for m in messages)
    late = peers(b.url)
    assert all("OLD" not in m.get("text", "") for m in late.join("lobby")["history"])
    done = subprocess.run([*ROOMCHAT, "export", "--room", "lobby", "--redis", redis_server.url, "--format", "jsonl"],
                          env=roomchat_env(), capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    texts = [json.loads(line).get("text", "") for line in done.stdout.splitlines()]
    assert "new 5" in texts and not any("OLD" in text for text in texts)


def test_a_chat_past_the_rooms_window_is_no_such_message_to_react_edit_and_delete(cluster, peers):
    """With --history-per-room 5, a reacted-to chat that later chats push out of the room's window
    is `no_such_message` to a react, an edit and a delete (nothing stored, nobody told), though no
    edit came since to trim what Redis keeps of its state."""
    a, b = cluster(2, "--history-per-room", "5")
    ann, bob = members_in([a.url, b.url], peers, ["ann", "bob"])
    old = ann.ask(type="chat", room="lobby", text="OLD-one")["seq"]
    bob.ask(type="react", room="lobby", seq=old, emoji="🎉")
    last = [ann.ask(type="chat", room="lobby", text=f"new {i}")["seq"] for i in range(6)][-1]
    for peer, request in ((bob, {"type": "react", "emoji": "👍"}), (ann, {"type": "edit", "text": "OLD-again"}),
                          (ann, {"type": "delete"})):
        reply = peer.ask(room="lobby", seq=old, **request)
        assert (reply["type"], reply.get("code")) == ("error", "no_such_message"), reply
    assert bob.ask(type="chat", room="lobby", text="next")["seq"] == last + 1  # nothing was stored meanwhile


def test_concurrent_reactions_from_two_processes_converge(cluster, peers):
    """Two members on two processes toggle reactions on one chat at once: every react event is
    stored with its own seq, and the chat in history is exactly what applying them gives."""
    a, b = cluster(2)
    ann, bob = members_in([a.url, b.url], peers, ["ann", "bob"])
    seq = ann.ask(type="chat", room="lobby", text="vote")["seq"]
    rounds = 15

    def toggle(peer, answers):
        for i in range(rounds):
            answers.append(peer.ask(type="react", room="lobby", seq=seq, emoji=EMOJI[i % 3]))

    answers = {"ann": [], "bob": []}
    threads = [threading.Thread(target=toggle, args=(p, answers[p.nick])) for p in (ann, bob)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(e["type"] == "react" for e in answers["ann"] + answers["bob"])

    def delivered_on_a():  # ann's process has delivered bob's last react too (history reads what it has)
        found = ann.ask(type="history", room="lobby", after=seq - 1)["messages"]
        return found if len(found) >= 2 * rounds + 1 else None

    messages = wait_for(delivered_on_a, timeout=15)
    assert [e["seq"] for e in messages] == list(range(seq, seq + 2 * rounds + 1))
    assert play(messages)[seq] == messages[0]
    on = {}
    for event in messages[1:]:
        on[(event["from"], event["emoji"])] = event["on"]
    expected = {emoji: [n for n in ("ann", "bob") if on.get((n, emoji))] for emoji in EMOJI[:3]}
    got = messages[0].get("reactions", {})
    assert {e: sorted(n) for e, n in got.items()} == {e: n for e, n in expected.items() if n}


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """One 3-master Redis Cluster for this module's test."""
    service = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield service
    service.kill()


def test_edit_delete_and_react_on_a_redis_cluster(redis_cluster, spawn, peers):
    """Three processes, each on its own node of a Redis Cluster: an edit, a reaction and a delete
    reach the members on every process (sharded pub/sub), and history gives the current state."""
    servers = [spawn("--redis", url) for url in redis_cluster.urls]
    ann, bob, carol = members_in([s.url for s in servers], peers, ["ann", "bob", "carol"])
    first, second = (ann.ask(type="chat", room="lobby", text=t)["seq"] for t in ("one", "two"))
    ann.ask(type="edit", room="lobby", seq=first, text="one!")
    bob.ask(type="react", room="lobby", seq=first, emoji="👍")
    carol.ask(type="react", room="lobby", seq=first, emoji="👍")
    ann.ask(type="delete", room="lobby", seq=second)
    for peer in (bob, carol):
        assert peer.recv_type("delete")["target"] == second
    messages = carol.ask(type="history", room="lobby")["messages"]
    assert messages[0]["text"] == "one!" and messages[0]["reactions"] == {"👍": ["bob", "carol"]}
    assert messages[1].get("deleted") is True
    assert [e["seq"] for e in messages] == list(range(first, first + 6))
