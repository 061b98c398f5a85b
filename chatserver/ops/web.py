"""Plain HTTP on the WebSocket port: the chat page, its static files, health checks and metrics.

`/livez` says the process serves HTTP (200); `/readyz` says the engine accepts writes (200, or
503 with the engine's reason); `/healthz` is the same readiness as JSON with a few figures;
`/metrics` is the Prometheus exposition (ops/metrics.py decides who may read it).
"""

import json
import mimetypes
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from chatserver.wire.handshake import SECURITY_HEADERS

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"  # chatserver/ops/web.py -> the checkout
TEXT = "text/plain; charset=utf-8"
_SAFE_HOST = re.compile(r"[A-Za-z0-9._\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")


def page_headers(host: str | None) -> dict:
    """SECURITY_HEADERS with the chat page's Content-Security-Policy (CSP Level 3): scripts, styles
    and everything else only from this origin, WebSocket only to this host (ws: and wss: written
    out, since not every browser counts them as 'self'), never framed (also X-Frame-Options)."""
    connect = "'self'"
    if host and _SAFE_HOST.fullmatch(host):  # the Host check ran already; this only keeps the header well-formed
        connect += f" ws://{host} wss://{host}"
    csp = (f"default-src 'self'; script-src 'self'; style-src 'self'; connect-src {connect}; "
           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return {**SECURITY_HEADERS, "Content-Security-Policy": csp}


class WebRoutes:
    """Answers GET/HEAD for `/`, `/static/<file>`, `/healthz`, `/livez`, `/readyz` and `/metrics`;
    anything else is 404 or 405. Every answer carries `page_headers` (CSP, frame, sniffing and
    referrer rules)."""

    def __init__(self, stats, health=lambda: None, root: Path = WEB_ROOT, metrics=None):
        self._stats = stats  # () -> {"connections": N, "rooms": M}
        self._health = health  # () -> None when the engine accepts writes, else why not
        self._metrics = metrics  # (headers, peer_ip) -> (status, headers, body); None: no /metrics
        self._root = root
        self._static = (root / "static").resolve()
        self._started = time.monotonic()

    def respond(self, method: str, target: str, headers: dict, peer_ip: str = "") -> tuple[int, dict, bytes]:
        """(status, response headers, body) for a request; `headers` has lower-case names,
        `peer_ip` is the TCP peer's address. Raises nothing."""
        status, extra, body = self._route(method, target, headers, peer_ip)
        return status, {**page_headers(headers.get("host")), **extra}, body

    def _route(self, method: str, target: str, headers: dict, peer_ip: str) -> tuple[int, dict, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, {"Allow": "GET, HEAD", "Content-Type": TEXT}, b"method not allowed\n"
        try:
            path = urlsplit(target).path
        except ValueError:  # e.g. "//[" is not a URL
            return 400, {"Content-Type": TEXT}, b"bad request target\n"
        if path == "/":
            return self._file(self._root / "index.html")
        if path == "/healthz":
            problem = self._health()
            body = {"status": "failing" if problem else "ok", **self._stats(),
                    "uptime_s": round(time.monotonic() - self._started, 3)}
            if problem:
                body["reason"] = problem
            headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
            return 503 if problem else 200, headers, json.dumps(body).encode()
        if path == "/livez":
            return 200, {"Content-Type": TEXT, "Cache-Control": "no-store"}, b"ok\n"
        if path == "/readyz":
            problem = self._health()
            body = f"not ready: {problem}\n".encode() if problem else b"ok\n"
            return 503 if problem else 200, {"Content-Type": TEXT, "Cache-Control": "no-store"}, body
        if path == "/metrics" and self._metrics is not None:
            return self._metrics(headers, peer_ip)
        if path.startswith("/static/"):
            resolved = self._static_path(unquote(path[len("/static/"):]))
            if resolved is not None:
                return self._file(resolved)
        return 404, {"Content-Type": TEXT}, b"not found\n"

    def _static_path(self, name: str) -> Path | None:
        """The file under web/static/ that `name` names, or None for anything that escapes it."""
        if not name or "\\" in name or "\0" in name or name.startswith("/"):
            return None
        try:
            candidate = (self._static / name).resolve()
            if not candidate.is_relative_to(self._static) or not candidate.is_file():
                return None
        except (OSError, ValueError):  # a name too long for the file system, say
            return None
        return candidate

    def _file(self, path: Path) -> tuple[int, dict, bytes]:
        try:
            body = path.read_bytes()
        except OSError:
            return 404, {"Content-Type": TEXT}, b"not found\n"
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "text/javascript"):
            kind += "; charset=utf-8"
        return 200, {"Content-Type": kind, "Cache-Control": "no-cache"}, body
