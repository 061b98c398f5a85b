"""The registry of one process among several on a shared engine (Redis): what crosses processes.

python-socketio's shape: `ClusterRegistry` is the one-process `Registry` with the steps that
cross processes overridden, so the one-process path has no cluster branches. The engine (a
`ClusterEngine`, engines/redis.py) is then also the directory: who holds which nick, who is in
which room, where a DM goes.

- Nicks are claimed in the engine before they are used here, and given back when let go.
- A room is subscribed when its first local member joins, unsubscribed when its last leaves.
- `who`, `rooms`, a kick's target and `joined.members` come from the engine (every process).
- A kick or ban is followed by its target's presence `leave` on every process when the engine
  says it took a member out (`Meta.removed`), not only where the target is connected.
- A DM to a nick held elsewhere goes through the engine; nobody received it: `no_such_user`.
- A resume token works on every process: its session (owner, nick, identity, and the read
  markers of a client without a token: rooms/marks.py) is kept in the engine. The process the
  client reaches takes over the nick claim and the memberships (their owner changes in Redis,
  the members stay: no presence) and the old process drops the old connection (`let_go`: close
  4002; its leaves and its release of the nick find another owner and do nothing). Asked by a
  message that may be lost, or not sent (a take-over cut off after the claim moved): the engine's
  heartbeat then lets the old connection go itself, a grace after it found the claim moved
  (engines/redis.py MOVE_GRACE), so no client here keeps a nick it no longer holds. What is the
  connection's own (slow mode's pacing, the rate limit, bans and mutes bound to it) starts
  afresh, as on a new connection (rooms/client.py).

Fencing (DESIGN-NOTES 1). A process's liveness is a lease in the engine. The engine's heartbeat
finds out when the lease was lost (the process was paused or cut off long enough to be reaped by
another, and its members announced gone) or when one of its nick claims was lost, and calls
`retake` (on the heartbeat thread, no lock held): every local client takes its nick again and
re-enters its rooms (the others see it join again). A client whose nick someone else took
meanwhile is closed with 1012, so it reconnects and picks a nick again; nobody ever has two
holders of one nick. Called by the engine's threads: `retake`, `lose_nick`, `let_go`, `memberships`.
"""

import bisect
import logging
import uuid

from chatserver import protocol
from chatserver.engines.base import Meta, Unavailable
from chatserver.errors import ChatError
from chatserver.protocol import CloseCode, fold_nick
from chatserver.rooms.client import Client
from chatserver.rooms.registry import Hold, Registry, unavailable

TAKE_TIMEOUT = 8.0  # seconds a token holder waits for its nick to be let go on another process

log = logging.getLogger("roomchat.cluster")


