"""The teacher's room across roomchat processes on one Redis (real redis-server, real processes):
a room's mode is one fact for every process, and a mute holds a renamed member on its own process."""

import pytest

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
