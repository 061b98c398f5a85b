"""Resume on any process: a resume token works on whichever roomchat process the client reaches
(real redis-server, real processes)."""

import threading

import pytest
import redis

from chatserver import protocol
from chatserver.engines.base import Meta
from chatserver.engines.redis import RedisEngine
from tests.client_helpers import Relay
from tests.fakes import RoomsHub
from tests.helpers import SECRET, Peer, ann_watched, token, wait_for, with_token

pytestmark = pytest.mark.timeout(60)


def until_chat(peer: Peer, text: str) -> list:
    """The events `peer` receives up to and including the chat whose text is `text`."""
    seen = []
    while not seen or seen[-1].get("text") != text:
        seen.append(peer.recv())
    return seen


def no_presence(events: list) -> bool:
    return not any(e["type"] in ("presence", "nick") for e in events)


def test_a_client_resumes_on_another_process_without_a_presence_flap(cluster, peers):
    """ann, silently cut off from process A, resumes on process B: same nick and rooms, a re-join
    replays what it missed, watchers on both processes see no leave or join, `who` lists ann once
    on both, nobody can take her nick, and chats go on in one order for everyone."""
    a, b = cluster(2)
    watch_a, watch_b = peers(a.url), peers(b.url)
    watch_a.join("lobby")
    watch_b.join("lobby")
    relay = Relay(a.port)
    try:
        ann = peers(relay.url)
        ann.set_nick("ann")
        ann.join("lobby")
        watch_a.recv_type("presence")
        watch_b.recv_type("presence")
        relay.go_silent()
        watch_b.send(type="chat", room="lobby", text="while you were gone")
        missed = watch_b.recv_type("chat")
        watch_a.recv_type("chat")
        again = peers(f"{b.url}?resume={ann.welcome['resume']}")
        assert again.welcome["nick"] == "ann" and again.welcome["resumed"] is True
        assert again.welcome["rooms"] == ["lobby"] and again.welcome["resume"] != ann.welcome["resume"]
        joined = again.join("lobby", after=missed["seq"] - 1)
        assert [e["text"] for e in joined["history"]] == ["while you were gone"]
        assert joined["members"] == [watch_a.nick, watch_b.nick, "ann"]
        for watcher in (watch_a, watch_b):
            assert watcher.request(type="who", room="lobby")["members"] == [watch_a.nick, watch_b.nick, "ann"]
        assert watch_a.request(type="nick", nick="ann")["code"] == "nick_taken"
        watch_a.send(type="chat", room="lobby", text="welcome back")
        got = until_chat(again, "welcome back")
        again.send(type="chat", room="lobby", text="thanks")
        got += until_chat(again, "thanks")
        views = [until_chat(p, "thanks") for p in (watch_a, watch_b)]
        assert all(no_presence(view) for view in [*views, got])
        seqs = [[e["seq"] for e in view if e["type"] == "chat"] for view in [*views, got]]
        assert seqs[0] == seqs[1] == seqs[2] == [missed["seq"] + 1, missed["seq"] + 2]
        assert watch_a.request(type="dm", to="ann", text="psst")["to"] == "ann"
        assert again.recv_type("dm")["text"] == "psst"
    finally:
        relay.close()


def test_the_old_connection_on_the_other_process_is_closed_with_4002(cluster, peers):
    """A resume on process B while the old connection on A is still open: the old one gets close
    4002 and nothing else, the room sees no presence; ann's later leave is one leave for all."""
    a, b = cluster(2)
    watcher, ann = ann_watched(peers, a.url, a.url)
    again = peers(f"{b.url}?resume={ann.welcome['resume']}")
    assert again.welcome["nick"] == "ann" and again.welcome["rooms"] == ["lobby"]
    ann.ws.settimeout(10)
    assert ann.close_code() == (4002, "replaced by a new connection")
    again.send(type="chat", room="lobby", text="still me")
    assert no_presence(until_chat(watcher, "still me"))
    again.request(type="leave", room="lobby")
    left = watcher.recv_type("presence")
    assert (left["event"], left["nick"]) == ("leave", "ann")
    assert watcher.request(type="who", room="lobby")["members"] == [watcher.nick]


def test_a_stolen_resume_token_of_a_token_holder_gets_a_fresh_guest(cluster, peers):
    """An operator's resume token presented on another process without the operator's identity
    token gets a fresh guest (no nick, no rooms, no op rights) and leaves the operator alone; with
    the identity token too, the operator resumes there."""
    a, b = cluster(2, "--token-secret", SECRET)
    op = peers(with_token(a.url, token("op", op=True)))
    op.join("lobby")
    thief = peers(f"{b.url}?resume={op.welcome['resume']}")
    assert thief.nick.startswith("guest-") and "resumed" not in thief.welcome and "auth" not in thief.welcome
    assert thief.request(type="topic", room="lobby", topic="mine")["code"] == "forbidden"
    assert op.request(type="ping") == {"type": "pong"}
    assert thief.request(type="who", room="lobby")["members"] == ["op"]
    again = peers(with_token(b.url, token("op", op=True)) + f"&resume={op.welcome['resume']}")
    assert again.welcome["resumed"] is True and again.welcome["rooms"] == ["lobby"] and again.nick == "op"
    op.ws.settimeout(10)
    assert op.close_code()[0] == 4002
    assert again.request(type="topic", room="lobby", topic="ours")["type"] == "topic"


