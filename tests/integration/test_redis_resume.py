"""Resume on any process: a resume token works on whichever roomchat process the client reaches
(real redis-server, real processes)."""

import contextlib
import threading

import pytest
import redis

from chatserver import protocol
from chatserver.engines.base import Meta, Unavailable
from chatserver.engines.redis import LEASE, MOVE_GRACE, NICK_LEASES, RedisEngine, nick_key, session_key
from chatserver.engines.redis_personal import session_marks_keys
from chatserver.protocol import MAX_MARKS
from tests.client_helpers import Relay
from tests.fakes import RoomsHub
from tests.helpers import SECRET, Peer, ann_watched, seated, token, wait_for, with_token

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


def test_marks_without_a_token_follow_a_resume_to_the_other_process(redis_server, cluster, peers):
    """A guest marks two rooms on A and is silently cut off; resumed on B, its re-joins carry the
    same `joined.mark`s; a mark set on B never goes back and is there after a resume back on A; a
    new connection has none; once the client leaves, Redis holds none of its marks."""
    a, b = cluster(2)
    relay = Relay(a.port)
    try:
        ann = peers(relay.url)
        ann.set_nick("ann")
        for room in ("lobby", "side"):
            ann.join(room)
        ann.chat_all("lobby", ["one", "two", "three"])
        ann.chat_all("side", ["x"])
        assert ann.request(type="mark", room="lobby", seq=2)["seq"] == 2
        assert ann.request(type="mark", room="side", seq=1)["seq"] == 1
        relay.go_silent()
        again = peers(f"{b.url}?resume={ann.welcome['resume']}")
        assert again.welcome["resumed"] is True and "marks" not in again.welcome
        assert again.join("lobby", after=3)["mark"] == 2
        assert again.join("side", after=1)["mark"] == 1
        assert again.request(type="mark", room="lobby", seq=3)["seq"] == 3
        assert again.request(type="mark", room="lobby", seq=1)["seq"] == 3
    finally:
        relay.close()
    back = peers(f"{a.url}?resume={again.welcome['resume']}")
    assert back.welcome["resumed"] is True
    assert back.join("lobby", after=3)["mark"] == 3 and back.join("side", after=1)["mark"] == 1
    assert "mark" not in peers(b.url).join("lobby")
    store = redis.Redis.from_url(redis_server.url)
    try:
        assert len(store.keys("roomchat:{session:*")) == 2  # its marks and their order, one slot
        back.request(type="leave", room="lobby")
        back.close()
        wait_for(lambda: not store.keys("roomchat:{session:*"), timeout=10)
    finally:
        store.close()


def test_a_mark_without_a_token_while_redis_is_down_is_unavailable_and_changes_nothing(redis_server, cluster, peers):
    """Redis stopped: a guest's mark is answered `unavailable`, as a token holder's is; once Redis
    is back its mark is the one it had before, on its process and after a resume on the other."""
    a, b = cluster(2)
    guest = peers(a.url)
    guest.join("lobby")
    guest.chat_all("lobby", ["one", "two", "three"])
    assert guest.request(type="mark", room="lobby", seq=2)["seq"] == 2
    redis_server.stop()
    reply = guest.request(type="mark", room="lobby", seq=3, id=7)
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "unavailable", 7)
    redis_server.start()

    def marked() -> dict | None:
        guest.send(type="mark", room="lobby", seq=1, id="m")
        reply = guest.recv()
        while reply.get("id") != "m":
            reply = guest.recv()
        return reply if reply["type"] == "mark" else None

    assert wait_for(marked, timeout=15, interval=0.2)["seq"] == 2
    again = peers(f"{b.url}?resume={guest.welcome['resume']}")
    assert again.welcome["resumed"] is True and again.join("lobby", after=3)["mark"] == 2


