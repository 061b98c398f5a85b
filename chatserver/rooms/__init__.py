"""rooms/: the chat itself: clients, nicks and rooms, and each room's events fanned out to them.

hub (this process's clients and rooms, the fan-out), registry (what each request does),
connections (connecting, disconnecting, who has which nick), client (one client as the chat sees
it), identity (tokens, reserved nicks, expiry), moderation (topics, kicks, bans, mutes), budgets
(reply size and shared rates), dispatch (raw text -> the handler for its type).

May import: engines.base (the Engine interface, never an engine), config, ops (metrics, trace),
wire (frames, to build a reply's frame), protocol, errors.
"""
