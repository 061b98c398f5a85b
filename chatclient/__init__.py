"""roomchat's terminal client: `python roomchat.py client [URL] --nick NICK --room ROOM`.

The pure parts (command parsing, rendering, session state, pacing) are separate from the I/O in
`terminal.py`, so they can be tested without a socket. It speaks protocol v1 only, like any
other client, and imports nothing from the server's `chatserver` package.
"""
