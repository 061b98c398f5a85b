"""Small helpers shared by the reference server, the load generator and the driver; free_port,
PortTaken and on_free_port serve the tests too (tests/services.py), for every program started on a
port of its own."""

import re
import resource
import socket

URL_RE = re.compile(rb"ws://127\.0\.0\.1:(\d+)/")


def raise_nofile_limit():
    """Lift the soft RLIMIT_NOFILE to the hard limit: 10,000 sockets exceed the usual soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def find_port(text):
    """The port from the `ws://127.0.0.1:PORT/` line a server prints once it listens, or None."""
    match = URL_RE.search(text)
    return int(match.group(1)) if match else None


def free_port():
    """A port nothing listens on now (bound, then released) for a server that cannot take port 0.
    Another process may take it before that server binds it: start the server with on_free_port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortTaken(Exception):
    """A program started on a free port did not get it: another process took the port first."""


PORT_TRIES = 5  # a port is lost only to a process that binds it between free_port() and the program


def on_free_port(start, what, tries=PORT_TRIES, find=None):
    """start(port) on a free port (from find(), free_port() by default), again on a new one each
    time it raises PortTaken, `tries` times at most; returns what start returns. `start` stops what
    it started before it raises. After the last try raises PortTaken naming `what` and why each
    port was lost."""
    lost = []
    for _ in range(tries):
        try:
            return start((find or free_port)())
        except PortTaken as exc:
            lost.append(str(exc))
    raise PortTaken(f"{what} did not get any of {tries} free ports: " + "; ".join(lost))