def test_slow_mode_pacing_starts_afresh_on_another_process_as_on_a_new_connection(cluster, peers):
    """In a slow room, a resume on the same process keeps the member's pacing (its next chat gets
    slow_mode); a resume on the other process starts it afresh (its next chat goes through, the one
    after gets slow_mode), as a new connection of the same nick on one process does."""
    a, b = cluster(2, "--token-secret", SECRET)
    op, stud = seated(a.url, peers, "class", "stud")
    op.send(type="mode", room="class", slow=600)
    for peer in (op, stud):
        peer.recv_type("mode")
    stud.send(type="chat", room="class", text="first")
    assert stud.recv_type("chat")["text"] == "first"
    same = peers(f"{a.url}?resume={stud.welcome['resume']}")
    assert same.welcome["resumed"] is True
    assert same.request(type="chat", room="class", text="at once")["code"] == "slow_mode"
    moved = peers(f"{b.url}?resume={same.welcome['resume']}")
    assert moved.welcome["resumed"] is True and moved.nick == "stud"
    moved.send(type="chat", room="class", text="from B")
    assert moved.recv_type("chat")["text"] == "from B"
    assert moved.request(type="chat", room="class", text="at once")["code"] == "slow_mode"
    moved.request(type="leave", room="class")
    moved.close()
    fresh = peers(a.url)
    wait_for(lambda: fresh.request(type="nick", nick="stud")["type"] == "nick", timeout=10)
    fresh.join("class")
    fresh.send(type="chat", room="class", text="new connection")
    assert fresh.recv_type("chat")["text"] == "new connection"


def test_the_rate_limit_starts_afresh_on_another_process_as_on_a_new_connection(cluster, peers):
    """A member with its burst spent (3 frames, a token per 100 s) is still refused `rate_limited`
    after a resume on the same process, and served after one on the other: the connection's own
    bucket starts full there, as a new connection's does."""
    a, b = cluster(2, "--token-secret", SECRET, "--rate-burst", "3", "--rate-per-second", "0.01")
    _op, stud = seated(a.url, peers, "class", "stud")  # two of stud's frames: nick and join
    assert stud.request(type="ping") == {"type": "pong"}
    assert stud.request(type="ping")["code"] == "rate_limited"
    same = peers(f"{a.url}?resume={stud.welcome['resume']}")
    assert same.welcome["resumed"] is True and same.request(type="ping")["code"] == "rate_limited"
    moved = peers(f"{b.url}?resume={same.welcome['resume']}")
    assert moved.welcome["resumed"] is True and moved.request(type="ping") == {"type": "pong"}


def test_a_mute_bound_to_a_renamed_connection_stays_on_its_process(cluster, peers):
    """A muted member that renamed is still `forbidden` to chat after a resume on the same process;
    after one on the other process only its nick is held (the mute named the old one), as for a
    new connection: its chat goes through."""
    a, b = cluster(2, "--token-secret", SECRET)
    op, stud = seated(a.url, peers, "class", "stud")
    op.send(type="mute", room="class", nick="stud", duration=600)
    for peer in (op, stud):
        peer.recv_type("mute")
    stud.set_nick("stud2")
    assert stud.request(type="chat", room="class", text="renamed")["code"] == "forbidden"
    same = peers(f"{a.url}?resume={stud.welcome['resume']}")
    assert same.welcome["resumed"] is True and same.nick == "stud2"
    assert same.request(type="chat", room="class", text="resumed")["code"] == "forbidden"
    moved = peers(f"{b.url}?resume={same.welcome['resume']}")
    assert moved.welcome["resumed"] is True and moved.nick == "stud2"
    moved.send(type="chat", room="class", text="elsewhere")
    assert moved.recv_type("chat")["text"] == "elsewhere"


def test_a_resume_on_the_other_process_right_after_a_rename_keeps_the_new_nick(cluster, peers):
    """A client that renames and at once resumes on the other process, 10 times, alternating:
    resumed every time under the nick its last reply gave (the session has it before the reply)."""
    a, b = cluster(2)
    peer = peers(a.url)
    for i in range(10):
        assert peer.request(type="nick", nick=f"ann{i}")["type"] == "nick"
        again = peers(f"{(b, a)[i % 2].url}?resume={peer.welcome['resume']}")
        got = again.welcome.get("resumed"), again.nick
        assert got == (True, f"ann{i}"), (i, got)
        peer.close()
        peer = again


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


