"""Defects found by fault hunting (tests/faults harness: real processes, a real redis-server):
the fixed ones are checked here; each one still open is documented by an xfail test."""

import contextlib
import threading
import time

import pytest
import redis

from chatserver.engines.redis_scripts import LEASES, room_key
from tests.faults.harness import LEASE, LEASE_ARGS, FaultyRedis, Proxy
from tests.faults.invariants import check
from tests.helpers import SECRET, Peer, events_until, members_in, token, wait_for, with_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def count_commands(rig, marker: bytes) -> tuple:
    """Watch Redis (MONITOR) from a thread of its own: (a list that grows by one for each command
    holding `marker`, a function that stops the watching)."""
    seen, stop = [], threading.Event()
    client = rig.redis.client()
    monitor = client.monitor().__enter__()  # listening before this returns

    def watch():
        for command in monitor.listen():
            if stop.is_set():
                return
            if marker in command["command"].encode():
                seen.append(command)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def done():
        stop.set()
        client.ping()  # one more command wakes the watcher
        thread.join(5)
        monitor.__exit__(None, None, None)
        client.close()

    return seen, done


@contextlib.contextmanager
def during_a_retake(rig):
    """A (proxied) with ten clients l0..l9 in lobby and bob on B: A SIGSTOPped past its lease
    (reaped: bob sees them leave), then continued with Redis's reply to its retake's first claim
    (l0's nick) held. Yields (bob, A's clients) inside that window; after the body, waits for a
    leave of A's to reach Redis, then lets Redis answer again."""
    a, b = rig.node("A", proxied=True), rig.node("B")
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    clients = [rig.client(a, f"l{i}", nick=f"l{i}", rooms=["lobby"]) for i in range(10)]
    a.pause()
    bob.wait(lambda: bob.rooms["lobby"] == ["bob"], 10 * LEASE, "A's members leaving (A reaped)")
    a.proxy.hold_replies_after(b":l0\r\n")  # the retake's claim of l0's nick: its first
    seen, done = count_commands(rig, b'"event":"leave"')
    try:
        a.resume()
        assert a.proxy.held.wait(10 * LEASE), "A's retake never asked for l0's nick"
        yield bob, clients
        bob.wait(lambda: len(seen) >= 1, 10, "a leave of A's reaching Redis")
    finally:
        a.proxy.heal()
        done()


def test_a_leave_during_a_retake_is_not_undone_by_it(rig):
    """A is SIGSTOPped past its lease (reaped: its members leave) and continued; while its retake
    waits for Redis (its first claim's reply held), its clients leave lobby (answered `left`, the
    leaves reach Redis); once Redis answers again, lobby's `who` on every process, and every
    member's view, is the clients really in it: nobody who left is back."""
    with during_a_retake(rig) as (_bob, leavers):
        for client in leavers:
            assert client.request(type="leave", room="lobby").get("type") == "left"
    check(rig, ["lobby"])


@contextlib.contextmanager
def ann_on_a_bob_on_b(redis_server, make_server, spawn, peers):
    """Process A (in this test's process, its link to Redis through a Proxy) with ann in lobby,
    process B (it takes operators' tokens) with bob in lobby: yields (a, b, ann, bob, the proxy)."""
    proxy, a = Proxy(redis_server.port), None
    try:
        a = make_server(redis=proxy.url, redis_lease=LEASE)
        b = spawn("--redis", redis_server.url, *LEASE_ARGS, "--token-secret", SECRET)
        ann, bob = peers(a.url, timeout=30), peers(b.url, timeout=30)
        ann.set_nick("ann")
        ann.join("lobby")
        bob.set_nick("bob")
        assert sorted(bob.join("lobby")["members"]) == ["ann", "bob"]
        yield a, b, ann, bob, proxy
    finally:
        if a is not None:
            a.shutdown(timeout=0.5)  # before its link to Redis goes
        proxy.close()


