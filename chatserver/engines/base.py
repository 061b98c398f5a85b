"""Engines: what orders, stores and spreads each room's events. The interface.

The Registry (the hub) knows the clients of this process and the rooms they are in. An engine
gives each room one ordered stream and keeps its history. Three engines implement the interface:
`MemoryEngine` (engines/memory.py: tests, `--db :memory:`), `SqliteEngine` (engines/sqlite.py, the default:
one process, history in a file) and `RedisEngine` (engines/redis.py: several processes behave as
one server). The Registry imports none of sqlite3 or redis; app.py picks the engine.

The contract (PROTOCOL.md "What a client can rely on" is the client's side of it):

1. Per room, one ordered stream. `publish` assigns the room's next seq (1, 2, 3, ... with no
   gap, never reused) and the engine hands the event back through `hub.deliver` in seq order.
   `announce` puts a room event that is not stored (presence, nick) into the same stream.
   Whatever the engine hands back for a room, every process delivers in the same order.
   `amend` does the same for an edit, delete or react (protocol.AMEND_EVENTS): it takes the
   room's next seq like a chat, and in the same write changes the chat it is about (`amended`).
2. Stored before delivered: a chat (or edit, delete, react) event reaches `hub.deliver` only once the engine has stored
   it (committed to SQLite, written to Redis). The sender's own copy is its acknowledgement.
3. Nothing is promised across rooms.
4. Room rules and reserved nicks (topics, bans, mutes, modes, nicks reserved by tokens, invite
   uses) are facts of the whole server: what one process sets, every process reads (`set_topic`
   ... `invite_uses`). Moderation events themselves go through `announce`, so they are ordered
   with the chats; the memory and SQLite engines also keep them (NOTICE_TYPES) beside the chats
   for `transcript(room, since)` (`roomchat.py export`: the chats as history items carry them,
   with `edited` and `reactions`, deleted ones left out); export reads Redis's own streams
   instead (engines/redis.py `transcript_of_redis`).

Threads. `publish`, `announce` and the reads are called by connection threads, never while the
Registry lock is held. `hub.deliver` and `hub.reject` are called from the publishing thread
with the memory engine's `_lock` held (so a room's chats reach the hub in seq order), or from the
SQLite writer thread or the Redis listener thread with no engine lock held; so the lock order is
engine -> Registry, and the Registry never calls an engine under its lock.
"""

import bisect
import threading
import time
import uuid
from typing import NamedTuple, Protocol

from chatserver.protocol import MAX_REACTIONS, MAX_REACTORS, fold_nick, search_words


class EngineError(Exception):
    """The engine cannot start (a history file that cannot be used, Redis unreachable).

    The message is one line for the operator; roomchat prints it and exits with status 2.
    """


class Unavailable(Exception):
    """The engine cannot take a request now (commits failing, Redis gone); the client gets an
    `unavailable` error and may try again. The message says why, for the client."""


class RulesChanged(Unavailable):
    """A shared engine (Redis) refused chat writes: since the rules they were checked against
    were read, the room's mode changed or their sender was muted. `chats` ([(sender nick, text,
    Meta)], in order) were not stored; look at the rules again."""

    def __init__(self, chats: list):
        super().__init__("the room's rules changed as the chat was sent")
        self.chats = chats


class Meta(NamedTuple):
    """What the hub needs to know about an event besides the event itself.

    `origin`: (process id, client id) of the connection that caused it, or None.
    `reply_id`: the request's `id`, for the origin's own copy.
    `at`: for an event without a seq (presence, nick), the room's seq at its place in the stream,
    when the engine knows it (Redis); else None and the hub uses the last seq it delivered.
    `change`: a nick change's id, so a peer sharing several rooms hears of it once.
    `echo`: the origin gets its own copy from the stream, with `reply_id`, and counts it in its
    `pending` until then (a moderation event by a member of its room; chats always do).
    `key`: names this request's write (unique within the process): the origin's `pending` holds
    it until the event is delivered or rejected, so each is answered once; the Redis engine also
    uses it as the write's idempotency key.
    `removed`: a kick or ban took its nick out of the room's members, as a cluster engine found
    them when it stored the event (so every process gives the room the same presence leave
    after it: rooms/cluster.py); False from a one-process engine, whose registry knows.
    """

    # engines/redis.py `_meta` makes these positionally (per event, on every process): a new
    # field goes last.
    origin: tuple | None = None
    reply_id: object = None
    at: int | None = None
    change: str | None = None
    echo: bool = False
    key: str | None = None
    removed: bool = False