@contextlib.contextmanager
def two_processes(url: str, ann_rooms: list, **options):
    """Engines of processes A and B on Redis at `url` (resume window 30 s, RedisEngine `options`),
    each started with a ProcessHub, A's client 1 being ann in `ann_rooms`: (a, b, hub_a, hub_b),
    both closed after."""
    a, b = RedisEngine(url, resume_window=30, **options), RedisEngine(url, resume_window=30, **options)
    hub_a, hub_b = ProcessHub("aaaaaaaaaaaa", a, {1: ("ann", ann_rooms)}), ProcessHub("bbbbbbbbbbbb", b, {})
    a.start(hub_a)
    b.start(hub_b)
    try:
        yield a, b, hub_a, hub_b
    finally:
        a.close()
        b.close()


def test_a_beat_between_a_resumes_claim_and_room_moves_keeps_the_old_process_calm(redis_server):
    """Process A beats right after process B moved ann's nick claim by a resume and before B moved
    her rooms: A does not take the moved claim for one lost while cut off (no 1012, no leaves that
    would take her rooms from B); B gets her rooms, and A is told to let her old connection go
    (after which nothing of hers waits to be let go again)."""
    with two_processes(redis_server.url, ["r1"], move_grace=600) as (a, b, hub_a, _hub_b):
        ann_on_a(a, hub_a)
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
        assert 1 in a._unclaimed  # waiting for the let-go the message brought: its end settles it
        a.end_session(1)  # the registry's let-go (disconnect)
        assert 1 not in a._unclaimed


def test_the_engine_keeps_marks_without_a_token_as_long_as_their_session(redis_server):
    """The Redis engine keeps a tokenless session's marks under the session's hash tag with the
    session's lifetime: never back; kept under each new token of the session; renewed with it by a
    beat; found by the process that takes the session over and left alone when the old process ends
    its copy; deleted when the session ends, and gone when it expires unrenewed. A session kept
    before marks were is still found."""
    store = redis.Redis.from_url(redis_server.url)
    with two_processes(redis_server.url, []) as (a, b, hub_a, _hub_b):
        assert a.claim_nick("ann", 1)
        a.keep_session(1, "tok", "ann", "")
        assert a.set_session_mark(1, "lobby", 3) == 3 and a.set_session_mark(1, "lobby", 1) == 3
        assert a.session_mark(1, "lobby") == 3 and a.session_mark(1, "side") is None
        marks = sorted(k.decode() for k in store.keys("roomchat:{session:*"))
        assert len(marks) == 2 and len({k.split("}")[0] for k in marks}) == 1  # one hash tag: one slot
        assert all(0 < store.pttl(k) <= 30_000 for k in marks)
        a.keep_session(1, "tok2", "ann", "")  # a resume on the same process: a new token
        assert a.find_session("tok") is None and a.session_mark(1, "lobby") == 3
        session = a.find_session("tok2")
        for key in (session.key, *marks):
            store.pexpire(key, 5_000)
        with a._lock:
            a._sessions_kept = 0.0  # the next beat renews the sessions
        a._beat()
        assert all(store.pttl(k) > 5_000 for k in (session.key, *marks))
        assert b.take_session(session, 7) == {}
        assert b.session_mark(7, "lobby") == 3 and b.set_session_mark(7, "lobby", 4) == 4
        assert hub_a.wait_moved() == [1]
        a.end_session(1)  # the old process lets its client go: the session is B's now
        assert b.session_mark(7, "lobby") == 4
        b.end_session(7)
        assert not store.keys("roomchat:{session:*") and not store.keys("roomchat:session:*")
        store.set(session_key("older"), "x.1:3\nbob\n")  # kept by a roomchat before marks were
        older = b.find_session("older")
        assert (older.nick, older.identity) == ("bob", "") and older.marks
        store.delete(older.key)
    short = RedisEngine(redis_server.url, lease=1.0, resume_window=1.0)  # not started: nobody renews
    try:
        short.keep_session(1, "tok3", "bob", "")
        assert short.set_session_mark(1, "lobby", 2) == 2
        wait_for(lambda: not store.keys("roomchat:{session:*") and not store.keys("roomchat:session:*"),
                 timeout=10)
    finally:
        short.close()
        store.close()


