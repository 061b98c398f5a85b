"""The HTTP API for bots and scripts over real sockets: POST and GET /api/rooms/ROOM/messages with a
Bearer token, on SQLite, memory and Redis (two processes), and its refusals."""

import http.client
import json
import re
import select
import socket
import subprocess
import threading
import time

import pytest

from chatserver.ops.api import ERROR_STATUS, HTTP_CODES
from tests.helpers import (
    FAST_LIMITS,
    ROOT,
    SECRET,
    as_run_here,
    curl_server,
    seated,
    token,
    wait_for,
)

PATH = "/api/rooms/lobby/messages"


def call(port: int, method: str, path: str = PATH, body=None, bearer: str | None = None, headers=None, raw=None):
    """One request with http.client: (status, lower-case headers, the JSON answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sent = dict(headers or {})
        if bearer is not None:
            sent["Authorization"] = f"Bearer {bearer}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        answer = conn.getresponse()
        payload = answer.read()
        headers = {k.lower(): v for k, v in answer.getheaders()}
        return answer.status, headers, json.loads(payload) if headers["content-type"] == "application/json" else payload
    finally:
        conn.close()


def exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """`request` as is on a plain socket; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(params=["sqlite", "memory"])
def api_server(request, make_server, tmp_path):
    """A server taking tokens signed with SECRET, on each engine that runs in one process."""
    db = str(tmp_path / "history.db") if request.param == "sqlite" else ":memory:"
    return make_server(db=db, token_secret=SECRET, **FAST_LIMITS)


def test_post_answers_201_with_the_chat_and_members_get_it(api_server, connect):
    """A post is a chat as the token's nick: 201 with the stored event, and every member gets the same event."""
    member = connect(api_server.url)
    member.join("lobby")
    status, headers, event = call(api_server.port, "POST", body={"text": "build 123 is green"},
                                  bearer=token("ci-bot"))
    assert status == 201 and headers["content-type"] == "application/json"
    assert event == {**event, "type": "chat", "room": "lobby", "from": "ci-bot", "text": "build 123 is green",
                     "seq": 1}
    assert member.recv_type("chat") == event
    member.send(type="chat", room="lobby", text="thanks")
    assert member.recv_type("chat")["seq"] == 2


def test_post_to_a_room_nobody_is_in_is_stored(api_server, connect):
    """The poster need not be a member, nor anyone else: the chat is stored and joiners see it."""
    status, _headers, event = call(api_server.port, "POST", "/api/rooms/%23ops/messages", {"text": "deploy done"},
                                   bearer=token("ci-bot"))
    assert (status, event["room"], event["seq"]) == (201, "#ops", 1)
    joined = connect(api_server.url).join("#ops")
    assert [(e["from"], e["text"]) for e in joined["history"]] == [("ci-bot", "deploy done")]


def test_get_pages_through_history(api_server, connect):
    """GET gives history items, oldest first, paged with after/before/limit like `history`."""
    peer = connect(api_server.url)
    peer.join("lobby")
    peer.chat_all("lobby", [f"m{i}" for i in range(1, 6)])
    bot = token("reader")

    def seqs(query: str) -> list:
        status, _headers, body = call(api_server.port, "GET", PATH + query, bearer=bot)
        assert status == 200 and body["room"] == "lobby"
        return [m["seq"] for m in body["messages"]]

    assert seqs("") == [1, 2, 3, 4, 5]
    assert seqs("?limit=2") == [4, 5]
    assert seqs("?after=2&limit=2") == [3, 4]
    assert seqs("?before=3") == [1, 2]
    assert seqs("?after=5") == []
    for bad in ("?limit=0", "?limit=201", "?after=-1", "?before=x", "?limit=1&limit=2"):
        status, _headers, body = call(api_server.port, "GET", PATH + bad, bearer=bot)
        assert (status, body["error"]["code"]) == (400, "bad_message"), bad


