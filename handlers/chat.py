"""chat: say something in a room; every member, the sender included, gets it with its seq."""

from chatserver.errors import ChatError
from chatserver.protocol import require_room, require_text
from chatserver.rooms.registry import ChatRequest

TYPE = "chat"


def handle(ctx, msg):
    handle_many(ctx, [msg])


def handle_many(ctx, msgs):
    """Chats that arrived together: each checked on its own, all sent in one registry step.
    A refused one becomes an error reply in its place, so replies keep the order of requests."""
    requests = []
    for msg in msgs:
        try:
            requests.append(ChatRequest(require_room(msg), require_text(msg, ctx.config.max_text_chars), msg.get("id")))
        except ChatError as exc:
            requests.append(ChatRequest(None, None, msg.get("id"), refused=exc))
    ctx.registry.chat_many(ctx.client, requests)