class Registry(Protocol):
    """What an engine calls back: the rooms' Registry (rooms/registry.py; with a cluster engine,
    rooms/cluster.py's ClusterRegistry). Its `metrics` (ops.metrics.Metrics, taken with
    `metrics.of(registry)` at `start`) is where an engine counts commits, failures and reconnects."""

    process_id: str

    def deliver(self, items: list) -> None:
        """`items`: [(room, event, Meta)] in stream order per room, each to its room's local members."""

    def reject(self, items: list, reason: str) -> None:
        """Published writes that will never be delivered: [(room, event or None, Meta)]; their
        senders are answered `unavailable` (once: one answered already is skipped)."""

    def deliver_dm(self, client_id: int, event: dict) -> bool:
        """A direct message for a local client (Redis: from another process); False if it is gone."""

    def close_all(self, code: int, reason: str) -> None:
        """Close every local client's connection and forget it (the history was reset: 1012)."""

    def has_room(self, name: str) -> bool:
        """True while a local client is in room `name`."""

    def forget(self, names: list) -> set:
        """The engine forgot these rooms (a quota dropped their history): forget their last seqs,
        except for the rooms someone is in now, which it returns."""

    # A cluster engine's registry (ClusterRegistry) also answers these:

    def evict(self, client_id: int) -> None:
        """A token holder elsewhere wants this local client's nick: let go of it."""

    def evict_guest(self, client_id: int, nick: str) -> None:
        """A post with the token of `nick` (this local client's nick) came elsewhere: a client
        without a token lets go of it."""

    def retake(self) -> None:
        """This process lost its lease and has a new one: take the local clients' nicks and rooms
        back. Raises Unavailable (asked again at the next beat)."""

    def lose_nick(self, client_id: int) -> None:
        """Someone else holds this local client's nick now: close it (1012)."""

    def hand_waiting(self, client_id: int) -> None:
        """A DM was kept elsewhere for this local client's nick as it connected: hand it the DMs
        waiting for its token (`take_dms`)."""

    def memberships(self, after: str | None, most: int) -> list:
        """[(room, [(nick, client id)])] of the local members placed in the stream, for up to
        `most` rooms by name after `after` (None: from the first)."""