@contextlib.contextmanager
def retake_held(a, proxy, bob, at: str = "start"):
    """A's link is cut past its lease, so B reaps A (bob sees ann leave); once the link is back,
    A's registry takes its clients back and the test holds that retake open `at` its "start"
    (before it looks at its clients), its first "rejoin" (ann's nick and session taken back, not
    yet her room), its first "retaken" (ann back in her room, what she did meanwhile not yet
    written: engine.retaken) or its "end" (everyone back, the retake not over: what they write
    meanwhile waits as during any retake). Yields what bob saw so far, inside that window (A's
    listener subscribed again); on exit lets the retake go on and waits until it is over and
    what waited for it is written."""
    inside, go, done, expired = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    retake, rejoin, retaken = a.registry.retake, a.engine.rejoin, a.engine.retaken

    def hold(where: str) -> None:  # the first retake waits for `go` there (longer than any wait of the test)
        if where == at and not inside.is_set():
            inside.set()
            deadline = time.monotonic() + 60
            # a retake runs on the heartbeat thread: while it is held, A's lease is renewed here, or
            # B would reap A again (the retake held for long, not A gone)
            while not go.wait(LEASE / 4):
                a.engine._scripts["beat"](keys=[LEASES], args=[a.engine._lease, int(LEASE * 1000), 1])
                if time.monotonic() > deadline:
                    expired.set()
                    return

    def held_retake():  # `done` once one is over
        hold("start")
        retake()
        hold("end")
        done.set()

    def held_rejoin(*args):
        hold("rejoin")
        return rejoin(*args)

    def held_retaken(*args):
        hold("retaken")
        return retaken(*args)

    a.registry.retake, a.engine.rejoin, a.engine.retaken = held_retake, held_rejoin, held_retaken
    proxy.blackhole()
    seen = events_until(bob, lambda e: e["type"] == "presence" and e["nick"] == "ann")
    assert seen[-1]["event"] == "leave", seen  # A reaped
    proxy.heal()
    try:
        assert inside.wait(30), "A never took its clients back"
        wait_for(lambda: a.engine._pubsub is not None, timeout=30)  # its listener is back: a join subscribes
        yield seen
    finally:
        go.set()
    assert not expired.is_set(), "the test's body outlasted the retake it held: what it saw came after it"
    wait_for(lambda: done.is_set() and not a.engine._deferred, timeout=30)


def in_lobby_everywhere(redis_server, peers, servers) -> list:
    """lobby's members as each of `servers` answers `who` and as Redis holds them: [sorted nicks]."""
    seen = [sorted(peers(server.url, timeout=30).ask(type="who", room="lobby")["members"]) for server in servers]
    with redis.Redis(port=redis_server.port) as store:
        seen.append(sorted(m.decode() for m in store.zrange(room_key("lobby", "members"), 0, -1)))
    return seen


def presence_of(nick: str, bob, seen: list) -> list:
    """The presence events of `nick` bob saw in lobby (`seen`, and what reaches him up to his own
    chat: once he has its copy, he had what came before)."""
    bob.send(type="chat", room="lobby", text="all here?")
    seen = seen + events_until(bob, lambda e: e["type"] == "chat" and e["text"] == "all here?")
    return [e["event"] for e in seen if e["type"] == "presence" and e["nick"] == nick]