def test_a_sessions_marks_are_bounded_like_an_identitys(redis_server):
    """Past MAX_MARKS rooms, a tokenless session's mark in a new room forgets the one marked
    longest ago (a room marked again counts as marked last)."""
    engine = RedisEngine(redis_server.url)  # not started: no heartbeat needed for this
    try:
        engine.keep_session(1, "tok", "ann", "")
        for n in range(MAX_MARKS):
            engine.set_session_mark(1, f"r{n}", 1)
        engine.set_session_mark(1, "r0", 1)  # marked again: now the newest
        engine.set_session_mark(1, "new", 1)
        assert engine.session_mark(1, "r0") == 1 and engine.session_mark(1, "r1") is None
        assert engine.session_mark(1, "new") == 1 and engine.session_mark(1, f"r{MAX_MARKS - 1}") == 1
        engine.end_session(1)
    finally:
        engine.close()


def test_a_session_ended_during_its_take_over_is_not_kept_without_expiry(redis_server):
    """The old process ends ann's session (she left there) after B read it and before B moved her
    nick claim: B's take-over writes the session again with the resume window (it expires, and B's
    beat renews it), never without an expiry that would outlive a crash of B."""
    with two_processes(redis_server.url, []) as (a, b, _hub_a, _hub_b), redis.Redis.from_url(redis_server.url) as store:
        assert a.claim_nick("ann", 1)
        a.keep_session(1, "tok", "ann", "")
        session = b.find_session("tok")
        move = b._scripts["claim_move"]

        def ended_first(**kwargs):  # A's end_session in the window before the claim moves
            a.end_session(1)
            return move(**kwargs)

        b._scripts["claim_move"] = ended_first
        assert b.take_session(session, 7) == {}
        assert 0 < store.pttl(session.key) <= 30_000


def test_a_session_that_never_marked_is_asked_nothing_of_its_marks(redis_server):
    """A guest's joins read its session's marks from Redis only once it has marked a room (or its
    session came from another process, which may have some): before that, `session_mark` is None
    with no HGET reaching Redis."""
    engine = RedisEngine(redis_server.url)  # not started: nothing else calls Redis meanwhile
    try:
        def hgets() -> int:
            return int(engine._redis.info("commandstats").get("cmdstat_hget", {}).get("calls", 0))

        engine.keep_session(1, "tok", "ann", "")
        before = hgets()
        assert engine.session_mark(1, "lobby") is None and hgets() == before
        engine.set_session_mark(1, "side", 2)
        before = hgets()  # (the mark's script reads its hash too)
        assert engine.session_mark(1, "lobby") is None and hgets() == before + 1
        assert engine.session_mark(1, "side") == 2
        engine.end_session(1)
    finally:
        engine.close()


