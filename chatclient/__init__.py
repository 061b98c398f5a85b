"""roomchat's terminal client: `python roomchat.py client [URL] --nick NICK --room ROOM`.

The pure parts (command parsing in `commands.py`, rendering in `render.py`, the shapes of server
events in `events.py`, session state in `session.py`, pacing in `pacer.py`, the command line,
addresses and TLS options in `options.py`) are separate from the I/O in
`terminal.py` (connection, threads) and `console.py` (prompt or pipe), so they can be tested without
a socket. It speaks protocol v1 only, like any other client, and imports nothing from the server's
`chatserver` package.
"""
