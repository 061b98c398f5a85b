"""Plain HTTP on the WebSocket port: the chat page, its static files and a health check."""

import json
import mimetypes
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
TEXT = "text/plain; charset=utf-8"


class WebRoutes:
    """Answers GET/HEAD for `/`, `/static/<file>` and `/healthz`; anything else is 404 or 405."""

    def __init__(self, stats, health=lambda: None, root: Path = WEB_ROOT):
        self._stats = stats  # () -> {"connections": N, "rooms": M}
        self._health = health  # () -> None when the engine accepts writes, else why not
        self._root = root
        self._static = (root / "static").resolve()
        self._started = time.monotonic()

    def respond(self, method: str, target: str, headers: dict) -> tuple[int, dict, bytes]:
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
        return 200, {"Content-Type": kind, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}, body
