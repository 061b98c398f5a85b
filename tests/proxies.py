"""Reverse proxies a test runs in front of roomchat (nginx, Caddy): a proxy process of the test's
own, stopped at teardown, a recorder of the headers a proxy forwards, and the settings of
docs/deploy.md's proxy line."""

import http.server
import os
import re
import shlex
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path

from chatserver.config import from_args
from tests.services import PortTaken, on_free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Forwarded-For": "6.6.6.6",
           "Forwarded": "for=127.0.0.9", "Host": "chat.example.org"}  # a client that claims to be others


class ProxyProcesses:
    """Proxy programs started in the foreground as children, each on a port of its own;
    `stop_all()` ends them."""

    def __init__(self):
        self._children = []  # (Popen, its stderr file)

    def start(self, name: str, argv_on, env=None) -> int:
        """Run `argv_on(port)` (the program's command line for a free port; it writes the
        program's config for that port) and wait until it listens there; returns the port. When
        another process had the port (wait_listening) the program is stopped and started on
        another. Raises AssertionError with its stderr if it exits for another reason."""
        return on_free_port(lambda port: self._start_on(name, argv_on(port), port, env), name)

    def _start_on(self, name: str, argv: list, port: int, env) -> int:
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the program is stopped
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        self._children.append((proc, stderr))

        def output() -> str:
            return os.pread(stderr.fileno(), os.fstat(stderr.fileno()).st_size, 0).decode("utf-8", "replace")

        try:
            wait_listening(proc.pid, port, name, output, exited=lambda: proc.poll() is not None)
        except PortTaken:
            self._stop(*self._children.pop())
            raise
        return port

    def stop_all(self) -> None:
        for child in self._children:
            self._stop(*child)

    @staticmethod
    def _stop(proc: subprocess.Popen, stderr) -> None:
        proc.terminate()  # SIGTERM: a fast shutdown for nginx and Caddy alike
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()


class HeaderRecorder(http.server.BaseHTTPRequestHandler):
    """Keeps the headers of each request it gets (on the server object) and answers 204."""

    def do_GET(self):
        self.server.seen.append(dict(self.headers))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def forwarded_headers(start_proxy) -> dict:
    """The headers (lower-case names) an upstream gets when a client sends UPGRADE through the
    proxy that `start_proxy(upstream_port) -> port` starts."""
    recorder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HeaderRecorder)
    recorder.seen = []
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    try:
        port = start_proxy(recorder.server_address[1])
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", headers=UPGRADE), timeout=5).close()
    finally:
        recorder.shutdown()
        recorder.server_close()
    return {k.lower(): v for k, v in recorder.seen[0].items()}


def proxy_line_settings() -> dict:
    """The settings of docs/deploy.md's proxy line (`roomchat.py --trusted-proxy ... --allowed-hosts ...`)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    (line,) = re.findall(r"^\.venv/bin/python roomchat\.py (--trusted-proxy .*)$", text, re.M)
    config = from_args(shlex.split(line), environ={})
    return {"trusted_proxy": config.trusted_proxy, "allowed_hosts": config.allowed_hosts}
