"""Small helpers shared by the reference server, the load generator and the driver."""

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
    """A port nothing listens on now (bound, then released) for a server that cannot take port 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
