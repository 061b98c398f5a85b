"""Helpers for the clients' tests: the terminal client as a process with pipes (ClientProcess) or
under a pseudo-terminal read through a terminal emulator (TtyClient), a scriptable fake server
(FakeServer) for hostile or exact server behaviour, and a TCP relay that can drop a connection
on one side only (Relay, used by the page's tests too). Kept apart from tests/helpers.py, which
holds the server's helpers."""

import contextlib
import fcntl
import json
import os
import pty
import queue
import re
import socket
import struct
import subprocess
import termios
import threading
import time

import pyte
from websockets.sync.server import serve

from tests.helpers import AS_IN_A_TERMINAL, ROOMCHAT, roomchat_env, wait_for

CLIENT = [*ROOMCHAT, "client"]


class ClientProcess:
    """The client with its stdin open, so a test can type lines and wait for output lines."""

    def __init__(self, url: str | None, *args: str, env=None):
        argv = [*AS_IN_A_TERMINAL, *CLIENT, *([url] if url else []), *args]  # Ctrl-C as a person's
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, env=env)
        self.lines: list[str] = []
        self.arrivals: list[float] = []  # time.monotonic() when each of `lines` was read
        self._new: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self._new.put((time.monotonic(), line.rstrip("\n")))

    def _take(self, timeout: float) -> None:
        arrived, line = self._new.get(timeout=timeout)
        self.lines.append(line)
        self.arrivals.append(arrived)

    def type(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, text: str, timeout: float = 10, ending: bool = False) -> str:
        """The first line (seen before or arriving within `timeout`) containing, or with
        `ending` ending with, `text`."""
        return self.lines[self.expect_at(text, timeout, ending)]

    def expect_at(self, text: str, timeout: float = 10, ending: bool = False) -> int:
        """As expect(), but the line's index in `lines` (and `arrivals`)."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((n for n, line in enumerate(self.lines) if (line.endswith(text) if ending else text in line)),
                         None)
            if found is not None:
                return found
            try:
                self._take(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r}; got {self.lines}") from None

    def finish(self, timeout: float = 15) -> int:
        """Close stdin (end of input) and return the exit status."""
        self.proc.stdin.close()
        return self.wait(timeout)

    def wait(self, timeout: float = 15) -> int:
        """The exit status, once the process has ended; every output line is in `lines` then."""
        status = self.proc.wait(timeout)
        self._reader.join(5)
        while not self._new.empty():
            self._take(0)
        return status

    def stderr(self) -> str:
        """Everything on stderr; only once the process has ended."""
        return self.proc.stderr.read()

    def kill(self) -> None:
        """Kill it if it still runs, and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)  # it reads stdout until EOF
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()


class TtyClient:
    """The client on a pseudo-terminal of `cols` x `rows`, its output fed to a pyte terminal
    emulator (which also answers the client's cursor position requests), so a test reads the
    screen as a person would see it."""

    def __init__(self, url: str, *args: str, cols: int = 100, rows: int = 24):
        self.screen = pyte.Screen(cols, rows)
        self.screen.write_process_input = self._answer
        self._stream = pyte.ByteStream(self.screen)
        self._lock = threading.Lock()
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = roomchat_env(TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.proc = subprocess.Popen([*CLIENT, url, *args], stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                     env=env, start_new_session=True)
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO once the client has exited and closed the terminal
                return
            if not data:
                return
            with self._lock:
                self._stream.feed(data)

    def _answer(self, text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, text.encode())

    def type(self, keys: str) -> None:
        """Keys as a person types them: "\\r" is Enter, "\\x03" is Ctrl-C."""
        os.write(self.master, keys.encode())

    def rows(self) -> list[str]:
        """The screen's rows, trailing spaces removed."""
        with self._lock:
            return [row.rstrip() for row in self.screen.display]

    def cursor_row(self) -> str:
        with self._lock:
            return self.screen.display[self.screen.cursor.y].rstrip()

    def snapshot(self) -> tuple[list[str], int]:
        """(rows, the cursor's row index), read together so neither is from a later redraw."""
        with self._lock:
            return [row.rstrip() for row in self.screen.display], self.screen.cursor.y

    def wait_for(self, predicate, what: str, timeout: float = 10):
        """Wait until predicate(rows) is truthy; fail showing the screen."""
        deadline = time.monotonic() + timeout
        while not predicate(self.rows()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}; the screen:\n" + "\n".join(self.rows()))
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)
        self.proc.stderr.close()