def test_a_leave_and_a_join_again_during_a_retake_end_with_the_member_in_the_room(redis_server, make_server, spawn,
                                                                                  peers):
    """Process A's link to Redis is cut past its lease, so B reaps A (bob sees ann leave lobby).
    Once the link is back, A's registry takes its clients back (held inside `retake` by the
    test), and meanwhile ann leaves lobby and joins it again: `joined`, or `unavailable` and then
    `joined` once the retake is over. Afterwards ann is in lobby on both processes' `who` and in
    Redis's members, and bob saw her leave, then join, and nothing more."""
    with ann_on_a_bob_on_b(redis_server, make_server, spawn, peers) as (a, b, ann, bob, proxy):
        with retake_held(a, proxy, bob) as seen:
            assert ann.ask(type="leave", room="lobby")["type"] == "left"
            again = ann.ask(type="join", room="lobby")
        if again["type"] == "error":  # refused while her leave waited: joined once it is written
            assert again["code"] == "unavailable", again
            again = ann.ask(type="join", room="lobby")
        assert again["type"] == "joined" and sorted(again["members"]) == ["ann", "bob"], again
        assert in_lobby_everywhere(redis_server, peers, (a, b)) == [["ann", "bob"]] * 3
        assert presence_of("ann", bob, seen) == ["leave", "join"]


@pytest.mark.parametrize("noticed", [True, False], ids=["closed", "dropped"])
@pytest.mark.parametrize("held", ["rejoin", "end"])
def test_a_resume_during_a_retake_brings_back_no_room_left(redis_server, make_server, spawn, peers, held, noticed):
    """A is reaped (bob sees ann leave lobby) and takes its clients back, the retake held by the
    test before it puts ann back in lobby (`rejoin`) or once it has (`end`: bob sees her join);
    meanwhile ann leaves lobby (`left`), her connection goes (closed, or dropped without A
    noticing) and she resumes on B with her token before A's retake is over. She is not brought
    back into lobby: her welcome does not list it (a drop A has not noticed is `resumed`), and
    once all is written she is in lobby on neither process's `who` nor in Redis's members, her
    chat there is `not_in_room`, and bob saw her leave, and if she was back, join and leave."""
    with ann_on_a_bob_on_b(redis_server, make_server, spawn, peers) as (a, b, ann, bob, proxy):
        with retake_held(a, proxy, bob, at=held) as seen:
            assert ann.ask(type="leave", room="lobby")["type"] == "left"
            if held == "end":  # she is back: her leave is written at once (answered before it is)
                seen += events_until(bob, lambda e: e.get("event") == "leave" and e["nick"] == "ann")
            if noticed:
                ann.close()
                wait_for(lambda: a.registry.stats()["connections"] == 0, timeout=30)
            again = peers(f"{b.url}?resume={ann.welcome['resume']}", timeout=30)
        assert "lobby" not in again.welcome.get("rooms", []), again.welcome
        assert noticed or again.welcome.get("resumed") is True, again.welcome
        assert in_lobby_everywhere(redis_server, peers, (a, b)) == [["bob"]] * 3
        assert again.ask(type="chat", room="lobby", text="still here?").get("code") == "not_in_room"
        assert presence_of("ann", bob, seen) == {"rejoin": ["leave"], "end": ["leave", "join", "leave"]}[held]


def test_a_client_new_during_a_retake_resumes_in_no_room_it_left(redis_server, make_server, spawn, peers):
    """dave connects to A while A takes its clients back (the retake held once everyone it
    looked at is back), joins lobby, leaves it and resumes on B with his token before the
    retake is over: the retake never looked at him, so nothing of his waits for it; his `resumed`
    welcome lists no room, lobby is ann and bob everywhere, and bob saw dave join and leave."""
    with ann_on_a_bob_on_b(redis_server, make_server, spawn, peers) as (a, b, _ann, bob, proxy):
        with retake_held(a, proxy, bob, at="end") as seen:
            dave = peers(a.url, timeout=30)
            dave.set_nick("dave")
            assert dave.ask(type="join", room="lobby")["type"] == "joined"
            assert dave.ask(type="leave", room="lobby")["type"] == "left"
            seen += events_until(bob, lambda e: e.get("event") == "leave" and e["nick"] == "dave")  # written
            again = peers(f"{b.url}?resume={dave.welcome['resume']}", timeout=30)
        assert again.welcome.get("resumed") is True and again.welcome["rooms"] == [], again.welcome
        assert in_lobby_everywhere(redis_server, peers, (a, b)) == [["ann", "bob"]] * 3
        assert presence_of("dave", bob, seen) == ["join", "leave"]


