#!/usr/bin/env python3
"""roomchat: a room-based chat server over WebSocket, one thread per client.

    python roomchat.py                 # serve on ws://127.0.0.1:8765/ (see --help)
    python roomchat.py client --room lobby   # the terminal client
    python roomchat.py selftest URL    # check a server against protocol v1
    python roomchat.py token --nick ann --rooms lobby --ttl 1h [--op]   # print an identity token
    python roomchat.py invite --rooms class,lobby --uses 40 --ttl 8h [--op]   # print a class invite link
    python roomchat.py export --room class [--since 2026-12-01] [--format md|jsonl|html] [--db FILE]

The subcommands are the table COMMANDS: `--help` lists them from it, `main` runs them from it.
"""

import errno
import importlib
import logging
import resource
import signal
import sys
import threading

from chatserver.app import ChatServer
from chatserver.config import from_args
from chatserver.engines.base import EngineError
from chatserver.ops import logs, trace
from chatserver.rooms.dispatch import Dispatcher
from chatserver.transport.tls import TlsSetupError
from handlers import BATCH_HANDLERS, HANDLERS

# name: (module, function(argv) -> exit status, one line for --help). Imported only when run.
COMMANDS = {
    "client": ("chatclient.terminal", "main", "the terminal client: chat in rooms from a shell or a pipe"),
    "selftest": ("chatclient.selftest", "main", "check a running server against protocol v1 (exit 0: all passed)"),
    "token": ("chatserver.rooms.identity", "token_main", "print a signed identity token for a nick (needs the secret)"),
    "invite": ("chatserver.rooms.invites", "invite_main", "print a class invite link: N uses, some rooms"),
    "export": ("chatserver.ops.export", "export_main", "write a room's transcript (md, jsonl or html) to stdout"),
}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what systemd, Docker and kill send
THREAD_STACK_BYTES = 512 * 1024  # many clients means many threads; 8 MiB stacks waste address space


def raise_open_file_limit() -> None:
    """Each client is a socket: lift the soft limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(argv) -> int:
    # First: a SIGINT/SIGTERM during start-up is kept, not lost (a background job of a script has
    # SIGINT ignored until a handler is set), and acted on as soon as the server has started.
    # Later ones (Ctrl-C pressed twice, a supervisor's second SIGTERM) change nothing: the
    # shutdown is bounded by its grace anyway, so the first one has both ignored from then on.
    stop = threading.Event()

    def on_stop_signal(*_) -> None:
        for signum in STOP_SIGNALS:
            # SIG_IGN, not a Python handler: the interpreter's exit puts the default action back
            # for a Python handler (ending the process with -15 or -2 if one lands then: CPython's
            # `_PySignal_Fini`) and leaves SIG_IGN alone. And no handler runs again, so a flood of
            # signals cannot nest handlers in each other until a RecursionError.
            signal.signal(signum, signal.SIG_IGN)
        stop.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)
    config = from_args(argv, commands={name: line for name, (_, _, line) in COMMANDS.items()})
    logs.configure(config.log_level, config.log_format)  # replaces websocket_server's basicConfig()
    if config.trace:
        trace.enable()
    raise_open_file_limit()
    threading.stack_size(THREAD_STACK_BYTES)
    try:
        server = ChatServer(config, Dispatcher(HANDLERS, BATCH_HANDLERS))
    except OSError as exc:
        hint = ("; is roomchat already running there? Stop it, or give this one another --port"
                if exc.errno == errno.EADDRINUSE else "")
        print(f"roomchat: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 2
    except (EngineError, TlsSetupError) as exc:
        print(f"roomchat: {exc}", file=sys.stderr)
        return 2
    print(f"history in {server.engine.location}", flush=True)
    server.start()
    print(f"roomchat listening on {server.url}", flush=True)
    here, there = server.page_urls()
    print(f"open {here} in your browser", flush=True)
    if there is not None:
        print(f"from other machines: {there}", flush=True)
    log = logging.getLogger("roomchat")
    log.info("answering Host names: %s", server.transport.policy.check_host.describe())
    # A signal that lands on another thread only sets a flag; the main thread runs the handler
    # when it next wakes, so it must not block forever (stop.wait() alone hung now and then).
    while not stop.wait(0.25):
        pass
    log.info("shutting down")
    server.shutdown()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module, function, _ = COMMANDS[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