class Engine(Protocol):
    """The interface every engine implements. See the module docstring for the contract.

    `epoch`: names this history (sent in `welcome`; a client's seqs are valid within it).
    `location`: where the history lives, for the start-up line.
    `cluster`: False for one process (the Registry is then the directory of nicks, rooms and
    members); True when other processes share the engine (Redis), which is then the directory.
    """

    epoch: str
    location: str
    cluster: bool

    def start(self, hub: Registry) -> None:
        """Begin handing events to `hub`. Called once, before any other method."""

    def publish(self, room: str, chats: list, member: bool = True, mode: tuple | None = None) -> None:
        """Store chat events with the room's next seqs, then deliver them, in order.

        `chats`: [(sender nick, text, Meta)], one sender; `member`: False for a chat posted over
        the HTTP API (rooms/posts.py), whose sender is not a member (Redis then skips its fencing
        check); `mode`: the room's (moderated, slow) as `chat_rules` gave it when the sender's
        chats were let through (None: not checked). Raises Unavailable (none of them was stored,
        or, with Redis, the connection broke mid-call: see engines/redis.py), RulesChanged (Redis:
        the mode is no longer `mode`, or the sender is muted now; nothing was stored)."""

    def announce(self, room: str, event: dict, meta: Meta) -> None:
        """Put a presence, nick or moderation event into the room's stream. Raises Unavailable."""

    def amend(self, room: str, event: dict, meta: Meta) -> None:
        """Store an edit, delete or react event (protocol.amend_event; its `seq` is filled in
        here) with the room's next seq and, in the same write, apply it to the chat it targets
        (`amended`: an edit sets its text, a delete removes the text of the chat and of its edits
        from the store, a react sets the nick's reaction); then deliver it, like a chat. An event
        whose chat was deleted meanwhile (or is gone: quotas) is stored and changes nothing; such
        an edit is stored and delivered without its text. Raises Unavailable (nothing stored)."""

    def message(self, room: str, seq: int) -> dict | None:
        """The stored event at `seq` as a history item (a chat in its current state), or None
        when the room has none there (never stored, pruned, forgotten). Raises Unavailable."""

    def read(self, room: str, before: int | None = None, after: int | None = None, limit: int = 50,
             max_bytes: int | None = None) -> list:
        """Stored events with after < seq < before as history items (chats in their current
        state, then edit, delete and react events as stored), oldest first: the first `limit`
        when `after` is given (paging forward), else the last `limit`. `max_bytes` is a hint: an
        engine may stop reading once the texts passed it, but then returns one event more (the
        caller cuts to size and must see that there was more). Raises Unavailable."""

    def search(self, room: str, words: list, before: int | None = None, limit: int = 50,
               max_bytes: int | None = None) -> list:
        """Stored chats of `room` with seq < `before` whose current text has each of `words`
        (protocol.search_words) as the start of one of its words, NEWEST first, at most `limit`;
        `max_bytes` is a hint as for `read`. Raises Unavailable."""

    def health(self) -> str | None:
        """None when the engine accepts writes, else a one-line reason (for /healthz)."""

    def close(self) -> None:
        """Finish what is queued, stop threads, release files and connections. Idempotent."""

    # Room rules and reserved nicks. Nicks are compared folded (protocol.fold_nick); times are
    # Unix times in seconds. Each method Raises Unavailable.

    def reserve_nick(self, nick: str, until: float) -> None:
        """Keep `nick` for the holder of a token for it until `until`; a reservation only grows."""

    def reserved_until(self, nick: str) -> float | None:
        """Until when `nick` is reserved by a token, or None."""

    def set_topic(self, room: str, topic: str) -> None:
        """The room's topic; "" clears it."""

    def topic(self, room: str) -> str:
        """The room's topic, "" when it has none."""

    def restrict(self, room: str, kind: str, nick: str, until: float) -> None:
        """`kind` "ban" or "mute": keep `nick` out of the room, or read-only in it, until `until`
        (a time already past lifts it)."""

    def restricted_until(self, room: str, kind: str, nick: str) -> float | None:
        """Until when `nick` is banned or muted ("ban", "mute") in the room, or None."""

    def set_mode(self, room: str, moderated: bool, slow: int) -> None:
        """The room's mode: `moderated` (only operators chat), `slow` (seconds between a member's chats, 0 off)."""

    def mode(self, room: str) -> tuple[bool, int]:
        """The room's mode as (moderated, slow); (False, 0) by default."""

    def chat_rules(self, room: str, nick: str, fresh: bool = False) -> tuple[float | None, tuple[bool, int]]:
        """What a chat call checks, read together: (`restricted_until(room, "mute", nick)`,
        `mode(room)`). An engine shared by processes may answer from what it read before unless
        `fresh` (for writes that do not check them again as they are stored: edits, reactions)."""

    def use_invite(self, invite: str, uses: int, until: float) -> int | None:
        """Take one of the `uses` of invite `invite` (kept until `until`): the number of this use
        (1 for the first), or None when all are taken."""

    def invite_uses(self, invite: str) -> int:
        """How many uses of `invite` are taken (0 for one never used, or expired)."""

    # Read markers and DMs that wait, per identity: a token's folded nick (protocol.fold_nick).
    # Facts of the whole server, like the rules. Each method Raises Unavailable.

    def set_mark(self, identity: str, room: str, seq: int) -> int:
        """Mark `room` read up to `seq` for `identity`; a mark never goes back. Returns the mark
        now (max of the old one and `seq`). Keeps the MAX_MARKS rooms marked last per identity:
        a new room past that forgets the one marked longest ago."""

    def marks(self, identity: str) -> dict:
        """{room: seq} of `identity`'s marks, the room marked last first (at most MAX_MARKS)."""

    def mark(self, identity: str, room: str) -> int | None:
        """`identity`'s mark in `room`, or None."""

    def keep_dm(self, identity: str, event: dict, most: int) -> bool:
        """Keep a DM `event` for `identity` (offline) until `take_dms`; False, and nothing kept,
        when `most` are waiting already."""

    def take_dms(self, identity: str) -> list:
        """The DM events waiting for `identity`, oldest first, removed from the store in the
        same step (so each is handed out once)."""


