"""search: a room's stored chats whose text has every word of `q` (as word prefixes), newest first."""

from chatserver.protocol import history_limit, optional_seq, require_query, require_room

TYPE = "search"


def handle(ctx, msg):
    ctx.registry.search(
        ctx.client,
        require_room(msg),
        require_query(msg),
        before=optional_seq(msg, "before"),
        limit=history_limit(msg),
        reply_id=msg.get("id"),
    )