class ClusterRegistry(Registry):
    """`Registry` over a cluster engine (`engine.cluster` is True). Methods as Registry's."""

    # -- nicks -------------------------------------------------------------------------------

    def _guest_name(self) -> str:
        return f"guest-{uuid.uuid4().hex[:6]}"  # unique across processes without asking one another

    def _claim(self, client: Client, nick: str) -> bool:
        return self._ask_engine(lambda: self._engine.claim_nick(nick, client.id))

    def _release(self, client: Client, nick: str) -> None:
        self._engine.release_nick(nick, client.id)

    def _take(self, client: Client, nick: str) -> str:
        if not self._ask_engine(lambda: self._engine.take_nick(nick, client.id, TAKE_TIMEOUT)):
            raise ChatError("unavailable", f"The nick {nick!r} is still held by another connection; try again.")
        return nick

    def _unseat_guest(self, nick: str) -> None:
        super()._unseat_guest(nick)  # here, at once; on another process, when it hears of it:
        self._ask_engine(lambda: self._engine.unseat_guest(nick))

    # -- rooms -------------------------------------------------------------------------------

    def _leaver(self, target: Client | None, nick: str, meta: Meta) -> str | None:
        # the room's stream says whether the kick or ban took a member out (engine's ANNOUNCE):
        # every process, the target's or not, gives its members the same leave at the same place
        return nick if meta.removed else None

    def _entered(self, name: str) -> None:
        self._engine.subscribe(name)

    def _emptied(self, name: str) -> None:
        self._engine.unsubscribe(name)

    def _members(self, name: str) -> list:
        return self._ask_engine(lambda: self._engine.members(name))

    def _room_size(self, name: str) -> int:
        return self._engine.member_count(name)  # Raises Unavailable: a typing notice is then dropped

    def _members_at(self, name: str, hold: Hold) -> list:
        return self._engine.members(name)  # Raises Unavailable: join answers it

    def _room_list(self, after: str | None, most: int) -> tuple[int, list]:
        rooms = [(r["room"], r["members"]) for r in self._ask_engine(self._engine.rooms)]
        return len(rooms), [r for r in rooms if after is None or r[0] > after][:most]

    def _dm_elsewhere(self, nick: str, event: dict) -> str:
        to = self._ask_engine(lambda: self._engine.send_dm(nick, event))
        if to is None:
            raise ChatError("no_such_user", f"Nobody called {nick!r} is connected.")
        return to

    def _hand_to_newcomer(self, nick: str) -> None:
        super()._hand_to_newcomer(nick)  # a holder here
        # A holder on another process P. No interleaving loses the DM: P claims the nick before
        # it takes the DMs waiting (connect, auth, a resume's take-over, retake), and the claim
        # is read here after keep_dm returned. Either P's take came after the keep, and took
        # it; or it came before, so P's claim came before the keep, hence before this read,
        # which finds it (unless she let go of the nick since: then it waits for her next
        # connection) and asks P, whose hand_waiting then takes it (or finds it taken already:
        # each is handed out once). A connection P has claimed for but not registered yet is
        # skipped there, and takes after registering: later than the keep too. A failure here
        # or a lost message leaves the DM kept for her next connection.
        try:
            self._engine.hand_kept_dms(nick)
        except Unavailable as exc:
            log.warning("DMs kept for %s not handed out on another process: %s", nick, exc)

    def hand_waiting(self, client_id: int) -> None:
        """A DM was kept on another process for this local client's nick as it connected: hand
        it the DMs waiting for its token (none, or a client gone or without a token: nothing).
        Called on a thread of the engine's own (on its listener's message)."""
        with self._lock:
            client = self._clients.get(client_id)
            identity = client.identity if client is not None else None
        if identity is not None:
            self._hand_waiting(client, identity)

    # -- resume on any process ---------------------------------------------------------------

    def _resume_elsewhere(self, client: Client, resume: str, identity, token: str) -> bool:
        session = self._ask_engine(lambda: self._engine.find_session(resume))
        if session is None or session.identity != (fold_nick(identity.nick) if identity is not None else ""):
            return False  # a stolen token alone does not take over a token holder
        rooms = session.rooms[: self._max_rooms]
        marks = self._marks.welcome(identity)
        with self._lock:
            # a client here with that nick: the one this process has yet to let go (it moved away
            # and came back), or the session is stale; the engine's claim says which
            stale = self._nicks.get(fold_nick(session.nick))
            for name in rooms:  # members now, receiving nothing until welcomed: held from the start
                self._room(name).members[client] = Hold(at=0)
                client.rooms.add(name)
        taken, failure = None, None
        try:
            for name in rooms:
                self._entered(name)
            taken = self._engine.take_session(session._replace(rooms=rooms), client.id)
        except Unavailable as exc:
            failure = exc
        if taken is not None and stale is not None:
            self.let_go(stale.id)  # the claim was not its: it moved before, its let-go is on its way
        if taken is not None:
            self._keep_session(client, token, session.nick)  # before the token is given
        with self._lock:
            emptied = [self._remove_member(client, name) for name in rooms if taken is None or name not in taken]
            if taken is not None:
                client.nick = session.nick
                self._clients[client.id] = client
                self._nicks[fold_nick(client.nick)] = client
                for name, seq in taken.items():  # where each stream stands, for a re-join's history
                    self._seqs[name] = max(self._seqs.get(name, 0), seq)
                self._welcome(client, resumed=True, token=token, marks=marks)
                for name in sorted(taken):
                    room = self._rooms[name]
                    hold, room.members[client] = room.members[client], None
                    if hold.frames:  # the rooms' events since it was placed
                        client.send(b"".join(hold.frames))
                log.info("%s resumed here from %s", client.nick, session.owner)
        for name, empty in emptied:
            if empty:
                self._emptied(name)
        if failure is not None:
            raise unavailable(failure)
        return taken is not None

    def _keep_session(self, client: Client, token: str | None = None, nick: str | None = None) -> None:
        with self._lock:
            token, nick, identity = token or client.token, nick or client.nick, client.identity
        if token is not None:
            self._engine.keep_session(client.id, token, nick, fold_nick(identity.nick) if identity is not None else "")

    def _end_session(self, client: Client) -> None:
        self._engine.end_session(client.id)

    def let_go(self, client_id: int) -> None:
        """The client resumed on another process, which holds its nick and rooms now: close its old
        connection here with 4002 and forget it (its leaves and its nick's release find another
        owner in the engine and change nothing; those of rooms a take-over cut off never moved
        announce its leave there). Called on a thread of the engine's (its listener's, on the
        resume's message, or its heartbeat's, once the grace after a moved claim is over);
        twice for one client, the second call does nothing."""
        with self._lock:
            client = self._clients.get(client_id)
        if client is not None:
            client.conn.close(CloseCode.REPLACED, "replaced by a new connection")
            self.disconnect(client)
            log.info("%s resumed on another process; its old connection is closed with %d", client.nick,
                     CloseCode.REPLACED)

    # -- fencing: called by the engine's heartbeat thread, no lock held ------------------------

    def retake(self) -> None:
        """The engine lost this process's lease (it was reaped) and has a new one: take every
        local client's nick again and put it back into its rooms; close (1012) a client whose
        nick someone else holds now. Its resume session is kept again under the new lease (a
        resume elsewhere finds it), and a token holder gets the DMs kept for it while this process
        was taken for gone. The leaves and nick changes that a client makes after the look taken
        here first wait in the engine until it is taken back (`engine.retaken`), its nick releases
        until this is over (engines/redis.py `_holding`), so they are carried out after the joins
        made from that look, never undone by them. Raises Unavailable (the heartbeat tries again)."""
        with self._lock:  # a room it is still joining is left to that join
            clients = [(c, c.nick, sorted(name for name in c.rooms if self._placed(c, name)))
                       for c in self._clients.values()]
        self._engine.retaking([client.id for client, _nick, _rooms in clients])
        for client, nick, rooms in clients:
            if not self._engine.claim_nick(nick, client.id, retake=True):
                self.lose_nick(client.id)
                self._engine.retaken(client.id)
                continue
            with self._lock:
                here = client.id in self._clients
            if here:  # its session first: once its rooms see it back, a resume elsewhere finds it
                self._engine.rekeep_session(client.id)
            for name in rooms:  # (none it left since the look: the engine holds that leave)
                self._engine.rejoin(name, protocol.presence(name, "join", nick), self._meta(client))
            self._engine.retaken(client.id)  # what it did meanwhile, now: a resume elsewhere finds that
            if not here:
                continue  # gone meanwhile: its release, held in the engine, follows
            if client.identity is not None:
                self._hand_waiting(client, client.identity)
        log.warning("lease taken again: %d clients back in their rooms", len(clients))

    def memberships(self, after: str | None, most: int) -> list:
        """[(room, [(nick, client id)])]: the connected clients placed in the stream (`_placed`;
        not one a resume is still taking over) of up to `most` rooms with local members, by
        name, those after `after` (None: from the first). Called by the engine's repair thread
        (engines/redis.py `_repair`), no lock held."""
        with self._lock:  # names are kept sorted: only a slice of them under the lock
            start = 0 if after is None else bisect.bisect_right(self._names, after)
            return [(name, [(c.nick, c.id) for c in self._rooms[name].members
                            if self._clients.get(c.id) is c and self._placed(c, name)])
                    for name in self._names[start:start + most]]

    def _placed(self, client: Client, name: str) -> bool:
        """True when `client` is a member of room `name` and not a newcomer whose join has yet to
        find its place in the stream (a re-join's or a resume's hold is a member's; lock held)."""
        room = self._rooms.get(name)
        if room is None or client not in room.members:
            return False
        hold = room.members[client]
        return hold is None or hold.at is not None

    def lose_nick(self, client_id: int) -> None:
        """Someone else holds this client's nick now (its claim was lost while this process was
        cut off): close it with 1012 and forget it, so it reconnects (a resume finds nothing to
        take back) and picks a nick again."""
        with self._lock:
            client = self._clients.get(client_id)
        if client is not None:
            log.warning("%s: nick taken over elsewhere while this process was cut off; closing 1012", client.nick)
            # forgotten at once: its resume token must not bring the lost nick back
            self.drop(client, CloseCode.SERVICE_RESTART, "your nick was taken while this server was cut off; reconnect")