# Room events that are not stored and have no place in the stream (no seq, not replayed): an
# engine hands them to the hubs as they come; on Redis they are published, never logged.
EPHEMERAL_TYPES = ("typing",)

# Moderation events an engine also keeps for transcripts (`python roomchat.py export`), beside
# the chats but without a seq of their own: each is placed after the chat seq it followed.
NOTICE_TYPES = ("topic", "kick", "ban", "mute", "mode")


def transcript_order(chats: list, notices: list) -> list:
    """Chats (events with `seq`) and notices ([(seq they followed, event)]) as one list in stream
    order: a notice after the chat it followed and before the next one."""
    keyed = [((e["seq"], 0, 0), e) for e in chats] + [((at, 1, i), e) for i, (at, e) in enumerate(notices)]
    return [e for _key, e in sorted(keyed, key=lambda item: item[0])]


# -- edit, delete, react: how a stored event changes the chat it targets (every engine's fold) --


def amended(chat: dict, event: dict) -> dict:
    """The chat (a history item: a chat event, with `edited`, `reactions` or `deleted` when it has
    them) after `event` (edit, delete or react); `chat` itself when it changes nothing (it is
    deleted). Pure: a client applying the same events in order ends with the same chats.

    edit: `text` becomes the edit's, `edited` its ts. delete: only type, room, from, seq, ts and
    `"deleted": true` are left. react: `event["from"]` (compared folded) is in the emoji's list
    when `on`, else not; an emoji with nobody left goes; a new emoji past MAX_REACTIONS, or a
    nick past MAX_REACTORS of one emoji, is not added."""
    if chat.get("deleted"):
        return chat
    kind = event["type"]
    if kind == "edit":
        return {**chat, "text": event["text"], "edited": event["ts"]}
    if kind == "delete":
        return {"type": "chat", "room": chat["room"], "from": chat["from"], "seq": chat["seq"], "ts": chat["ts"],
                "deleted": True}
    reactions = dict(chat.get("reactions", {}))
    emoji, folded = event["emoji"], fold_nick(event["from"])
    nicks = [nick for nick in reactions.get(emoji, ()) if fold_nick(nick) != folded]
    if event["on"] and (emoji in reactions or len(reactions) < MAX_REACTIONS) and len(nicks) < MAX_REACTORS:
        nicks.append(event["from"])
    if nicks:
        reactions[emoji] = nicks
    else:
        reactions.pop(emoji, None)
    changed = {key: value for key, value in chat.items() if key != "reactions"}
    if reactions:
        changed["reactions"] = reactions
    return changed


def matches(words: list, text: str) -> bool:
    """True when each of `words` (protocol.search_words) starts a word of `text` (one of one
    character: is one). A search looks each word up among the text's words, sorted (bisect),
    so a q of 100 words costs no more than 100 lookups per chat."""
    have = sorted(set(search_words(text)))
    for word in words:
        at = bisect.bisect_left(have, word)  # the first of the text's words >= word: it starts with word if any does
        if at == len(have) or not (have[at].startswith(word) if len(word) > 1 else have[at] == word):
            return False
    return True


