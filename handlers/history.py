"""history: page through a room's stored events (chats as they are now, edits, deletes, reactions)."""

from chatserver.protocol import history_limit, optional_seq, require_room

TYPE = "history"


def handle(ctx, msg):
    ctx.registry.history(
        ctx.client,
        require_room(msg),
        before=optional_seq(msg, "before"),
        after=optional_seq(msg, "after"),
        limit=history_limit(msg),
        reply_id=msg.get("id"),
    )
