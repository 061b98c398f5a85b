"""Plain HTTP on the WebSocket port: the chat page, its static files, /healthz and refusals."""

import http.client
import json
import socket

import pytest

from tests.helpers import ROOT


def get(server, path: str, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def raw_request(server, head: bytes) -> tuple[int, bytes]:
    """Send `head` as is (no client-side normalising) and return (status, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_root_serves_the_chat_page(server):
    """GET / returns the chat page as HTML, which loads its script and labels the message box."""
    response, body = get(server, "/")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert int(response.getheader("Content-Length")) == len(body)
    assert body == (ROOT / "web" / "index.html").read_bytes()
    assert b'src="/static/app.js"' in body and b">Message</label>" in body


@pytest.mark.parametrize(("name", "kind"), [("app.js", "javascript"), ("style.css", "text/css")])
def test_static_files_are_served_with_their_type(server, name, kind):
    """GET /static/<file> returns the file from web/static with a fitting Content-Type."""
    response, body = get(server, f"/static/{name}")
    assert response.status == 200
    assert kind in response.getheader("Content-Type")
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert body == (ROOT / "web" / "static" / name).read_bytes()


def test_head_has_headers_and_no_body(server):
    """HEAD / answers like GET / without the body."""
    response, body = get(server, "/", method="HEAD")
    assert response.status == 200 and body == b""
    assert int(response.getheader("Content-Length")) == len((ROOT / "web" / "index.html").read_bytes())


def test_healthz_reports_status_connections_rooms_and_uptime(server, connect):
    """/healthz is JSON with status, live connection and room counts, and uptime."""
    peer = connect()
    peer.join("lobby")
    response, body = get(server, "/healthz")
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Cache-Control") == "no-store"
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["connections"] == 1 and health["rooms"] == 1
    assert isinstance(health["uptime_s"], float) and health["uptime_s"] >= 0


@pytest.mark.parametrize("path", ["/nope", "/static/", "/static/missing.js", "/index.html", "/web/index.html"])
def test_unknown_paths_are_404(server, path):
    """Anything but /, /healthz, /livez, /readyz, /metrics and an existing /static/ file is 404."""
    response, _ = get(server, path)
    assert response.status == 404


def test_post_is_405_with_allow(server):
    """POST gets 405 and an Allow header naming GET and HEAD."""
    response, _ = get(server, "/", method="POST")
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize("line", [b"GARBAGE", b"GET /", b"GET / HTTP/1.1 extra", b"GET  HTTP/1.1"])
def test_malformed_request_line_is_400(server, line):
    """A request line that is not METHOD TARGET HTTP/1.x gets 400."""
    status, _ = raw_request(server, line + b"\r\nHost: localhost\r\n\r\n")
    assert status == 400


@pytest.mark.parametrize(
    "path",
    ["/static/../roomchat.py", "/static/%2e%2e/roomchat.py", "/static/..%2froomchat.py",
     "/static/%2e%2e%2froomchat.py", "/static/..%5croomchat.py", "/static//etc/passwd"],
)
def test_static_traversal_is_refused(server, path):
    """No spelling of `..` or an absolute path under /static/ reaches a file outside web/static."""
    status, body = raw_request(server, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status == 404
    assert b"import" not in body and b"root:" not in body