def test_a_resume_after_a_retake_wrote_a_leave_brings_back_no_room_left(redis_server, make_server, spawn, peers):
    """The other order: ann leaves lobby while A takes its clients back (held at its start), her
    connection drops without A noticing, and she resumes on B once A's retake
    is over and her leave written: her `resumed` welcome lists no room, she is in lobby nowhere,
    and bob saw her leave (reaped) and nothing more (the retake did not put her back)."""
    with ann_on_a_bob_on_b(redis_server, make_server, spawn, peers) as (a, b, ann, bob, proxy):
        with retake_held(a, proxy, bob) as seen:
            assert ann.ask(type="leave", room="lobby")["type"] == "left"
        again = peers(f"{b.url}?resume={ann.welcome['resume']}", timeout=30)
        assert again.welcome.get("resumed") is True and again.welcome["rooms"] == [], again.welcome
        assert in_lobby_everywhere(redis_server, peers, (a, b)) == [["bob"]] * 3
        assert again.ask(type="chat", room="lobby", text="still here?").get("code") == "not_in_room"
        assert presence_of("ann", bob, seen) == ["leave"]


def test_a_dm_kept_while_its_holder_connects_elsewhere_reaches_it(rig):
    """bob on A writes to ann (a token's nick, offline): A has read that nobody holds ann when
    ann connects on B with her token (A's reply held meanwhile), so the DM is kept (`stored`);
    ann, connected, gets it all the same (as a DM kept while she connects to the same process
    does: Registry._hand_to_newcomer), not only at her next connection."""
    a, b = rig.node("A", proxied=True), rig.node("B")
    first = rig.client(b, "ann0", token_for="ann")  # her token is seen: ann is reserved
    first.close()
    bob = rig.client(a, "bob", nick="bob")
    bob.wait(lambda: bob.request(type="dm", to="ann", text="probe").get("stored"), 10, "ann offline")
    a.proxy.hold_replies_after(b"roomchat:nick:ann\r\n")  # A's look-up of who holds ann
    msg_id = bob.send(type="dm", to="ann", text="see you at 10?")
    try:
        assert a.proxy.held.wait(10), "A never looked ann up"
        ann = rig.client(b, "ann", token_for="ann")
        assert ann.nick == "ann"
    finally:
        a.proxy.heal()
    reply = bob.answer(msg_id)
    assert reply.get("type") == "dm" and reply.get("stored") is True, reply
    ann.wait(lambda: ann.received("dm", text="see you at 10?"), 10, "the DM to ann")


def test_redis_back_without_an_acknowledged_join_converges(rig):
    """bob on B and ann on A chat in lobby; carol on A joins lobby (answered `joined`, everyone
    sees her join); Redis is killed -9 and restarted from an append-only file cut before that
    join (no chat was lost). Afterwards membership converges, as after any lost write (docs: every
    client closed with 1012 and back, or kept): `who` on every process equals the clients really
    in lobby, carol included, every member's view agrees, and carol can chat there."""
    a, b = rig.node("A"), rig.node("B")
    ann = rig.client(a, "ann", nick="ann", rooms=["lobby"])
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    carol = rig.client(a, "carol", nick="carol")
    ann.chat("lobby")
    bob.chat("lobby")
    kept = rig.redis.aof_size()
    assert carol.join("lobby").get("type") == "joined"
    bob.wait(lambda: "carol" in bob.rooms["lobby"], 10, "carol's join")
    assert rig.redis.crash_and_lose_tail(kept) > 0, "the append-only file had nothing after the mark to cut"
    answers = []
    for _ in range(100):
        answers.append(bob.chat("lobby"))
        if answers[-1].get("type") == "chat":
            break
        time.sleep(0.3)
    assert answers[-1].get("type") == "chat", answers[-5:]
    check(rig, ["lobby"], then=lambda: [] if (r := carol.chat("lobby")).get("type") == "chat"
          else [f"carol, in lobby as she was told, cannot chat there: {r}"])


