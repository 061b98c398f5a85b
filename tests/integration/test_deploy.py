"""The deployment recipes in docs/, run for real: nginx in front of roomchat (page, WebSocket
chat, forwarded headers, an access log without tokens, timeouts), and the systemd unit checked by
systemd-analyze and its command line started. Caddy: test_deploy_caddy.py; the install recipe:
test_deploy_recipe.py."""

import re
import shlex
import subprocess
import sys
import urllib.request

import pytest
import websocket

from chatserver.config import Config
from tests.helpers import ROOT, Peer, ServerProcess, held_port, require_program, roomchat_env, wait_for
from tests.proxies import ProxyProcesses, forwarded_headers

NGINX_CONF = ROOT / "docs" / "nginx.conf"
UNIT = ROOT / "docs" / "roomchat.service"
# What the test changes in docs/nginx.conf, each found exactly once: where roomchat and nginx
# listen, and where the site's access log goes.
UPSTREAM, LISTEN = "server 127.0.0.1:8765;", "listen 80;"
ACCESS_LOG = "access_log /var/log/nginx/roomchat.access.log roomchat;"
MAIN_CONF = """daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/roomchat.conf;
}}
"""


def seconds(value: str) -> float:
    """An nginx time ("300s", "5m", "1h", "90") in seconds."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[unit]


@pytest.fixture
def nginx(tmp_path):
    """nginx(*upstream_ports) -> the port of Debian's nginx running docs/nginx.conf in front of
    `upstream_ports` (round robin), in the foreground as our child, on a free port (another if it
    was taken), every path in tmp_path; stopped at teardown."""
    binary = require_program("nginx", "apt-get install nginx")

    processes = ProxyProcesses()

    def argv_on(port: int, upstream_ports: tuple) -> list:
        site = NGINX_CONF.read_text()
        assert site.count(UPSTREAM) == site.count(LISTEN) == site.count(ACCESS_LOG) == 1, "nginx.conf changed shape"
        servers = " ".join(f"server 127.0.0.1:{upstream};" for upstream in upstream_ports)
        site = site.replace(UPSTREAM, servers).replace(LISTEN, f"listen 127.0.0.1:{port};")
        site = site.replace(ACCESS_LOG, f"access_log {tmp_path / 'roomchat.access.log'} roomchat;")
        (tmp_path / "roomchat.conf").write_text(site)
        (tmp_path / "nginx.conf").write_text(MAIN_CONF.format(tmp=tmp_path))
        return [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")]

    yield lambda *upstream_ports: processes.start("nginx", lambda port: argv_on(port, upstream_ports))
    processes.stop_all()


def test_nginx_serves_the_chat_page(server, nginx):
    """Through nginx, GET / is the same chat page roomchat serves directly."""
    port = nginx(server.port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as proxied:
        body = proxied.read()
        assert proxied.status == 200 and proxied.headers["Content-Type"].startswith("text/html")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=5) as direct:
        assert body == direct.read()


def test_nginx_on_a_port_taken_meanwhile_starts_on_another(server, nginx, ports_taken_first):
    """A free port found for nginx but taken before nginx binds it (here by a listener of the
    test's that never answers) is not taken for nginx's: nginx starts on another port, and the chat
    page comes from there."""
    with held_port("listening") as taken:
        ports_taken_first(taken)
        port = nginx(server.port)
        assert port != taken
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as proxied:
            assert proxied.status == 200 and proxied.headers["Content-Type"].startswith("text/html")


def test_nginx_carries_a_websocket_chat(server, nginx, peers):
    """Two clients connected through nginx join a room and chat; both get the event."""
    url = f"ws://127.0.0.1:{nginx(server.port)}/"
    alice, bob = peers(url), peers(url)
    alice.join("lobby")
    bob.join("lobby")
    alice.send(type="chat", room="lobby", text="through the proxy", id=1)
    assert alice.recv_type("chat")["id"] == 1
    assert bob.recv_type("chat")["text"] == "through the proxy"


def test_nginx_access_log_keeps_no_query_string(server, nginx, tmp_path):
    """Pages and WebSockets opened through nginx with `?token=` are logged by path alone: the
    site's access log names each request and holds no token."""
    port = nginx(server.port)
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.NGINX-LOG-SIGNATURE"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={secret}#lobby", timeout=5) as page:
        assert page.status == 200
    with pytest.raises(websocket.WebSocketBadStatusException):  # 401: this server has no token secret
        websocket.create_connection(f"ws://127.0.0.1:{port}/?token={secret}&resume=r3sum3", timeout=5)
    log_path = tmp_path / "roomchat.access.log"
    log = wait_for(lambda: log_path.exists() and log_path.read_text().count('"GET / HTTP/1.1"') >= 2
                   and log_path.read_text())
    assert "NGINX-LOG-SIGNATURE" not in log and "token" not in log and "r3sum3" not in log, log


def test_nginx_forwards_client_address_scheme_and_upgrade(nginx):
    """roomchat behind nginx gets X-Forwarded-For (the client's address, not what the client
    claims), X-Forwarded-Proto, the original Host, and the WebSocket Upgrade/Connection headers;
    a `Forwarded` header the client wrote itself does not get through."""
    headers = forwarded_headers(nginx)
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-forwarded-proto"] == "http"
    assert headers["host"] == "chat.example.org"
    assert headers["upgrade"] == "websocket" and headers["connection"].lower() == "upgrade"
    assert "forwarded" not in headers


def test_nginx_timeouts_outlast_roomchat_pings():
    """docs/nginx.conf lets a connection idle longer than roomchat's ping interval plus ping
    timeout, so nginx never cuts a quiet client that roomchat keeps alive."""
    text = NGINX_CONF.read_text()
    defaults = Config()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = re.findall(rf"^\s*{directive}\s+(\S+);", text, re.M)
        assert seconds(value) > defaults.ping_interval + defaults.ping_timeout, (directive, value)


