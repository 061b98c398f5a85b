"""Identity and moderation across roomchat processes on one Redis (real redis-server, real processes)."""

import pytest

from tests.helpers import SECRET, members_in, token, wait_for, with_token

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair(cluster):
    """Two roomchat processes with the same token secret on this test's Redis."""
    return cluster(2, "--token-secret", SECRET)


def test_a_tokens_nick_is_reserved_on_every_process(pair, peers):
    """A token for bill seen on one process reserves bill (and look-alikes) on the other, also after
    its holder has gone; the holder gets it back on either process."""
    a, b = pair
    holder = peers(with_token(a.url, token("bill")))
    other = peers(b.url)
    assert other.request(type="nick", nick="BI11")["code"] == "nick_reserved"
    holder.close()
    wait_for(lambda: other.request(type="dm", to="bill", text="x")["type"] == "error", timeout=5)
    assert other.request(type="nick", nick="bill")["code"] == "nick_reserved"
    assert peers(with_token(b.url, token("bill"))).nick == "bill"


def test_look_alike_nicks_are_one_nick_across_processes(pair, peers):
    """A nick taken on one process is taken on the other in any look-alike spelling."""
    a, b = pair
    peers(a.url).set_nick("moe")
    assert peers(b.url).request(type="nick", nick="RN0E")["code"] == "nick_taken"


def test_the_holder_takes_its_nick_from_a_client_on_another_process(pair, peers):
    """An anonymous client on B had ann before any token for it: when ann's holder connects to A,
    B renames it to a guest nick and its room sees the change; a second connection of the same
    token, on B, then replaces the first one on A (4002)."""
    a, b = pair
    squatter, watcher = peers(b.url), peers(a.url)
    squatter.set_nick("ann")
    squatter.join("lobby")
    watcher.join("lobby")
    holder = peers(with_token(a.url, token("ann")), timeout=15)
    assert holder.nick == "ann"
    renamed = squatter.recv_type("nick")
    assert renamed["old"] == "ann" and renamed["nick"].startswith("guest-")
    assert watcher.recv_type("nick") == renamed
    again = peers(with_token(b.url, token("ann")), timeout=15)
    assert again.nick == "ann"
    holder.ws.settimeout(10)
    assert holder.close_code()[0] == 4002


def test_moderation_by_an_operator_on_one_process_holds_on_the_other(pair, peers):
    """An operator on A (not in the room) sets the topic, mutes, bans and kicks members on B: they and
    their room on B see each event, the rules hold on B, and `who` agrees on both processes."""
    a, b = pair
    op = peers(with_token(a.url, token("op", op=True)))
    bob, carol, dave = peers(b.url), peers(b.url), peers(b.url)
    for peer, nick in ((bob, "bob"), (carol, "carol"), (dave, "dave")):
        peer.set_nick(nick)
        peer.join("lobby")
    carol.recv_type("presence")  # dave's join; bob's came before it
    assert op.request(type="topic", room="lobby", topic="quiet please")["topic"] == "quiet please"
    assert carol.recv_type("topic")["by"] == "op"

    op.request(type="mute", room="lobby", nick="bob", duration=60)
    assert bob.recv_type("mute")["nick"] == "bob"
    assert bob.request(type="chat", room="lobby", text="hi")["code"] == "forbidden"

    op.request(type="ban", room="lobby", nick="bob", duration=60, reason="still loud")
    assert carol.recv_type("ban")["reason"] == "still loud"
    assert carol.recv_type("presence") == {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob"}
    assert bob.recv_type("ban")["nick"] == "bob"
    assert bob.request(type="join", room="lobby")["code"] == "forbidden"

    op.request(type="kick", room="lobby", nick="dave")
    assert carol.recv_type("kick")["nick"] == "dave"
    assert carol.recv_type("presence")["nick"] == "dave"
    assert op.request(type="who", room="lobby")["members"] == ["carol"]
    assert carol.request(type="who", room="lobby")["members"] == ["carol"]
    newcomer = peers(a.url)
    assert newcomer.join("lobby")["topic"] == "quiet please"


@pytest.mark.parametrize("kind", ["kick", "ban"])
def test_members_on_other_processes_see_the_removed_member_leave(pair, peers, kind):
    """PROTOCOL.md's kick and ban rows: every member gets the event, then the others get bob's
    presence `leave`, also members connected to another process than bob's; `who` agrees."""
    a, b = pair
    op = peers(with_token(a.url, token("op", op=True)))
    alice, bob, carol = members_in([a.url, b.url, b.url], peers, ["alice", "bob", "carol"])
    op.request(type=kind, room="lobby", nick="bob", **({"duration": 60} if kind == "ban" else {}))
    assert bob.recv_type(kind)["nick"] == "bob"
    leave = {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob"}
    for member in (alice, carol):  # alice on the op's process, carol on bob's
        assert member.recv_type(kind)["nick"] == "bob"
        assert member.recv() == leave  # right after the event
        assert member.ask(type="who", room="lobby")["members"] == ["alice", "carol"]


def test_a_ban_of_a_nick_in_no_room_gives_no_leave_on_any_process(pair, peers):
    """A ban of a nick that is not a member takes nobody out: the members on either process get
    the ban, then the next chat, with no presence `leave` between."""
    a, b = pair
    op = peers(with_token(a.url, token("op", op=True)))
    alice, bob = members_in([a.url, b.url], peers, ["alice", "bob"])
    op.request(type="ban", room="lobby", nick="zed", duration=60)
    assert alice.recv_type("ban")["nick"] == "zed"
    alice.send(type="chat", room="lobby", text="after")
    assert alice.recv()["text"] == "after"  # alice on the op's process
    assert bob.recv_type("ban")["nick"] == "zed"  # bob on the other
    assert bob.recv()["text"] == "after"
    for member in (alice, bob):
        assert member.ask(type="who", room="lobby")["members"] == ["alice", "bob"]