def test_a_take_over_cut_off_by_redis_leaves_no_session_renewed_forever(redis_server):
    """Redis fails while B moves ann's rooms in a take-over (B answers `unavailable`): B does not
    keep the half-taken session as one of its own, so its beats do not renew that session's key
    (nor its marks): it expires with its window instead of living as long as B."""
    with two_processes(redis_server.url, ["r1"]) as (a, b, hub_a, _hub_b), \
            redis.Redis.from_url(redis_server.url) as store:
        assert a.claim_nick("ann", 1)
        a.keep_session(1, "tok", "ann", "")
        a.set_session_mark(1, "r1", 1)
        a.announce("r1", protocol.presence("r1", "join", "ann"), Meta((hub_a.process_id, 1)))
        session = b.find_session("tok")

        def cut_off(**kwargs):
            raise redis.ConnectionError("cut off")

        b._scripts["owner_move"] = cut_off
        with pytest.raises(Unavailable):
            b.take_session(session, 7)
        kept = [session.key, *session_marks_keys(session.marks)]
        for key in kept:
            store.pexpire(key, 5_000)
        with b._lock:
            b._sessions_kept = 0.0  # the next beat renews the sessions B keeps
        b._beat()
        assert all(0 < store.pttl(key) <= 5_000 for key in kept), [store.pttl(key) for key in kept]


def ann_on_a(a: RedisEngine, hub_a: ProcessHub) -> None:
    """A's client 1 takes the nick ann, keeps a session under token "tok" and joins r1."""
    assert a.claim_nick("ann", 1)
    a.keep_session(1, "tok", "ann", "")
    a.announce("r1", protocol.presence("r1", "join", "ann"), Meta((hub_a.process_id, 1)))


def end_grace(engine: RedisEngine, client_id: int) -> None:
    """Move the deadline of `client_id`, waiting for its let-go after a moved claim, to the past
    (what the grace's end would do, without waiting for it)."""
    with engine._lock:
        entry = engine._unclaimed[client_id]
        assert entry.mover is not None, "its moved marker not read yet"
        engine._unclaimed[client_id] = entry._replace(deadline=0.0)


def cut_off_after_the_claim_moved(a: RedisEngine, b: RedisEngine, session) -> None:
    """B's take-over of `session` cut off by Redis after the claim moved, A beating in between
    (its claim gone, marked moved): B raises Unavailable."""
    def beat_then_cut_off(**kwargs):
        a._beat()
        raise redis.ConnectionError("cut off")

    b._scripts["owner_move"] = beat_then_cut_off
    with pytest.raises(Unavailable):
        b.take_session(session, 7)


def test_a_take_over_cut_off_that_gave_the_nick_back_lets_the_old_client_go_at_once(redis_server):
    """B's take-over of ann is cut off by Redis after her claim moved, and B gives the claim back:
    A's next beat finds it nobody's and lets her old client go (4002) without waiting for the
    grace or a message. Her token, presented again, takes nothing back (the session names B's
    cut-off client, which holds nothing: she gets an ordinary welcome, docs/several-machines.md),
    but the nick is free for her to ask for again, and A never takes it back."""
    with two_processes(redis_server.url, ["r1"], move_grace=600) as (a, b, hub_a, _hub_b):
        ann_on_a(a, hub_a)
        cut_off_after_the_claim_moved(a, b, b.find_session("tok"))
        a._beat()
        assert hub_a.wait_moved() == [1] and hub_a.lost == []
        again = b.find_session("tok")
        assert again is not None and b.take_session(again, 8) is None
        assert b.claim_nick("ann", 9)
        a._beat()
        assert not a.claim_nick("ann", 2) and (hub_a.lost, hub_a.moved) == ([], [1])


def test_a_take_over_cut_off_holding_the_nick_lets_the_old_client_go_after_the_grace(redis_server):
    """B's take-over of ann is cut off after her claim moved and B never gives it back (cut off for
    good): A keeps her while the claim is B's (no 1012, no let-go), lets her old client go (4002)
    once the grace is over, and the nick is free once B's claim expires. By default the grace ends
    before such a claim would expire (a short lease shortens it)."""
    with two_processes(redis_server.url, ["r1"], move_grace=600) as (a, b, hub_a, _hub_b), \
            redis.Redis.from_url(redis_server.url) as store:
        ann_on_a(a, hub_a)
        b.release_nick = lambda nick, client_id: None  # its give-back never reaches Redis
        cut_off_after_the_claim_moved(a, b, b.find_session("tok"))
        a._beat()
        assert (hub_a.lost, hub_a.moved) == ([], [])
        end_grace(a, 1)
        a._beat()
        assert hub_a.wait_moved() == [1] and hub_a.lost == []
        with b._lock:  # B's claim expires (NICK_LEASES leases): B, cut off for good, renews it no more
            b._claims.clear()
        store.delete(nick_key("ann"))
        b._beat()  # as its heartbeat may right then (one still holding the claim would take it again)
        assert a.claim_nick("ann", 2)
    for lease in (LEASE, 1.0):
        engine = RedisEngine(redis_server.url, lease=lease)  # not started: its grace alone
        try:
            assert engine._move_grace == min(MOVE_GRACE, lease * (NICK_LEASES - 0.5)) < lease * NICK_LEASES
        finally:
            engine.close()


