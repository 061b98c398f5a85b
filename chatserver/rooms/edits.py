"""Edit, delete and react: who may change which chat, and the event that does it (PROTOCOL.md,
"Edit, delete and react").

Each request becomes a stored room event (engine.amend): it takes the room's next seq, changes
its chat in the same write (engines/base.py `amended`), and reaches every member in stream
order, so history and a resume show the same chats as the live stream. The rules, checked here
against the chat as the engine has it (`engine.message`) when the request is handled:

- only members of the room (the Registry checks that: `not_in_room`);
- the target must be a chat of the room, not deleted, still kept: else `no_such_message`;
- edit: your own chat (its `from` and your nick compared folded), within `edit_window` seconds
  of its `ts` (else `forbidden`, `too_late`); a muted member gets `forbidden` and a member of a
  moderated room `moderated`, as for a chat;
- delete: your own chat within the window, whatever the room's rules; an operator of the room
  (a token with `op`) deletes any chat at any time;
- react: toggles your reaction (the event's `on` says whether you react after it); a muted
  member gets `forbidden`; reacting is allowed in a moderated room; a new emoji on a chat that
  has MAX_REACTIONS different ones is `too_many_reactions`.

A check and the write are not one step: an edit that races a delete of its chat may be stored
after it, and then changes nothing (stored without its text); the engine applies every event to
the chat as it is when the event is written, so all members and every engine agree.
No lock here; the methods run on the requesting connection's thread.
"""

import time

from chatserver import protocol
from chatserver.errors import ChatError
from chatserver.protocol import MAX_REACTIONS, fold_nick


def check(kind: str, room: str, target: int, chat: dict | None, nick: str, rule, operator: bool,
          window: float, now: float | None = None, **fields) -> dict:
    """The event for `nick`'s edit, delete or react (`kind`) of the chat at seq `target` of `room`,
    `chat` as the engine has it (engine.message: None when there is none). `rule`: the room's
    rule for this member's chats (Moderation.chat_rule: a ChatError when muted or moderated, else
    slow mode seconds, which do not apply here); `operator`: an operator of the room; `window`:
    seconds a chat stays editable; `fields`: the edit's `text` or the react's `emoji`.

    Raises ChatError no_such_message, forbidden, too_late, moderated, too_many_reactions."""
    if chat is None or chat["type"] != "chat" or chat.get("deleted"):
        raise ChatError("no_such_message", f"There is no chat {target} in {room!r} (deleted, or no longer kept).")
    own = fold_nick(chat["from"]) == fold_nick(nick)
    late = (time.time() if now is None else now) - chat["ts"] > window
    if kind == "delete":
        if not (operator or own):
            raise ChatError("forbidden", "You can delete only your own chats (operators may delete any).")
        if late and not operator:
            raise ChatError("too_late", f"Chats can be deleted only within {_minutes(window)} of being sent.")
        return protocol.amend_event(kind, room, target, nick)
    if isinstance(rule, ChatError) and (kind == "edit" or rule.code == "forbidden"):
        raise rule  # muted (forbidden) for edit and react; moderated for edit only
    if kind == "edit":
        if not own:
            raise ChatError("forbidden", "You can edit only your own chats.")
        if late:
            raise ChatError("too_late", f"Chats can be edited only within {_minutes(window)} of being sent.")
        return protocol.amend_event(kind, room, target, nick, text=fields["text"])
    emoji = fields["emoji"]
    reactions = chat.get("reactions", {})
    on = fold_nick(nick) not in {fold_nick(n) for n in reactions.get(emoji, ())}
    if on and emoji not in reactions and len(reactions) >= MAX_REACTIONS:
        raise ChatError("too_many_reactions", f"That chat has {MAX_REACTIONS} different reactions already; "
                                              "add one of those.")
    return protocol.amend_event(kind, room, target, nick, emoji=emoji, on=on)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"
