"""rooms/: the chat itself: clients, nicks and rooms, and each room's events fanned out to them.

registry (this process's clients, nicks and rooms under one lock; what each request does; the
fan-out of each room's stream), cluster (the registry of one process among several on Redis:
nick claims, who/rooms/DMs across processes, fencing), client (one client as the chat sees it),
identity (tokens, reserved nicks, expiry), invites (class invite links), moderation (topics,
kicks, bans, mutes, modes), edits (who may edit, delete or react to which chat), typing (typing
notices), marks (read markers), mailbox (DMs that wait for an offline token holder), budgets
(reply size and shared rates), posts (chats posted over the HTTP API, without a connection),
dispatch (raw text -> the handler for its type).

May import: engines.base (the Engine interface, never an engine), config, ops (metrics, trace,
logs), wire (frames, to build a reply's frame), protocol, errors.
"""
