"""handlers/: one module per request type; HANDLERS maps a message's `type` to its `handle(ctx, msg)`.

A handler checks its fields and calls one Registry method. It never sees sockets or frames.
A module may also offer `handle_many(ctx, msgs)` for a run of such requests that arrived together.
May import: rooms (the Registry and its request types), protocol, errors. protocol.REQUEST_TYPES
names every type; tests/unit/test_vocabulary.py holds the two together.
"""

from handlers import (
    auth,
    ban,
    chat,
    delete,
    dm,
    edit,
    history,
    join,
    kick,
    leave,
    mark,
    mode,
    mute,
    nick,
    ping,
    react,
    rooms,
    search,
    topic,
    typing,
    who,
)

MODULES = (nick, join, leave, chat, dm, rooms, who, history, ping, auth, topic, kick, ban, mute, mode, edit, delete,
           react, typing, mark, search)
HANDLERS = {m.TYPE: m.handle for m in MODULES}
BATCH_HANDLERS = {m.TYPE: m.handle_many for m in MODULES if hasattr(m, "handle_many")}