def test_a_spent_token_gets_a_guest_on_every_process(redis_server, cluster, peers):
    """Redis keeps each client's session under its token's hash, never the token; once the client
    has left, its token gives a fresh guest on the other process too."""
    a, b = cluster(2)
    ann, other = peers(a.url), peers(b.url)
    ann.set_nick("ann")
    store = redis.Redis.from_url(redis_server.url)
    stored = [store.get(k) for k in store.keys("roomchat:session:*")]
    store.close()
    assert len(stored) == 2 and all(ann.welcome["resume"].encode() not in v for v in stored)  # its hash names it
    ann.close()
    wait_for(lambda: other.request(type="dm", to="ann", text="x")["type"] == "error", timeout=10)
    peer = peers(f"{b.url}?resume={ann.welcome['resume']}")
    assert peer.nick.startswith("guest-") and "resumed" not in peer.welcome


def test_a_client_of_a_killed_process_resumes_on_another_before_it_is_reaped(cluster, peers):
    """Process A is killed -9; ann resumes on B before A's lease runs out: nick and rooms kept, and
    when A is reaped the room sees no leave for her (only for A's other member)."""
    a, b = cluster(2)
    watcher = peers(b.url, timeout=30)
    watcher.join("lobby")
    ann, other = peers(a.url), peers(a.url)
    ann.set_nick("ann")
    for peer in (ann, other):
        peer.join("lobby")
        watcher.recv_type("presence")
    a.proc.kill()
    again = peers(f"{b.url}?resume={ann.welcome['resume']}")
    assert again.welcome["resumed"] is True and again.welcome["rooms"] == ["lobby"] and again.nick == "ann"
    gone = watcher.recv_type("presence")  # A is reaped: about two leases later
    assert (gone["event"], gone["nick"]) == ("leave", other.nick)
    again.send(type="chat", room="lobby", text="survived")
    assert no_presence(until_chat(watcher, "survived"))
    assert watcher.request(type="who", room="lobby")["members"] == [watcher.nick, "ann"]


def test_resuming_back_and_forth_at_once_keeps_nick_and_rooms(cluster, peers):
    """A client that resumes on the other process and at once again, 20 times, alternating, with
    each newest token: resumed every time, same nick and rooms (a token works the moment it is
    given, and a process the client left a moment ago does not stand in its way)."""
    a, b = cluster(2)
    peer = peers(a.url)
    peer.set_nick("ann")
    for room in ("r1", "r2"):
        peer.join(room)
    for i in range(20):
        again = peers(f"{(b, a)[i % 2].url}?resume={peer.welcome['resume']}")
        got = again.welcome.get("resumed"), again.nick, again.welcome.get("rooms")
        assert got == (True, "ann", ["r1", "r2"]), (i, got)
        peer.close()
        peer = again
    assert peer.request(type="who", room="r1")["members"] == ["ann"]


class ProcessHub(RoomsHub):
    """Plays one process's Registry for a cluster engine: records which clients it is told to let
    go (a resume moved them) and which it is told lost their nick (cut off: as the Registry does,
    those leave their rooms, `rooms` {client id: (nick, [room])})."""

    def __init__(self, process_id: str, engine: RedisEngine, rooms: dict):
        super().__init__()
        self.process_id, self.engine, self.rooms = process_id, engine, rooms
        self.lost, self.moved = [], []
        self._moves = threading.Condition()

    def lose_nick(self, client_id):
        self.lost.append(client_id)
        nick, rooms = self.rooms[client_id]
        for room in rooms:
            self.engine.announce(room, protocol.presence(room, "leave", nick), Meta((self.process_id, client_id)))

    def let_go(self, client_id):
        with self._moves:
            self.moved.append(client_id)
            self._moves.notify_all()

    def evict(self, client_id):
        raise AssertionError(f"evict {client_id}")

    def deliver_dm(self, client_id, event):
        return False

    def retake(self):
        raise AssertionError("retake")

    def wait_moved(self) -> list:
        with self._moves:
            assert self._moves.wait_for(lambda: self.moved, timeout=10)
            return self.moved


def test_a_beat_between_a_resumes_claim_and_room_moves_keeps_the_old_process_calm(redis_server):
    """Process A beats right after process B moved ann's nick claim by a resume and before B moved
    her rooms: A does not take the moved claim for one lost while cut off (no 1012, no leaves that
    would take her rooms from B); B gets her rooms, and A is told to let her old connection go."""
    a, b = RedisEngine(redis_server.url), RedisEngine(redis_server.url)
    hub_a, hub_b = ProcessHub("aaaaaaaaaaaa", a, {1: ("ann", ["r1"])}), ProcessHub("bbbbbbbbbbbb", b, {})
    a.start(hub_a)
    b.start(hub_b)
    try:
        assert a.claim_nick("ann", 1)
        a.keep_session(1, "tok", "ann", "")
        a.announce("r1", protocol.presence("r1", "join", "ann"), Meta((hub_a.process_id, 1)))
        session = b.find_session("tok")
        assert session.rooms == ("r1",)
        move = b._scripts["owner_move"]

        def beat_first(**kwargs):  # A's heartbeat in the window between the two moves
            a._beat()
            return move(**kwargs)

        b._scripts["owner_move"] = beat_first
        taken = b.take_session(session, 7)
        assert hub_a.lost == [] and set(taken) == {"r1"}, (hub_a.lost, taken)
        assert hub_a.wait_moved() == [1]
        assert b.members("r1") == ["ann"]
    finally:
        a.close()
        b.close()
