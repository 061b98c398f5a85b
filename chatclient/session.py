"""The terminal client's state across connections, and what to send after a reconnect. No I/O:
the caller feeds in typed lines and server events, prints what comes back and sends the
requests that `take_request()` hands out.

Resume rule (the web page follows the same one): after a reconnect we send our nick and, for
every room we were in, a `join` with `after` = the last seq we showed, and hold everything else
back until each of those `joined` replies is in. A chat that was in flight when the connection
dropped is sent again only if the resumed history does not hold it already, so nothing is lost
or shown twice. If the new `welcome` carries another epoch, the old seqs mean nothing: the
rooms are joined afresh, without `after`.

Resume token: each `welcome` carries one; the next connection presents the newest in its URL
(`?resume=`). If the server still holds our client (a drop it has not noticed yet), the new
`welcome` says `resumed`: nick and rooms are ours already, so no nick request goes out and the
rooms see no leave and join.

Identity rule: nothing goes out under a nick the user did not choose. Typed lines wait until the
server has answered the nick request. If a reconnect finds our nick still held (the server has not
yet noticed that the old connection is gone), we keep asking for it every NICK_RETRY seconds
until it is free, and typed lines wait for it; `/nick OTHER` stops the wait.

Refusals: every request the server refuses (and, in `strict` mode for pipes, every line that
cannot become a request) is recorded in `refused`, so the run can end with status 1 and say what.
"""

import itertools
import time
from collections import deque

from chatclient import render
from chatclient.commands import HELP, UsageError, parse
from chatclient.events import problem

JOIN_SHOW = 20  # messages of a room's history printed when we join it
NICK_RETRY = 2.0  # seconds between requests for a nick the server still holds for our old connection
MODERATION = ("topic", "kick", "ban", "mute", "mode")  # operators' requests: a refusal names what was refused
ON_MESSAGE = ("edit", "delete", "react")  # requests on one message (by seq): a refusal names it
TYPING_QUIET = 30.0  # seconds: "ann is typing" is printed once, again only after ann's next chat or this long
SEARCH_LIMIT = 20  # matches asked for by /search

# Every event type the server sends (schema/events.json) -> the method that shows it, or None for
# one the session deliberately does not handle (why, beside it). A test holds this table to the schema.
EVENTS = {
    "welcome": None,  # read by terminal.py when a connection opens (Session.connected); a later one is a contract break
    "nick": "_on_nick",
    "joined": "_on_joined",
    "presence": "_on_presence",
    "left": "_on_left",
    "chat": "_on_chat",
    "dm": "_on_dm",
    "rooms": "_on_rooms",
    "who": "_on_who",
    "history": "_on_history",
    "pong": "_on_pong",
    "error": "_on_error",
    "auth": None,  # the client never sends `auth` (a token goes in the URL): an `auth` reply is unexpected
    "topic": "_on_topic",
    "kick": "_on_kick",
    "ban": "_on_kick",
    "mute": "_on_mute",
    "mode": "_on_mode",
    "edit": "_on_stored",
    "delete": "_on_stored",
    "react": "_on_stored",
    "typing": "_on_typing",
    "mark": "_on_mark",
    "search": "_on_search",
}