def without_text(event: dict) -> dict:
    """An edit as kept once its chat is deleted (or as stored when it was deleted first): no `text`."""
    return {key: value for key, value in event.items() if key != "text"}


class LocalRules:
    """Room rules and reserved nicks for one process (the memory and SQLite engines), as rows
    (scope, kind, key) -> (value, until or None): a topic is (room, "topic", "") -> (text, None),
    a ban or mute (room, "ban" | "mute", folded nick) -> ("", until), a reservation
    ("", "nick", folded nick) -> (nick, until), a mode (room, "mode", "") -> ("<0|1>:<slow>",
    None), the uses taken of an invite ("", "invite", its id) -> (count, the invite's expiry).
    `_rules_lock` guards `_rules`; `_save` writes a
    change through before it is made (the SQLite engine overrides it; Raises Unavailable).
    """

    def _init_rules(self, rows=(), clock=time.time) -> None:
        self._rules_lock = threading.Lock()
        self._rules = {(scope, kind, key): (value, until) for scope, kind, key, value, until in rows}
        self._clock = clock

    def _save(self, key: tuple, value: str | None, until: float | None) -> None:
        """Persist one row (value None: delete it). Nothing to do in memory."""

    def _put(self, key: tuple, value: str | None, until: float | None = None) -> None:
        with self._rules_lock:
            self._save(key, value, until)
            if value is None:
                self._rules.pop(key, None)
            else:
                self._rules[key] = (value, until)

    def _until(self, key: tuple) -> float | None:
        with self._rules_lock:
            row = self._rules.get(key)
            if row is None or row[1] is None:
                return None
            if row[1] <= self._clock():
                del self._rules[key]  # expired: gone here; the file forgets it at the next start
                return None
            return row[1]

    def reserve_nick(self, nick: str, until: float) -> None:
        key = ("", "nick", fold_nick(nick))
        if (self._until(key) or 0) < until:
            self._put(key, nick, until)

    def reserved_until(self, nick: str) -> float | None:
        return self._until(("", "nick", fold_nick(nick)))

    def set_topic(self, room: str, topic: str) -> None:
        self._put((room, "topic", ""), topic or None)

    def topic(self, room: str) -> str:
        with self._rules_lock:
            return self._rules.get((room, "topic", ""), ("", None))[0]

    def restrict(self, room: str, kind: str, nick: str, until: float) -> None:
        self._put((room, kind, fold_nick(nick)), "" if until > self._clock() else None, until)

    def restricted_until(self, room: str, kind: str, nick: str) -> float | None:
        return self._until((room, kind, fold_nick(nick)))

    def set_mode(self, room: str, moderated: bool, slow: int) -> None:
        self._put((room, "mode", ""), f"{int(moderated)}:{slow}" if moderated or slow else None)

    def mode(self, room: str) -> tuple[bool, int]:
        with self._rules_lock:
            moderated, slow = self._rules.get((room, "mode", ""), ("0:0", None))[0].split(":")
        return moderated == "1", int(slow)

    def chat_rules(self, room: str, nick: str, fresh: bool = False) -> tuple[float | None, tuple[bool, int]]:
        return self.restricted_until(room, "mute", nick), self.mode(room)

    def use_invite(self, invite: str, uses: int, until: float) -> int | None:
        key = ("", "invite", invite)
        with self._rules_lock:  # read and count in one step: two people never take the last use
            taken = self._uses_taken(key)
            if taken >= uses:
                return None
            self._save(key, str(taken + 1), until)
            self._rules[key] = (str(taken + 1), until)
            return taken + 1

    def invite_uses(self, invite: str) -> int:
        with self._rules_lock:
            return self._uses_taken(("", "invite", invite))

    def _uses_taken(self, key: tuple) -> int:
        """Lock held."""
        row = self._rules.get(key)
        return 0 if row is None or (row[1] is not None and row[1] <= self._clock()) else int(row[0])