def test_the_old_connection_is_closed_when_the_let_go_message_was_lost(rig):
    """ann's connection on A stays open (she resumes from a second device, say) while A's link to
    Redis is cut for a moment, in which ann resumes on B (B's message asking A to let her go
    finds no subscriber); once A's link is back, A still closes the old connection with 4002
    (PROTOCOL.md, On connect), and a DM from bob on A reaches ann on B, not the old connection."""
    a, b = rig.node("A", proxied=True), rig.node("B")
    bob = rig.client(a, "bob", nick="bob", rooms=["lobby"])
    ann = rig.client(a, "ann", nick="ann", rooms=["lobby"])
    a.proxy.blackhole()
    a.proxy.cut()
    try:
        again = Peer(f"{b.url}?resume={ann.resume}", timeout=30)
    finally:
        a.proxy.heal()
    try:
        assert again.welcome.get("resumed") is True and again.nick == "ann", again.welcome
        bob.wait(lambda: bob.chat("lobby").get("type") == "chat", 30, "A back on Redis (a chat acknowledged)")
        ann.wait(lambda: any(code == 4002 for _t, _n, code, _r in ann.closes), 30, "the old connection closed 4002")
        reply = bob.request(type="dm", to="ann", text="which one of you?")
        assert reply.get("type") == "dm", reply
        again.ws.settimeout(10)
        assert again.recv_type("dm")["text"] == "which one of you?"
    finally:
        again.close()


def test_renames_sent_to_a_paused_process_are_not_undone_by_its_retake(rig):
    """A is SIGSTOPped past its lease (reaped: its members leave lobby) while 40 of its clients each
    ask for a new nick; after SIGCONT each is answered `nick`, and lobby's `who` on every process,
    and every member's view, lists the new nicks (none of the old ones)."""
    a, b = rig.node("A"), rig.node("B")
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    movers = [rig.client(a, f"l{i}", nick=f"l{i}", rooms=["lobby"]) for i in range(40)]
    a.pause()
    try:
        bob.wait(lambda: bob.rooms["lobby"] == ["bob"], 10 * LEASE, "A's members leaving (A reaped)")
        sent = [(client, client.send(type="nick", nick=f"m{i}")) for i, client in enumerate(movers)]
    finally:
        a.resume()
    assert [client.answer(msg_id).get("type") for client, msg_id in sent] == ["nick"] * len(movers)
    check(rig, ["lobby"])


def test_a_disconnect_during_a_retake_frees_the_nick(rig):
    """A is SIGSTOPped past its lease (reaped) and continued; while its retake waits for Redis (its
    first claim's reply held), nine of its clients close their connections (their leaves reach Redis); once
    Redis answers again, lobby's `who` on every process is bob and l0 (the clients still there),
    and bob can take each of the gone clients' nicks (a nick of a client that is gone is free)."""
    with during_a_retake(rig) as (bob, movers):
        for client in movers[1:]:  # a close frame and gone (no wait for the echo: Redis's replies are held)
            with client._cond:
                client.gone = client.closed_by_test = True
            client.ws.send_close()
            client.ws.shutdown()

    def free() -> list:
        taken = []
        for client in movers[1:]:
            reply = bob.set_nick(client.label)
            if reply.get("type") == "nick":
                taken.append(client.label)
        wanted = [c.label for c in movers[1:]]
        return [] if taken == wanted else [f"bob could take only {taken} of the gone clients' nicks {wanted}"]

    check(rig, ["lobby"], then=free)