def test_no_or_bad_token_is_401_with_a_bearer_challenge(make_server):
    """Without a token, or with a bad or expired one: 401, bad_token, WWW-Authenticate: Bearer."""
    server = make_server(token_secret=SECRET)
    status, headers, body = call(server.port, "POST", body={"text": "hi"})
    assert (status, body["error"]["code"]) == (401, "bad_token")
    assert headers["www-authenticate"] == 'Bearer realm="roomchat"'
    for bad in ("nonsense", token("ann", secret="another-secret-" + "x" * 32), token("ann", ttl=-10)):
        status, headers, body = call(server.port, "GET", bearer=bad)
        assert (status, body["error"]["code"]) == (401, "bad_token")
        assert headers["www-authenticate"] == 'Bearer realm="roomchat", error="invalid_token"'
    status, _headers, body = call(server.port, "GET", headers={"Authorization": "Basic YTpi"})
    assert status == 401
    tokenless = make_server()
    status, _headers, body = call(tokenless.port, "GET", bearer=token("ann"))
    assert (status, body["error"]["code"]) == (401, "bad_token")
    assert "ROOMCHAT_TOKEN_SECRET_FILE" in body["error"]["message"]  # says how to give the server one


def test_room_rules_apply_403(make_server, connect, peers):
    """Banned, muted, outside the token's rooms: forbidden; a moderated room: moderated (403); nothing is posted."""
    server = make_server(token_secret=SECRET, **FAST_LIMITS)
    operator, member = seated(server.url, peers, "lobby", "sue")
    operator.request(type="mute", room="lobby", nick="bot", duration=600)
    member.recv_type("mute")
    status, _headers, body = call(server.port, "POST", body={"text": "hi"}, bearer=token("bot"))
    assert (status, body["error"]["code"]) == (403, "forbidden") and body["error"]["retry_after"] > 0
    operator.request(type="mute", room="lobby", nick="bot", duration=0)
    operator.request(type="ban", room="lobby", nick="bot", duration=600)
    member.recv_type("ban")
    for method in ("POST", "GET"):
        status, _headers, body = call(server.port, method, body={"text": "hi"}, bearer=token("bot"))
        assert (status, body["error"]["code"]) == (403, "forbidden"), method
    status, _headers, body = call(server.port, "POST", body={"text": "hi"}, bearer=token("elsewhere", rooms=["x"]))
    assert (status, body["error"]["code"]) == (403, "forbidden")
    operator.request(type="mode", room="lobby", moderated=True)
    member.recv_type("mode")
    status, _headers, body = call(server.port, "POST", body={"text": "hi"}, bearer=token("other"))
    assert (status, body["error"]["code"]) == (403, "moderated")
    status, _headers, event = call(server.port, "POST", body={"text": "from an operator"},
                                   bearer=token("boss", op=True))
    assert status == 201
    assert member.recv_type("chat") == event  # the only chat that got through