def test_a_lost_moved_message_lets_the_old_client_go_after_the_grace(redis_server):
    """B takes ann over but its "moved" message to A is lost: A's beat finds her claim moved and
    keeps her (no 1012, no let-go), then lets her old client go once the grace is over; B keeps
    her nick and room."""
    with two_processes(redis_server.url, ["r1"], move_grace=600) as (a, b, hub_a, _hub_b):
        ann_on_a(a, hub_a)
        session = b.find_session("tok")
        publish = b._pub

        def moved_lost(channel, data):
            return 0 if b'"moved"' in data else publish(channel, data)

        b._pub = moved_lost
        assert set(b.take_session(session, 7)) == {"r1"}
        a._beat()
        assert (hub_a.lost, hub_a.moved) == ([], [])
        end_grace(a, 1)
        a._beat()
        assert hub_a.wait_moved() == [1] and hub_a.lost == []
        assert b.members("r1") == ["ann"] and not a.claim_nick("ann", 2)


def test_a_lost_claim_whose_marker_could_not_be_read_is_settled_by_the_next_beat(redis_server):
    """A beat finds ann's claim held by someone else but fails to read whether a resume moved it:
    the next beat reads it (none) and closes her (1012) rather than leaving her with the nick."""
    with two_processes(redis_server.url, []) as (a, _b, hub_a, _hub_b), \
            redis.Redis.from_url(redis_server.url) as store:
        assert a.claim_nick("ann", 1)

        def cut_off(*args):
            raise redis.ConnectionError("cut off")

        a._redis.get = cut_off  # first: every beat from now on fails to read the marker
        store.set(nick_key("ann"), "someone.0:3:ann")  # taken while A was cut off
        with pytest.raises(redis.ConnectionError):
            a._beat()
        assert hub_a.lost == []
        del a._redis.get
        a._beat()
        assert hub_a.lost == [1] and hub_a.moved == []


def renamed_in_r1_only(a: RedisEngine, hub_a: ProcessHub) -> dict:
    """A's client 1, ann in r1 and r2 with a session under token "tok", renames to anna: the new
    claim and session, then r1 told, r2 not yet. Returns the `nick` event."""
    for room in ("r1", "r2"):
        a.announce(room, protocol.presence(room, "join", "ann"), Meta((hub_a.process_id, 1)))
    assert a.claim_nick("ann", 1)
    a.keep_session(1, "tok", "ann", "")
    assert a.claim_nick("anna", 1)
    a.keep_session(1, "tok", "anna", "")
    change = {"type": "nick", "old": "ann", "nick": "anna"}
    a.announce("r1", change, Meta((hub_a.process_id, 1), change="c1"))
    return change