class Session:
    """Rooms, nick, seqs and queued requests of one user, kept across reconnects."""

    def __init__(self, nick: str | None = None, room: str | None = None, strict: bool = False,
                 clock=time.monotonic):
        self.nick = None  # what the server calls us now
        self.wanted_nick = nick  # what we asked for; asked again after every reconnect
        self.room = None  # the current room: where plain lines go
        self.rooms: dict[str, int | None] = {}  # rooms we are in -> last seq shown (None: reload)
        self.epoch = None
        self.limits: dict = {}
        self.strict = strict  # a pipe: a line that cannot be sent is a refusal, a refused --nick stops it
        self.refused: list[str] = []  # "what: why" for each refused request
        self.quitting = False
        self.connections = 0  # welcomes seen so far
        self.resume_token = None  # from the last `welcome`: `?resume=` on the next connection
        self.topics: dict[str, str] = {}  # room -> its topic, from `joined` and `topic` events
        self.modes: dict[str, dict] = {}  # room -> {"moderated": bool, "slow": seconds}, from `joined` and `mode`
        self.marks: dict[str, int] = {}  # room -> read up to this seq, as the server keeps it (welcome, joined, mark)
        self._typing: dict = {}  # (room, nick lower-cased) -> clock() when "is typing" was printed
        self._search: dict | None = None  # the last /search: room, q and (once answered) before
        self._clock = clock
        self._granted = None  # the last nick the server gave us at our request
        self._gate = False  # typed lines wait: a nick request is not answered yet
        self._reclaim = False  # ... and it asks back the nick our old connection still holds
        self._retry_at = None  # clock() time of the next request for that nick
        self._told_held = False  # the user was told that we wait for it
        self._nick_id = None  # id of the nick request sent on connecting
        self._abandoned = False  # a refused --nick in a pipe: later lines are not read
        self._ids = itertools.count(1)
        self._resume: deque = deque()  # requests that go first on a new connection
        self._outbox: deque = deque()  # everything else, in the order it was typed
        self._inflight: dict = {}  # id -> request sent whose reply has not come yet
        self._unconfirmed: list = []  # chats that were in flight when the connection dropped
        self._waiting: set = set()  # rooms whose resumed `joined` has not come yet
        if room:
            self._cmd_join(room)

    # -- the connection's life ------------------------------------------------------------------

    def connected(self, welcome: dict) -> list[str]:
        """A new connection said `welcome`: queue the nick and room joins that restore us. After
        a `resumed` welcome the server kept our nick and rooms: the joins (with `after`) only
        fetch what we missed, and a room whose `leave` the drop interrupted is left again."""
        resumed = welcome.get("resumed") is True
        lines = [render.notice("reconnected" + ("; the server kept your nick and rooms" if resumed else ""))] \
            if self.connections else []
        self.connections += 1
        self.resume_token = welcome.get("resume")  # the newest one: presented on the next reconnect
        if self.epoch is not None and welcome.get("epoch") != self.epoch:
            lines.append(render.notice("the server's history was reset; reloading your rooms"))
            self.rooms = dict.fromkeys(self.rooms)
        self.epoch = welcome.get("epoch")
        self.nick = welcome["nick"]
        self.limits = welcome.get("limits", {})
        marks = welcome.get("marks")
        if isinstance(marks, dict):
            self.marks.update({r: s for r, s in marks.items() if isinstance(s, int) and not isinstance(s, bool)})
        self._resume.clear()
        self._gate = bool(self.wanted_nick and self.wanted_nick != self.nick)
        self._reclaim = self._gate and self.wanted_nick == self._granted
        self._told_held = False
        if self._gate:
            self._resume.append(self._request(type="nick", nick=self.wanted_nick))
            self._nick_id = self._resume[-1]["id"]
        for room, seq in self.rooms.items():
            self._resume.append(self._request(type="join", room=room, **({} if seq is None else {"after": seq})))
        for room in welcome.get("rooms", []) if resumed else ():
            if room not in self.rooms and not any(r["type"] == "join" and r["room"] == room for r in self._outbox):
                self._resume.append(self._request(type="leave", room=room))
        self._waiting = set(self.rooms)
        self._release_unconfirmed()
        return lines

    def disconnected(self) -> None:
        """The connection is gone: sort what was in flight into resent, dropped or unconfirmed."""
        again = []
        for req in self._inflight.values():
            kind = req["type"]
            if kind == "chat":
                self._unconfirmed.append(req)
            elif kind == "react":  # a toggle: sent again it could take back what went through
                self.refused.append(f"{self._describe(req)}: not confirmed before the connection dropped")
            elif kind == "leave":
                self.rooms.pop(req["room"], None)  # the server forgot us anyway
            elif kind not in ("nick", "ping") and not (kind == "join" and req["room"] in self.rooms):
                again.append(req)  # reads, dms and first joins; nick and rejoins come from connected()
        self._inflight.clear()
        self._outbox.extendleft(reversed(again))
        self._resume.clear()
        self._waiting.clear()
        self._retry_at = None

    def tick(self) -> float | None:
        """Queue a due request for our held nick; return seconds until the next one is due, or None."""
        if self._retry_at is None:
            return None
        left = self._retry_at - self._clock()
        if left > 0:
            return left
        self._retry_at = None
        self._resume.append(self._request(type="nick", nick=self.wanted_nick))
        return None

    def take_request(self) -> dict | None:
        """The next request to send, now counted as in flight; None while there is none."""
        if self._resume:
            req = self._resume.popleft()
        elif self._outbox_ready():
            req = self._outbox.popleft()
            if req["type"] == "mark":  # up to the last seq shown now that all before it is answered
                req["seq"] = self.rooms.get(req["room"]) or 0
                if req["seq"] < 1:
                    return self.take_request()  # nothing shown there: nothing to mark
        else:
            return None
        self._inflight[req["id"]] = req
        return req

    def has_request(self) -> bool:
        return bool(self._resume or self._outbox_ready())

    def _outbox_ready(self) -> bool:
        """A typed request may go: the rooms are back, our nick is settled, and a /mark waits
        until everything sent before it is answered (so it covers what that showed)."""
        if not self._outbox or self._waiting or self._gate:
            return False
        return self._outbox[0]["type"] != "mark" or not self._inflight

    @property
    def done(self) -> bool:
        """Quitting, and everything we sent has been answered."""
        return self.quitting and not (self._resume or self._outbox or self._inflight or self._unconfirmed)

    def undelivered(self) -> int:
        """Chat and dm messages not yet confirmed by the server."""
        queued = itertools.chain(self._outbox, self._inflight.values(), self._unconfirmed)
        return sum(1 for req in queued if req["type"] in ("chat", "dm"))

    # -- typed lines ----------------------------------------------------------------------------

    def handle_line(self, line: str) -> list[str]:
        """Queue what a typed line asks for; return the lines to print right away."""
        if self._abandoned:
            return []
        try:
            command = parse(line)
        except UsageError as exc:
            return self._refuse_line(line, str(exc))
        if command is None:
            return []
        return getattr(self, "_cmd_" + command.name)(*command.args) or []

    def _refuse_line(self, line: str, why: str) -> list[str]:
        """A line that cannot be sent: say why; with a pipe, it is a refusal."""
        if self.strict:
            self.refused.append(f"{render.safe(line[:40])!r}: {render.safe(why)}")
        return [render.error(why)]

    def _cmd_say(self, text: str):
        if self.room is None:
            why = "--room ROOM or a /join ROOM line must come first" if self.strict else "/join ROOM first"
            return self._refuse_line(text, f"You are in no room; {why}.")
        self._queue(type="chat", room=self.room, text=text)

    def _cmd_join(self, room: str):
        self.room = room
        self._queue(type="join", room=room)

    def _cmd_leave(self, room: str | None = None):
        room = room or self.room
        if room is None:
            return [render.error("You are in no room.")]
        if room == self.room:
            self.room = next((r for r in reversed(self.rooms) if r != room), None)
        self._queue(type="leave", room=room)

    def _cmd_nick(self, nick: str):
        self.wanted_nick = nick
        if self._reclaim:  # stop waiting for the held nick: this one goes first instead
            self._reclaim, self._retry_at = False, None
            self._resume.append(self._request(type="nick", nick=nick))
        else:
            self._queue(type="nick", nick=nick)

    def _cmd_msg(self, nick: str, text: str):
        self._queue(type="dm", to=nick, text=text)

    def _cmd_who(self, room: str | None = None):
        if not (room or self.room):
            return [render.error("Which room? /who ROOM")]
        self._queue(type="who", room=room or self.room)

    def _cmd_rooms(self):
        self._queue(type="rooms")

    def _cmd_history(self, count: int):
        if self.room is None:
            return [render.error("You are in no room; /join ROOM first.")]
        self._queue(type="history", room=self.room, limit=count)

    def _cmd_topic(self, text: str | None = None):
        if self.room is None:
            return [render.error("You are in no room; /join ROOM first.")]
        if text is None:
            topic = self.topics.get(self.room)
            said = f"the topic of {render.safe(self.room)}: {render.safe(topic)}" if topic \
                else f"{render.safe(self.room)} has no topic"
            return [render.notice(said)]
        self._queue(type="topic", room=self.room, topic=text)

    def _moderate(self, kind: str, nick: str, *rest):
        if self.room is None:
            return [render.error("You are in no room; /join ROOM first.")]
        msg = {"type": kind, "room": self.room, "nick": nick}
        if kind != "kick":
            msg["duration"], rest = rest[0], rest[1:]
        if rest:
            msg["reason"] = rest[0]
        self._queue(**msg)

    def _cmd_kick(self, nick: str, reason: str | None = None):
        return self._moderate("kick", nick, *([reason] if reason else []))

    def _cmd_ban(self, nick: str, seconds: int, reason: str | None = None):
        return self._moderate("ban", nick, seconds, *([reason] if reason else []))

    def _cmd_mute(self, nick: str, seconds: int, reason: str | None = None):
        return self._moderate("mute", nick, seconds, *([reason] if reason else []))

    def _cmd_mode(self, *fields):
        if self.room is None:
            return [render.error("You are in no room; /join ROOM first.")]
        if not fields:
            mode = self.modes.get(self.room, {})
            return [render.notice(f"the mode of {render.safe(self.room)}: {render.mode_words(mode)}")]
        self._queue(type="mode", room=self.room, **dict(fields))

    def _cmd_edit(self, seq: int, text: str):
        return self._on_message("edit", seq, text=text)

    def _cmd_delete(self, seq: int):
        return self._on_message("delete", seq)

    def _cmd_react(self, seq: int, emoji: str):
        return self._on_message("react", seq, emoji=emoji)

    def _on_message(self, kind: str, seq: int, **fields):
        if self.room is None:
            return [render.error("You are in no room; /join ROOM first.")]
        self._queue(type=kind, room=self.room, seq=seq, **fields)

    def _cmd_search(self, words: str | None = None):
        if words is None:  # the next page of the last search
            if self._search is None or self._search.get("before") is None:
                return [render.error("Usage: /search WORDS (alone, after a search: its older matches)")]
            self._queue(type="search", limit=SEARCH_LIMIT, **self._search)
            return None
        if self.room is None:
            return [render.error("You are in no room; /join ROOM first.")]
        self._search = {"room": self.room, "q": words}
        self._queue(type="search", room=self.room, q=words, limit=SEARCH_LIMIT)

    def _cmd_mark(self):
        if self.room is None:
            return [render.error("You are in no room; /join ROOM first.")]
        self._queue(type="mark", room=self.room, seq=None)  # the seq is set when it goes (take_request)

    def _cmd_quit(self):
        self.quitting = True

    def abandon(self) -> None:
        """Give up on everything not yet sent, and on lines still to come (a pipe whose --nick was
        refused)."""
        self.quitting = self._abandoned = True
        self._outbox.clear()
        self._unconfirmed.clear()

    def _cmd_help(self):
        return HELP.splitlines()

    def _request(self, **msg) -> dict:
        return {**msg, "id": next(self._ids)}

    def _queue(self, **msg) -> None:
        self._outbox.append(self._request(**msg))

    # -- server events --------------------------------------------------------------------------

    def on_event(self, event) -> list[str]:
        """Update the state from one decoded server event; return the lines to print for it. An
        event that breaks PROTOCOL.md changes nothing and prints one line (a request it answers
        counts as refused, so that the run does not wait for it forever)."""
        msg_id = event.get("id") if isinstance(event, dict) else None
        request = self._inflight.pop(msg_id, None) if isinstance(msg_id, int | str) else None
        found = problem(event)
        name = EVENTS.get(event["type"]) if not found else None
        handler = getattr(self, name) if name else None
        if handler is None:
            found = found or f"an unexpected {event['type']} event"
            if request is not None:
                self.refused.append(f"{self._describe(request)}: the server's answer was {found}")
            return [render.error(f"The server sent {found}; ignored.")]
        return handler(event, request)

    def _new_in_room(self, event: dict) -> bool:
        """Whether a room event (by its seq) is not shown yet; if so, it is now the last one shown."""
        room, seq = event["room"], event["seq"]
        last = self.rooms.get(room)
        if last is not None and seq <= last:
            return False  # already shown (a resumed history overlapping a live event)
        if room in self.rooms:
            self.rooms[room] = seq
        return True

    def _on_chat(self, event: dict, request) -> list[str]:
        if not self._new_in_room(event):
            return []
        self._typing.pop((event["room"], event["from"].lower()), None)
        return [render.chat(event)]

    def _on_stored(self, event: dict, request) -> list[str]:
        """A live edit, delete or react: one line naming the message by its #seq."""
        return [render.stored_event(event)] if self._new_in_room(event) else []

    def _on_typing(self, event: dict, request) -> list[str]:
        """Once per nick and room, until their next chat or TYPING_QUIET seconds."""
        key, now = (event["room"], event["nick"].lower()), self._clock()
        if now - self._typing.get(key, -TYPING_QUIET) < TYPING_QUIET:
            return []
        self._typing[key] = now
        return [render.typing(event)]

    def _on_mark(self, event: dict, request) -> list[str]:
        room = event["room"]
        self.marks[room] = max(self.marks.get(room, 0), event["seq"])
        return [render.notice(f"{render.safe(room)} marked read up to #{event['seq']}")]

    def _on_search(self, event: dict, request) -> list[str]:
        """Matches newest first, as the server sends them."""
        found, room, q = event["messages"], render.safe(event["room"]), render.safe(event["q"])
        older = request is not None and "before" in request
        if self._search is not None and (self._search["room"], self._search["q"]) == (event["room"], event["q"]):
            self._search["before"] = found[-1]["seq"] if found else None
        if not found:
            return [render.notice(f"no {'older ' if older else ''}messages in {room} match {q!r}")]
        more = len(found) >= SEARCH_LIMIT or event.get("truncated")
        newest = f", the {'next' if older else 'newest'} {len(found)}" if more else ""
        then = "; /search alone shows older ones" if more else ""
        head = render.notice(f"{render.plural(len(found), 'message')} in {room} match {q!r}{newest}, "
                             f"newest first{then}:")
        return [head, *(render.chat(e) for e in found if e.get("type", "chat") == "chat")]

    def _on_dm(self, event: dict, request) -> list[str]:
        return [render.dm(event, mine=request is not None or event["from"] == self.nick)]

    def _on_presence(self, event: dict, request) -> list[str]:
        return [render.presence(event)]

    def _on_nick(self, event: dict, request) -> list[str]:
        if request is None and event["old"] != self.nick:
            return [render.renamed(event)]
        self.nick = self.wanted_nick = event["nick"]
        if request is not None:
            self._granted = self.nick
            self._gate = self._reclaim = False
        return [render.notice(f"you are now known as {render.safe(self.nick)}")]

    def _on_topic(self, event: dict, request) -> list[str]:
        self.topics[event["room"]] = event["topic"]
        return [render.moderation(event)]

    def _on_mute(self, event: dict, request) -> list[str]:
        return [render.moderation(event)]

    def _on_mode(self, event: dict, request) -> list[str]:
        self.modes[event["room"]] = {"moderated": event["moderated"], "slow": event["slow"]}
        return [render.moderation(event)]

    def _on_kick(self, event: dict, request) -> list[str]:
        """A kick (or a ban, not lifted) of us takes us out of the room: not rejoined on reconnect."""
        room = event["room"]
        if event["nick"] == self.nick and (event["type"] == "kick" or event.get("duration")):
            self.rooms.pop(room, None)
            if self.room == room:
                self.room = next(reversed(self.rooms), None)
        return [render.moderation(event)]


    def _on_joined(self, event: dict, request) -> list[str]:
        room, history = event["room"], event.get("history", [])
        self.topics[room] = event.get("topic", "")
        self.modes[room] = event.get("mode") or {}
        resumed = room in self._waiting
        last = self.rooms.get(room)
        new = history[-JOIN_SHOW:] if last is None else [e for e in history if e["seq"] > last]
        lines = [] if resumed else [render.members(room, event.get("members", []), joined=True)]
        if not resumed and (event.get("topic") or render.mode_words(self.modes[room]) != "open"):
            lines.append(render.notice(f"{render.safe(room)}: topic: {render.safe(event.get('topic') or '(none)')}; "
                                       f"mode: {render.mode_words(self.modes[room])}"))
        lines += self._batch(new)
        mark = event.get("mark")
        if isinstance(mark, int) and not isinstance(mark, bool):
            self.marks[room] = max(self.marks.get(room, 0), mark)
        unread = [e for e in history if e.get("type", "chat") == "chat" and e["seq"] > self.marks.get(room, 1 << 62)
                  and not e.get("deleted") and e["from"].lower() != (self.nick or "").lower()]
        if not resumed and unread:
            more = "+" if history and self.marks[room] < history[0]["seq"] - 1 else ""
            lines.append(render.notice(f"{len(unread)}{more} unread in {render.safe(room)} since you last read "
                                       f"(#{self.marks[room]}); /mark when read"))
        if event.get("truncated") and last is not None:  # on a first join: older ones left out, as always
            lines.append(render.notice("more messages were missed than the server replays; /history shows the latest"))
        self.rooms[room] = history[-1]["seq"] if history else (last or 0)
        if resumed:
            self._drop_stored(room, new)
            self._waiting.discard(room)
            self._release_unconfirmed()
        return lines

    def _on_left(self, event: dict, request) -> list[str]:
        self.rooms.pop(event["room"], None)
        where = f"; now in {render.safe(self.room)}" if self.room else ""
        return [render.notice(f"you left {render.safe(event['room'])}{where}")]

    def _on_rooms(self, event: dict, request) -> list[str]:
        return [render.rooms(event.get("rooms", []))]

    def _on_who(self, event: dict, request) -> list[str]:
        return [render.members(event["room"], event.get("members", []))]

    def _on_history(self, event: dict, request) -> list[str]:
        messages = event["messages"]
        chats = [e for e in messages if e.get("type", "chat") == "chat"]
        return [render.history(event["room"], len(chats)), *self._batch(messages)]

    @staticmethod
    def _batch(items: list) -> list[str]:
        """History items as lines: chats in their current state; an edit, delete or react only when
        its message is not among them (else that message shows its result already)."""
        chats = {e["seq"] for e in items if e.get("type", "chat") == "chat"}
        return [render.chat(e) if e.get("type", "chat") == "chat" else render.stored_event(e)
                for e in items if e.get("type", "chat") == "chat" or e["target"] not in chats]

    def _on_pong(self, event: dict, request) -> list[str]:
        return []

    def _on_error(self, event: dict, request) -> list[str]:
        kind = request["type"] if request else None
        said = event.get("message") or event["code"]
        if kind in MODERATION or kind in ON_MESSAGE:  # one line that says what was refused
            said = f"{self._describe(request)} refused: {said}"
        message = render.error(said)
        if kind == "nick" and self._reclaim and event["code"] == "nick_taken":
            first, self._told_held = not self._told_held, True
            self._retry_at = self._clock() + NICK_RETRY
            return [self._held_notice()] if first else []
        if request is not None:
            self.refused.append(f"{self._describe(request)}: {render.safe(event.get('message') or event['code'])}")
        if kind == "nick":
            asked_at_connect = request["id"] == self._nick_id
            self.wanted_nick = self.nick
            self._gate = self._reclaim = False
            if asked_at_connect and self.strict:
                self.abandon()
                return [message, render.error("Nothing was sent, so that nothing is posted under another nick.")]
        elif kind == "join" and request["room"] not in self.rooms:
            if self.room == request["room"]:
                self.room = next(reversed(self.rooms), None)
        elif kind == "join" and request["room"] in self._waiting:  # a room we could not get back into
            self.rooms.pop(request["room"])
            self._waiting.discard(request["room"])
            self._release_unconfirmed()
        return [message]

    def _held_notice(self) -> str:
        return render.notice(
            f"your nick {render.safe(self.wanted_nick)} is still held by your previous connection; asking for it "
            f"every {NICK_RETRY:g} s until it is free (you are {render.safe(self.nick)} meanwhile, and what you "
            f"type waits; /nick OTHER to stop waiting)")

    @staticmethod
    def _describe(request: dict) -> str:
        """A request in a few words, for the list of refusals."""
        kind = request["type"]
        target = request.get("room") or request.get("to") or request.get("nick")
        what = {"chat": "message to", "dm": "direct message to", "nick": "nick", "join": "join", "leave": "leave",
                "who": "who", "history": "history of", "topic": "topic of", "mode": "mode of", "search": "search in",
                "mark": "mark of"}.get(kind, kind)
        if kind in ON_MESSAGE:
            return f"{kind} of #{request['seq']} in {render.safe(request['room'])}"
        if kind in ("kick", "ban", "mute"):
            return f"{kind} {render.safe(request['nick'])} in {render.safe(request['room'])}"
        return f"{what} {render.safe(target)}" if target else what

    # -- resending chats after a reconnect --------------------------------------------------------

    def _drop_stored(self, room: str, resumed: list) -> None:
        """Forget unconfirmed chats to `room` that the resumed history shows the server stored."""
        ours = {n.lower() for n in (self.nick, self._granted) if n}  # sent as either, if a reconnect renamed us
        stored = [e["text"] for e in resumed if e.get("type", "chat") == "chat" and e["from"].lower() in ours
                  and isinstance(e.get("text"), str)]
        keep = []
        for req in self._unconfirmed:
            if req["room"] == room and req["text"] in stored:
                stored.remove(req["text"])
            else:
                keep.append(req)
        self._unconfirmed = keep

    def _release_unconfirmed(self) -> None:
        """Once every room is resumed, chats the server never stored go first, in their order."""
        if not self._waiting and self._unconfirmed:
            self._outbox.extendleft(reversed(self._unconfirmed))
            self._unconfirmed = []
