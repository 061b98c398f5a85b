"""The teacher's room across roomchat processes on one Redis (real redis-server, real processes):
a room's mode is one fact for every process, and a mute holds a renamed member on its own process."""

import pytest
import redis

from tests.helpers import SECRET, token, with_token

pytestmark = pytest.mark.timeout(60)


def test_mode_set_on_one_process_applies_on_the_other(cluster, peers):
    """An operator on A makes a room moderated and slow: a member on B sees the event, its chat gets
    `moderated`, then (moderation lifted) `slow_mode` for a second chat; a joiner on B sees `joined.mode`."""
    a, b = cluster(2, "--token-secret", SECRET)
    op = peers(with_token(a.url, token("teacher", op=True)))
    student = peers(b.url)
    student.join("class")
    op.send(type="mode", room="class", moderated=True, slow=600, id=1)
    assert op.recv_type("mode")["by"] == "teacher"
    assert student.recv_type("mode") == {"type": "mode", "room": "class", "moderated": True, "slow": 600,
                                         "by": "teacher"}
    assert student.request(type="chat", room="class", text="hi")["code"] == "moderated"
    assert peers(b.url).join("class")["mode"] == {"moderated": True, "slow": 600}
    op.send(type="mode", room="class", moderated=False)
    student.recv_type("mode")
    student.send(type="chat", room="class", text="first", id=2)
    assert student.recv_type("chat")["text"] == "first"
    assert student.request(type="chat", room="class", text="second")["code"] == "slow_mode"


def test_a_muted_member_on_another_process_that_renames_is_still_muted(cluster, peers):
    """The mute is delivered on the member's process, which holds its connection: renamed, it still cannot chat."""
    a, b = cluster(2, "--token-secret", SECRET)
    op = peers(with_token(a.url, token("teacher", op=True)))
    student = peers(b.url)
    student.set_nick("stud1")
    student.join("class")
    op.send(type="mute", room="class", nick="stud1", duration=60)
    student.recv_type("mute")
    student.set_nick("innocent")
    assert student.request(type="chat", room="class", text="hi")["code"] == "forbidden"


def test_a_mute_or_mode_in_redis_before_its_event_refuses_the_next_chat(redis_server, cluster, peers):
    """A process keeps what it read of a member's rules (no read per chat) and the chat's write checks them
    again: a mute or mode that is in Redis but has not reached the process (set here straight in Redis, as
    another process does before its event goes out) refuses the chat with that rule's own error, and
    nothing of it is stored."""
    (a,) = cluster(1)
    ann = peers(a.url)
    ann.set_nick("ann")
    ann.join("class")
    assert ann.request(type="chat", room="class", text="one")["text"] == "one"  # its rules read, and kept
    direct = redis.Redis.from_url(redis_server.url)
    try:
        direct.set("roomchat:{class}:mute:ann", "", px=60_000)
        refused = ann.request(type="chat", room="class", text="two")
        assert (refused["code"], refused["retry_after"] > 50) == ("forbidden", True)
        direct.delete("roomchat:{class}:mute:ann")
        assert ann.request(type="chat", room="class", text="three")["text"] == "three"
        direct.set("roomchat:{class}:mode", "0:600")  # slow mode began: "four" was let through under none
        refused = ann.request(type="chat", room="class", text="four")
        assert (refused["code"], refused["retry_after"]) == ("slow_mode", 600)
        direct.set("roomchat:{class}:mode", "1:0")
        assert ann.request(type="chat", room="class", text="five")["code"] == "moderated"
    finally:
        direct.close()
    history = ann.request(type="history", room="class")["messages"]
    assert [m["text"] for m in history if m["type"] == "chat"] == ["one", "three"]


def test_a_chat_refused_that_way_is_answered_after_the_chats_sent_before_it(redis_server, cluster, peers):
    """Replies keep the order of the requests: a chat to one room, then one to another that the write
    finds muted, sent together: the first's own copy comes first, then the second's `forbidden`."""
    (a,) = cluster(1)
    ann = peers(a.url)
    ann.set_nick("ann")
    ann.join("x")
    ann.join("y")
    assert ann.request(type="chat", room="y", text="kept rules")["text"] == "kept rules"
    direct = redis.Redis.from_url(redis_server.url)
    try:
        direct.set("roomchat:{y}:mute:ann", "", px=60_000)
        for round_ in range(5):
            ann.send(type="chat", room="x", text=f"first {round_}", id=1)
            ann.send(type="chat", room="y", text=f"second {round_}", id=2)
            answers = [ann.recv() for _ in range(2)]
            assert [(e["type"], e["id"]) for e in answers] == [("chat", 1), ("error", 2)], answers
    finally:
        direct.close()