def unit_for_here(tmp_path):
    """docs/roomchat.service with /opt/roomchat pointing at this checkout, its .venv at the venv
    running these tests."""
    unit = tmp_path / "roomchat.service"
    unit.write_text(UNIT.read_text().replace("/opt/roomchat/.venv", sys.prefix).replace("/opt/roomchat", str(ROOT)))
    return unit


def test_systemd_unit_verifies_clean(tmp_path):
    """`systemd-analyze verify` accepts docs/roomchat.service with no warning, and
    `systemd-analyze security` rates its exposure 2.0 or lower ("OK")."""
    analyze = require_program("systemd-analyze", "apt-get install systemd")
    unit = unit_for_here(tmp_path)
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "" and verify.stdout == "", verify
    security = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout + security.stderr
    (level,) = re.findall(r"Overall exposure level for roomchat.service: ([\d.]+)", security.stdout)
    assert float(level) <= 2.0, security.stdout


def test_the_token_secret_drop_in_of_deploy_md_verifies_clean(tmp_path):
    """deploy.md's two [Service] lines for the token secret (LoadCredential, and
    ROOMCHAT_TOKEN_SECRET_FILE in the credentials directory), added to the unit, pass
    `systemd-analyze verify` with no warning and keep its exposure "OK"."""
    analyze = require_program("systemd-analyze", "apt-get install systemd")
    section = (ROOT / "docs" / "deploy.md").read_text().split("**Tokens**", 1)[1]
    lines = re.findall(r"^#   (\w+=.+)$", section, re.M)
    assert lines == ["LoadCredential=secret:/etc/roomchat/secret", "Environment=ROOMCHAT_TOKEN_SECRET_FILE=%d/secret"]
    secret = tmp_path / "secret"
    secret.write_text("x" * 44 + "\n")
    unit = unit_for_here(tmp_path)
    drop_in = "\n".join(lines).replace("/etc/roomchat/secret", str(secret))
    unit.write_text(unit.read_text().replace("\n[Install]\n", f"\n{drop_in}\n\n[Install]\n"))
    assert "LoadCredential=secret:" in unit.read_text()
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "" and verify.stdout == "", verify
    security = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                              capture_output=True, text=True, timeout=60)
    (level,) = re.findall(r"Overall exposure level for roomchat.service: ([\d.]+)", security.stdout)
    assert float(level) <= 2.0, security.stdout


def test_systemd_unit_command_line_starts_roomchat(tmp_path):
    """The unit's ExecStart and Environment as written, run from its working directory (the state
    directory, here tmp_path) with port 0, start roomchat with its history in that directory."""
    unit = UNIT.read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, re.M)
    env = dict(item.split("=", 1) for line in re.findall(r"^Environment=(.+)$", unit, re.M)
               for item in shlex.split(line))
    assert env["ROOMCHAT_HOST"] == "127.0.0.1"
    assert re.findall(r"^WorkingDirectory=(.+)$", unit, re.M) == ["%S/roomchat"]
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/opt/roomchat/.venv/bin/python", "/opt/roomchat/roomchat.py"]
    server = ServerProcess(*argv[2:], cwd=tmp_path, env=roomchat_env(**{**env, "ROOMCHAT_PORT": "0"}), defaults=())
    try:
        assert server.lines[0] == f"history in {tmp_path / 'roomchat.db'}"
        peer = Peer(server.url)
        assert peer.welcome["type"] == "welcome"
        peer.close()
    finally:
        assert server.stop() == 0


def test_roomchat_logs_the_client_address_nginx_forwards(spawn, nginx, peers):
    """With --trusted-proxy naming nginx, roomchat logs the address nginx forwards (no port: the
    proxy's own ephemeral port is not the client's); a direct client is logged with its port."""
    server = spawn("--db", ":memory:", "--trusted-proxy", "127.0.0.1", "--log-level", "INFO")
    proxied = peers(f"ws://127.0.0.1:{nginx(server.port)}/")
    direct = peers(server.url)
    log = wait_for(lambda: (text := server.stderr_text()).count("connect ") >= 2 and text)
    assert f"connect 127.0.0.1 {proxied.nick}" in log
    assert re.search(rf"connect 127\.0\.0\.1:\d+ {direct.nick}", log)


def test_nginx_spreads_clients_over_processes_and_a_resume_works_on_any(redis_server, spawn, nginx, peers):
    """Two roomchat processes on one Redis behind nginx's round robin, no sticky sessions: clients
    land on both, chat in one room, and each reconnect with a resume token (landing on one process
    or the other) gets the same nick and rooms back, with no leave or join for the room."""
    processes = [spawn("--redis", redis_server.url) for _ in range(2)]
    url = f"ws://127.0.0.1:{nginx(*(p.port for p in processes))}/"
    watcher, ann = peers(url), peers(url)
    watcher.join("lobby")
    ann.set_nick("ann")
    ann.join("lobby")
    watcher.recv_type("presence")
    for i in range(3):  # round robin: at least one of these lands on the other process
        again = peers(f"{url}?resume={ann.welcome['resume']}")
        assert again.welcome["nick"] == "ann" and again.welcome["rooms"] == ["lobby"]
        assert ann.close_code()[0] == 4002
        again.send(type="chat", room="lobby", text=f"back {i}")
        seen = []
        while not seen or seen[-1].get("text") != f"back {i}":
            seen.append(watcher.recv())
        assert [e["type"] for e in seen] == ["chat"]  # no presence before it
        ann = again
    assert watcher.request(type="who", room="lobby")["members"] == [watcher.nick, "ann"]