def test_a_nick_change_while_redis_is_stalled_is_unavailable_and_changes_nothing(tmp_path, spawn):
    """docs/cluster.md's faults table: a nick change while Redis is stalled (SIGSTOP) is answered
    `unavailable` once the read times out (the new nick must be claimed in Redis first), and the
    connection keeps its nick: once Redis is back, the room lists it under the old one."""
    service = FaultyRedis(tmp_path)
    server = spawn("--redis", service.url)
    ann = Peer(server.url, timeout=60)
    try:
        ann.set_nick("ann")
        ann.join("lobby")
        service.pause()
        try:
            reply = ann.request(type="nick", nick="anna", id=1)
        finally:
            service.resume()
        assert (reply["type"], reply.get("code"), reply.get("id")) == ("error", "unavailable", 1), reply
        assert ann.request(type="who", room="lobby")["members"] == ["ann"]
    finally:
        ann.close()
        server.stop()  # before its Redis goes
        service.kill()



# Open: a nick change is applied on its process before it is in the room's stream (held there
# until its client is taken back, its rejoin written already; without a retake, for the round
# trip that writes it). A ban landing meanwhile binds and removes by the nick the process has,
# and Redis by the nick the stream has: they disagree on the member (a mute removes nobody: it
# binds by the process's nick, as PROTOCOL.md says, and Redis keeps the member either way).
HELD_RENAME = "a ban between a nick change and its place in the stream: process and Redis disagree"


@pytest.mark.parametrize("target", ["ann", "anna"])
@pytest.mark.parametrize(("kind", "held"), [
    ("ban", "start"), pytest.param("ban", "retaken", marks=pytest.mark.xfail(strict=True, reason=HELD_RENAME)),
    ("ban", "end"), ("mute", "start"), ("mute", "retaken"), ("mute", "end")])
def test_a_ban_or_mute_of_a_nick_changing_during_a_retake_holds_one_member_everywhere(
        redis_server, make_server, spawn, peers, kind, held, target):
    """A (ann and carol in lobby) is reaped and takes its clients back, the retake held by the
    test at its `start` (before it looks: bob and carol see ann leave, the ban or mute, then
    anna join), once it has put ann back but not yet written what she did meanwhile
    (`retaken`: ann join, the ban or mute, then the rename), or at its `end` (the rename written
    at once: ann join, nick, the ban or mute); meanwhile ann becomes anna (answered `nick`) and
    an operator on B bans or mutes `target` (her old or new nick) in lobby. Afterwards lobby's
    members agree on both processes and in Redis, and ann's own chat and join there agree with
    them: a ban takes her out if it named the nick she had there then (her `join` is then
    `forbidden`), a mute leaves her in, and her chat is `forbidden` if it named `anna` (the
    nick, or the connection that had it on A when A delivered the mute: PROTOCOL.md, Moderation);
    bob on B and carol on A saw the joins, the leaves, the rename and the ban or mute in one
    order."""
    with ann_on_a_bob_on_b(redis_server, make_server, spawn, peers) as (a, b, ann, bob, proxy):
        carol = peers(a.url, timeout=30)
        carol.set_nick("carol")
        carol.join("lobby")
        events_until(bob, lambda e: e.get("nick") == "carol")
        op = peers(with_token(b.url, token("op", op=True)), timeout=30)
        with retake_held(a, proxy, bob, at=held) as seen:
            assert ann.ask(type="nick", nick="anna")["type"] == "nick"
            # she is back at the `end`: her rename is written at once (answered before it is)
            heard = events_until(carol, lambda e: e["type"] == "nick") if held == "end" else []
            assert op.ask(type=kind, room="lobby", nick=target, duration=600)["type"] == kind
        members = in_lobby_everywhere(redis_server, peers, (a, b))
        assert members[0] == members[1] == members[2], members
        inside = "anna" in members[0]
        assert inside == (kind == "mute" or (target == "ann" and held != "retaken")), members
        chat = ann.ask(type="chat", room="lobby", text="still here?")
        wanted = "chat" if inside and not (kind == "mute" and target == "anna") else \
            "forbidden" if inside else "not_in_room"
        assert chat.get("code", chat["type"]) == wanted, (members, chat)
        if not inside:
            assert ann.ask(type="join", room="lobby").get("code") == "forbidden"
        streams = []
        for peer, before in ((bob, seen), (carol, heard)):
            peer.send(type="chat", room="lobby", text="in order?")
            events = before + events_until(peer, lambda e: e["type"] == "chat" and e["text"] == "in order?")
            streams.append([e for e in events if e.get("nick") in ("ann", "anna")])
        assert streams[0] == streams[1], streams


