"""One module per request type; HANDLERS maps a message's `type` to its `handle(ctx, msg)`.

A handler checks its fields and calls one Registry method. It never sees sockets or frames.
"""

from handlers import chat, dm, history, join, leave, nick, ping, rooms, who

HANDLERS = {m.TYPE: m.handle for m in (nick, join, leave, chat, dm, rooms, who, history, ping)}