class FakeServer:
    """A WebSocket server on port 0 that plays `script(conn, received)` for each connection after
    sending `welcome`. `received` is a queue of the decoded messages the client sends, with None
    once the connection is closed; `closes` collects the close code the client sent on each
    connection (None: it closed without one)."""

    WELCOME = {"type": "welcome", "nick": "guest-1", "server": "fake", "epoch": "e1",
               "limits": {"rate_burst": 20, "rate_per_second": 5}}

    def __init__(self, script, welcome=None):
        self.script = script
        self.welcome = welcome or self.WELCOME
        self.closes: list[int | None] = []
        self.connections = 0
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, conn) -> None:
        self.connections += 1
        received: queue.Queue = queue.Queue()
        conn.send(json.dumps(self.welcome))

        def read() -> None:
            with contextlib.suppress(Exception):
                for message in conn:
                    received.put(json.loads(message))
            received.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with contextlib.suppress(Exception):
            self.script(conn, received)
        reader.join(15)
        self.closes.append(conn.close_code)

    def wait_closed(self, count: int = 1, timeout: float = 10) -> list:
        wait_for(lambda: len(self.closes) >= count, timeout=timeout)
        return self.closes

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


def expect_request(received: queue.Queue, kind: str | None, timeout: float = 10) -> dict | None:
    """The next message of type `kind` the client sent (others before it are skipped); with
    kind None, wait until the connection is closed. Raises queue.Empty after `timeout`, and
    ConnectionError if the connection closes first."""
    deadline = time.monotonic() + timeout
    while True:
        message = received.get(timeout=max(0.01, deadline - time.monotonic()))
        if message is None and kind is None:
            return None
        if message is None:
            raise ConnectionError(f"closed before a {kind!r} message")
        if message.get("type") == kind:
            return message


class Relay:
    """A TCP relay on port 0 in front of `port`, for the connections open now and those to come.
    `cut_client_side()` closes what the client sees while the server keeps its end open (the
    server finds out only from its pings); `cut_server_side()` then closes those ends too.
    `go_silent()` stops relaying on the open connections in both directions but closes nothing
    (no FIN, no RST), as a network that drops packets: neither side learns of it. With
    `spend_resume_tokens`, a new connection's `?resume=` token is replaced by one the server never
    gave, as if the reconnect reached a process that does not know it."""

    def __init__(self, port: int):
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.spend_resume_tokens = False
        self.requests: list[bytes] = []  # the first bytes of each connection (its request line)
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut: set[socket.socket] = set()  # client sockets cut: their end of input is not passed on
        self._silent: set[socket.socket] = set()  # client sockets whose connection relays nothing more
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, client: socket.socket) -> None:
        first = src is client
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if first:
                    data, first = self._first_bytes(data), False
                with self._lock:
                    silent = client in self._silent
                if not silent:
                    dst.sendall(data)
            with self._lock:
                if client in self._cut or client in self._silent:
                    return
            dst.shutdown(socket.SHUT_WR)  # a clean end of input travels on

    def _first_bytes(self, data: bytes) -> bytes:
        """The request head as the client sent it, or with its resume token spent."""
        if self.spend_resume_tokens:
            data = re.sub(rb"([?&]resume=)[^&\s]*", rb"\1never-given", data, count=1)
        self.requests.append(data.split(b"\r\n", 1)[0])
        return data

    def go_silent(self) -> None:
        """Relay nothing more on the connections open now, and close none of them."""
        with self._lock:
            self._silent.update(client for client, _ in self._pairs)

    def cut_client_side(self) -> None:
        """Close every connection's client end; the server ends stay open and silent."""
        with self._lock:
            clients = [client for client, _ in self._pairs if client not in self._cut]
            self._cut.update(clients)
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def cut_server_side(self) -> None:
        """Close the server ends of the connections cut before."""
        with self._lock:
            cut = [pair for pair in self._pairs if pair[0] in self._cut]
            self._pairs = [pair for pair in self._pairs if pair[0] not in self._cut]
        for client, upstream in cut:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut_client_side()
        self.cut_server_side()