def test_rates_and_slow_mode_are_429_with_retry_after(make_server, connect, peers):
    """Past the identity's rate (and the address's): 429 rate_limited; sooner than slow mode: 429
    slow_mode; both say Retry-After."""
    server = make_server(token_secret=SECRET, rate_burst=3, rate_per_second=0.05)
    bot = token("bot")
    answers = [call(server.port, "GET", bearer=bot) for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    assert answers[-1][2]["error"]["code"] == "rate_limited" and int(answers[-1][1]["retry-after"]) >= 1
    others = [call(server.port, "GET", bearer=token(f"bot{i}"))[0] for i in range(40)]
    assert others.count(429) >= 1 and others[:20] == [200] * 20  # the address's share: 10 x the burst
    fast = make_server(token_secret=SECRET, **FAST_LIMITS)
    operator, _member = seated(fast.url, peers, "lobby", "sue")
    operator.request(type="mode", room="lobby", slow=600)
    assert call(fast.port, "POST", body={"text": "one"}, bearer=bot)[0] == 201
    status, headers, body = call(fast.port, "POST", body={"text": "two"}, bearer=bot)
    assert (status, body["error"]["code"]) == (429, "slow_mode") and 500 < int(headers["retry-after"]) <= 600


def test_bad_bodies_are_refused(make_server):
    """413 over max_message_bytes or max_text_chars (too_long); 411 without Content-Length or chunked;
    400 for bad JSON, a non-object, a missing text or a bad room; the server keeps serving."""
    server = make_server(token_secret=SECRET, max_message_bytes=1024, max_text_chars=100, **FAST_LIMITS)
    bot = token("bot")
    status, _headers, body = call(server.port, "POST", raw=b'{"text":"' + b"x" * 2000 + b'"}', bearer=bot)
    assert (status, body["error"]["code"]) == (413, "too_long")
    status, _headers, body = call(server.port, "POST", body={"text": "x" * 101}, bearer=bot)
    assert (status, body["error"]["code"]) == (413, "too_long")
    for raw, code in ((b"{nope", "bad_json"), (b"\xff\xfe", "bad_json"), (b"[1]", "bad_message"),
                      (b'{"txt":"hi"}', "bad_message"), (b'{"text":""}', "bad_message"),
                      (b'{"text":5}', "bad_message")):
        status, _headers, body = call(server.port, "POST", raw=raw, bearer=bot)
        assert (status, body["error"]["code"]) == (400, code), raw
    status, _headers, body = call(server.port, "POST", "/api/rooms/a%20b/messages", {"text": "hi"}, bearer=bot)
    assert (status, body["error"]["code"]) == (400, "bad_room")
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bot}\r\n"
    answer = exchange(server.port, (head + "\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 411 ") and b'"length_required"' in answer
    chunked = head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert exchange(server.port, chunked.encode()).startswith(b"HTTP/1.1 411 ")
    bad_length = head + "Content-Length: 12abc\r\n\r\n"
    assert exchange(server.port, bad_length.encode()).startswith(b"HTTP/1.1 400 ")
    assert call(server.port, "POST", body={"text": "still here"}, bearer=bot)[0] == 201


def test_unknown_paths_are_404_and_other_methods_405(make_server):
    """/api/ paths other than rooms/ROOM/messages: 404 not_found; methods other than GET and POST: 405 with Allow."""
    server = make_server(token_secret=SECRET)
    for path in ("/api/", "/api/rooms/lobby", "/api/rooms/lobby/messages/1", "/api/users"):
        status, _headers, body = call(server.port, "GET", path, bearer=token("bot"))
        assert (status, body["error"]["code"]) == (404, "not_found"), path
    for method in ("PUT", "DELETE", "PATCH"):
        status, headers, body = call(server.port, method, body={"text": "x"}, bearer=token("bot"))
        assert (status, body["error"]["code"], headers["allow"]) == (405, "method_not_allowed", "GET, POST"), method
    status, _headers, _body = call(server.port, "POST", "/healthz", body={"text": "x"})
    assert status == 405  # the plain pages answer GET and HEAD only, body or not


def test_a_body_that_never_arrives_times_out_without_leaking_a_thread(make_server):
    """A slowloris body (a byte now and then, never all of it): the connection is dropped by the
    handshake timeout, its thread ends, and the server keeps answering."""
    server = make_server(token_secret=SECRET, handshake_timeout=1.0)
    before = threading.active_count()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    started = time.monotonic()
    try:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token('bot')}\r\n"
                     "Content-Length: 100\r\n\r\n{\"text\":".encode())
        while time.monotonic() - started < 8:
            if select.select([sock], [], [], 0.3)[0]:
                assert sock.recv(65536) == b""  # closed, nothing said
                break
            sock.sendall(b" ")
    except (ConnectionResetError, BrokenPipeError):
        pass  # cut while a byte was on its way
    finally:
        sock.close()
    assert time.monotonic() - started < 8
    wait_for(lambda: threading.active_count() <= before, timeout=10)
    assert call(server.port, "GET", bearer=token("bot"))[0] == 200


def test_posts_on_redis_reach_members_on_every_process(redis_server, cluster, connect):
    """Two processes on one Redis: a post to the one nobody is on reaches the members of the other; GET reads it."""
    first, second = cluster(2, "--token-secret", SECRET)
    member = connect(second.url)
    member.join("lobby")
    near = connect(first.url)
    near.join("lobby")
    member.recv_type("presence")
    status, _headers, event = call(first.port, "POST", body={"text": "build 123 is green"}, bearer=token("ci-bot"))
    assert (status, event["from"], event["seq"]) == (201, "ci-bot", 1)
    assert member.recv_type("chat") == event
    assert near.recv_type("chat") == event
    status, _headers, event = call(second.port, "POST", "/api/rooms/quiet/messages", {"text": "nobody here"},
                                   bearer=token("ci-bot"))
    assert (status, event["seq"]) == (201, 1)
    status, _headers, body = call(first.port, "GET", "/api/rooms/quiet/messages", bearer=token("reader"))
    assert [m["text"] for m in body["messages"]] == ["nobody here"]
    joined = connect(first.url).join("quiet")
    assert [m["text"] for m in joined["history"]] == ["nobody here"]