@contextlib.contextmanager
def held_announce(server, kind: str):
    """`server`'s (in this test's process) engine holds its first announce of a `kind` event
    until the body ends: yields an Event set once that announce is waiting."""
    announce, entered, go = server.engine.announce, threading.Event(), threading.Event()

    def held(room, event, meta):
        if event["type"] == kind and not entered.is_set():
            entered.set()
            go.wait(30)
        return announce(room, event, meta)

    server.engine.announce = held
    try:
        yield entered
    finally:
        go.set()


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="open: `_drop_member` looks for the target by the nick it has here now")
def test_a_kick_landing_between_a_rename_and_its_write_takes_the_member_out(redis_server, make_server, spawn,
                                                                           peers):
    """ann on A renames to anna; before A writes the rename to Redis, an operator on B kicks ann
    (so the rename, written then, finds no member ann): everyone saw the kick and ann leave, and
    `who` lists carol alone, so anna is out of lobby on A too (her chat there: `not_in_room`)."""
    a = make_server(redis=redis_server.url)
    b = spawn("--redis", redis_server.url, "--token-secret", SECRET)
    ann, carol = members_in([a.url, a.url], peers, ["ann", "carol"])
    op = peers(with_token(b.url, token("op", op=True)), timeout=30)
    with held_announce(a, "nick") as entered:
        ann.send(type="nick", nick="anna", id="n1")
        assert entered.wait(10)
        assert op.request(type="kick", room="lobby", nick="ann")["type"] == "kick"
        assert carol.recv_type("kick")["nick"] == "ann"
        assert carol.recv() == {"type": "presence", "room": "lobby", "event": "leave", "nick": "ann"}
    assert ann.ask(type="nick", nick="anna")["type"] == "nick"  # her rename is written (or refused) by now
    assert carol.ask(type="who", room="lobby")["members"] == ["carol"]
    assert ann.ask(type="chat", room="lobby", text="still in?").get("code") == "not_in_room"


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="open: ANNOUNCE finds a kick's or ban's nick by its exact spelling")
def test_a_kick_of_a_member_who_changed_case_meanwhile_takes_him_out_everywhere(redis_server, make_server,
                                                                                spawn, peers):
    """An operator on A kicks bob (on B); before A writes the kick, bob renames to Bob (a look-alike
    spelling, PROTOCOL.md: kick): Bob gets the kick and is out of lobby, so carol (on B) gets his
    leave right after the kick, and `who` no longer lists him."""
    a = make_server(redis=redis_server.url, token_secret=SECRET)
    b = spawn("--redis", redis_server.url)
    bob, carol = members_in([b.url, b.url], peers, ["bob", "carol"])
    op = peers(with_token(a.url, token("op", op=True)), timeout=30)
    with held_announce(a, "kick") as entered:
        op.send(type="kick", room="lobby", nick="bob", id="k1")
        assert entered.wait(10)
        assert bob.ask(type="nick", nick="Bob")["nick"] == "Bob"
        assert carol.recv_type("nick")["nick"] == "Bob"
    assert op.recv()["id"] == "k1"
    assert bob.recv_type("kick")["nick"] == "bob"
    assert bob.ask(type="chat", room="lobby", text="in?")["code"] == "not_in_room"
    assert carol.recv_type("kick")["nick"] == "bob"
    carol.send(type="chat", room="lobby", text="next")
    assert carol.recv() == {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob"}
    assert carol.ask(type="who", room="lobby")["members"] == ["carol"]