class ClusterEngine(Engine, Protocol):
    """An engine shared by several processes (`cluster = True`: Redis). It is then the directory
    too; each call may go over the network and raises Unavailable when it cannot. Nicks are
    held for local clients (`client_id`); the engine knows which process and lease they are of.

    Presence: `announce` of a presence join/leave or nick event also updates the room's members;
    a join of a nick banned from the room raises ChatError forbidden, atomically with the ban;
    a kick or ban (moderation.removes_member) takes its nick out, and is delivered with
    `Meta.removed` when that nick was a member.
    """

    def claim_nick(self, nick: str, client_id: int, retake: bool = False) -> bool:
        """Take `nick` (compared folded) for local client `client_id`; False if someone holds it.
        `retake`: a claim left by this process's earlier lease counts as free."""

    def take_nick(self, nick: str, client_id: int, timeout: float) -> bool:
        """Claim `nick`, asking whoever holds it to let go (Registry.evict on its process); False
        if it is still held after `timeout` seconds."""

    def release_nick(self, nick: str, client_id: int) -> None:
        """Give `nick` back if `client_id` still holds it; retried until the engine takes it."""

    def unseat_guest(self, nick: str) -> None:
        """A post with `nick`'s token is coming: ask the process of the client holding `nick`,
        if any, to rename it should it have no token (Registry.evict_guest); returns at once."""

    def members(self, room: str) -> list:
        """The nicks in `room` on every process, in join order."""

    def rooms(self) -> list:
        """[{"room": name, "members": count}] of every room with members, by name."""

    def send_dm(self, nick: str, event: dict) -> str | None:
        """Deliver a DM to whichever process holds `nick`; its spelling, or None if nobody has it
        or nobody received it."""

    def hand_kept_dms(self, nick: str) -> None:
        """A DM was just kept for `nick` (`keep_dm`): ask the process of whoever holds `nick` now,
        if another, to hand it out (Registry.hand_waiting there); returns at once."""

    def subscribe(self, room: str) -> None:
        """Start receiving the room's stream here (the first local member joins); returns once
        subscribed, so nothing published afterwards is missed."""

    def unsubscribe(self, room: str) -> None:
        """Stop receiving it (the last local member left), unless a member has joined again."""

    def keep_session(self, client_id: int, token: str, nick: str, identity: str) -> None:
        """Keep local client `client_id`'s resume session (its `token`, `nick`, and the folded nick
        of its identity or "") where every process finds it, in place of its earlier one."""

    def end_session(self, client_id: int) -> None:
        """Forget the client's session (it left)."""

    def find_session(self, token: str) -> "Session | None":
        """The session of `token` held by a live client of any process, or None."""

    def member_count(self, room: str) -> int:
        """How many members room `room` has, on every process."""

    def set_session_mark(self, client_id: int, room: str, seq: int) -> int:
        """Mark `room` read up to `seq` for local client `client_id` (one without a token) with
        its resume session, so a resume on any process finds it; as `set_mark` otherwise (never
        back, MAX_MARKS rooms). Kept as long as the session."""

    def session_mark(self, client_id: int, room: str) -> int | None:
        """Local client `client_id`'s mark in `room` kept with its resume session, or None."""

    def take_session(self, session: "Session", client_id: int) -> dict | None:
        """Move `session`'s nick claim and memberships to local client `client_id`, and ask its
        old process to drop the old connection silently; {room: its seq then} for the rooms it
        is still in, or None when the session changed or ended meanwhile."""


class Session(NamedTuple):
    """A resume session as the cluster engine keeps it: its owner (`<lease>:<client>`), nick,
    identity (folded nick, or ""), the rooms it is in; where it is stored and its stored value
    (compared when it is taken); `marks`, where the read markers of a session without a token
    are kept (the engine's own name for them, the same for every token of the session)."""

    owner: str
    nick: str
    identity: str
    rooms: tuple
    key: str
    value: bytes
    marks: str = ""


def new_epoch() -> str:
    return uuid.uuid4().hex[:16]