def sh_lines(page: str, after: str) -> list:
    """The command lines (continuations joined, comments cut) of the first ```sh block after `after` in `page`."""
    text = (ROOT / page).read_text("utf-8")
    block = re.search(r"```sh\n(.*?)```", text[text.index(after):], re.S).group(1).replace("\\\n", " ")
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize(("page", "after"), [("README.md", "**Bots and scripts**"),
                                             ("docs/clients.md", "## Bots and scripts")])
def test_the_curl_examples_run_as_written(page, after, tmp_path, connect):
    """README's and docs/clients.md's token and curl lines, run with bash against a server with that
    secret (its port for 8765): the CI job's chat reaches a member of `ci` and the read returns it."""
    server, env = curl_server(tmp_path, "r.db")
    try:
        member = connect(server.url)
        member.join("ci")
        script = "set -e\n" + "\n".join(sh_lines(page, after)).replace("127.0.0.1:8765", f"127.0.0.1:{server.port}")
        done = subprocess.run(["bash", "-c", as_run_here(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done
        posted = json.loads(done.stdout.splitlines()[0])
        assert (posted["from"], posted["text"], posted["room"]) == ("ci-bot", "build 123 is green", "ci")
        assert member.recv_type("chat") == posted
        assert [m["text"] for m in json.loads(done.stdout.splitlines()[1])["messages"]] == ["build 123 is green"]
    finally:
        assert server.stop() == 0


def test_the_status_table_is_the_apis():
    """PROTOCOL.md's HTTP API table gives each of HTTP_CODES its status and each ERROR_STATUS code its status."""
    rows = {}
    lines = (ROOT / "PROTOCOL.md").read_text("utf-8").splitlines()
    start = lines.index("| status | code |")
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        status, text = (cell.strip() for cell in line.strip("|").split("|", 1))
        rows[int(status)] = set(re.findall(r"`(\w+)`", text))
    for status, code in HTTP_CODES.items():
        assert code in rows[status], status
    for code, status in ERROR_STATUS.items():
        assert code in rows[status], code


def test_a_post_reserves_the_nick_and_counts_in_metrics(make_server, connect):
    """Posting as a token's nick reserves it (nobody else may take it), and refusals are counted by code."""
    server = make_server(token_secret=SECRET, **FAST_LIMITS)
    assert call(server.port, "POST", body={"text": "hi"}, bearer=token("ci-bot"))[0] == 201
    guest = connect(server.url)
    assert guest.request(type="nick", nick="CI-bot")["code"] == "nick_reserved"
    call(server.port, "POST", body={"text": "hi"}, bearer="nonsense")
    metrics = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    metrics.request("GET", "/metrics")
    text = metrics.getresponse().read().decode()
    metrics.close()
    assert 'roomchat_errors_total{code="bad_token"} 1.0' in text


def http_schema(name: str | None = None):
    """A validator for schema/http.json (the POST body), or for one of its answers in $defs."""
    from jsonschema import Draft202012Validator

    from chatclient.schema import registry

    return Draft202012Validator({"$ref": "http.json" + (f"#/$defs/{name}" if name else "")}, registry=registry())


def test_answers_match_schema_http_json(make_server, connect):
    """The POST body, the 201 and 200 answers and the error answers are what schema/http.json says;
    its HTTP-only codes are HTTP_CODES."""
    from chatclient.schema import problems

    server = make_server(token_secret=SECRET, **FAST_LIMITS)
    body = {"text": "build 123 is green"}
    assert problems(http_schema(), body) == [] and problems(http_schema(), {"txt": "x"}) != []
    status, _headers, posted = call(server.port, "POST", body=body, bearer=token("ci-bot"))
    assert status == 201 and problems(http_schema("posted"), posted) == []
    status, _headers, read = call(server.port, "GET", bearer=token("ci-bot"))
    assert status == 200 and read["messages"] == [posted] and problems(http_schema("messages"), read) == []
    for path, method, bearer in (("/api/x", "GET", token("a")), (PATH, "PUT", token("a")), (PATH, "GET", "bad"),
                                 ("/api/rooms/a%20b/messages", "GET", token("a"))):
        _status, _headers, error = call(server.port, method, path, body={"text": "x"}, bearer=bearer)
        assert problems(http_schema("error"), error) == [], error
    error = json.loads((ROOT / "schema" / "http.json").read_text("utf-8"))["$defs"]["error"]["properties"]["error"]
    assert set(error["properties"]["code"]["anyOf"][1]["enum"]) == set(HTTP_CODES.values())