def test_a_resume_during_a_rename_waits_for_it_and_takes_every_room(redis_server):
    """ann, in r1 and r2 on A, renames to anna; a resume reaches B after A told r1 but before r2
    (Registry._rename: the new claim, the session, then room by room). B's find_session waits for
    the rename to reach r2 and the take-over gets both rooms under anna; a resume that may not wait
    (rename_wait 0, or a rename that never finishes) gets the rooms already renamed only."""
    with two_processes(redis_server.url, ["r1", "r2"]) as (a, b, hub_a, _hub_b):
        change = renamed_in_r1_only(a, hub_a)
        assert b.rename_wait == 2  # PROTOCOL.md: a resume waits for a rename "up to 2 s"
        b.rename_wait = 0
        assert b.find_session("tok").rooms == ("r1",)  # r2 still knows her as ann

        b.rename_wait = 60  # only the rename's end ends the wait, on a machine of any speed
        looks, found = [], []
        smembers = b._redis.smembers

        def looked(*args):  # each look at A's rooms; the second is B waiting for the rename
            looks.append(args)
            return smembers(*args)

        b._redis.smembers = looked
        finder = threading.Thread(target=lambda: found.append(b.find_session("tok")))
        finder.start()
        wait_for(lambda: len(looks) >= 2, timeout=30)
        assert finder.is_alive()
        a.announce("r2", change, Meta((hub_a.process_id, 1), change="c1"))
        finder.join(30)
        session = found[0]
        assert (session.nick, session.rooms) == ("anna", ("r1", "r2"))
        assert set(b.take_session(session, 7)) == {"r1", "r2"}
        assert b.members("r1") == ["anna"] and b.members("r2") == ["anna"]


def test_a_resume_on_a_closing_process_does_not_wait_for_a_rename(redis_server):
    """A resume that finds a rename half-way while its process is closing looks once and answers
    with the rooms renamed so far, rather than looking again and again (the closed engine's wait
    returns at once) until rename_wait is over."""
    with two_processes(redis_server.url, ["r1", "r2"]) as (a, b, hub_a, _hub_b):
        renamed_in_r1_only(a, hub_a)
        b.rename_wait = 60
        b.close()  # its threads stopped; a connection's thread may still be resuming
        looks = []
        smembers = b._redis.smembers

        def looked(*args):  # each look at A's rooms
            looks.append(args)
            return smembers(*args)

        b._redis.smembers = looked
        assert b.find_session("tok").rooms == ("r1",) and len(looks) == 1


def test_a_left_over_entry_under_an_old_nick_holds_up_no_resume(redis_server):
    """The process's room index holds an entry of ann's connection under an old nick that the
    room no longer knows her by (on a Redis Cluster the index may hold more than is true): a
    resume does not take it for a rename on its way: one look, no wait, her rooms as they are."""
    with two_processes(redis_server.url, ["r1"]) as (a, b, hub_a, _hub_b), \
            redis.Redis.from_url(redis_server.url) as store:
        ann_on_a(a, hub_a)
        owner = b.find_session("tok").owner
        store.sadd(f"roomchat:proc:{owner.rsplit(':', 1)[0]}:rooms", f"r9\nannie\n{owner}")
        b.rename_wait = 60
        looks = []
        smembers = b._redis.smembers

        def looked(*args):
            looks.append(args)
            return smembers(*args)

        b._redis.smembers = looked
        assert b.find_session("tok").rooms == ("r1",) and len(looks) == 1


def test_a_retake_keeps_a_session_again_unless_a_resume_elsewhere_took_it(redis_server):
    """After a retake (a new lease, or a Redis that restarted), A keeps ann's session again under
    its lease; one a resume elsewhere (B) holds is left alone, one Redis lost stays lost."""
    with two_processes(redis_server.url, []) as (a, _b, _hub_a, _hub_b), \
            redis.Redis.from_url(redis_server.url) as store:
        assert a.claim_nick("ann", 1)
        a.keep_session(1, "tok", "ann", "")
        key = session_key("tok")
        kept = store.get(key)
        store.pexpire(key, 5_000)
        a.rekeep_session(1)
        assert store.get(key) == kept and 5_000 < store.pttl(key) <= 30_000
        store.delete(key)  # lost with Redis's data
        a.rekeep_session(1)
        assert store.get(key) is None
        store.set(key, b"B's take-over")
        a.rekeep_session(1)
        assert store.get(key) == b"B's take-over"
