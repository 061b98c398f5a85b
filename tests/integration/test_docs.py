"""README.md and docs/ hold together: README stays short, every link between them lands on a
file and heading that exist, the limits table is PROTOCOL.md's, and README's lines for another
port and for a class on a LAN start the server as they say."""

import contextlib
import os
import re
import signal
import subprocess
import urllib.request

import pytest

from tests.helpers import ROOT, Peer, PortTaken, ServerProcess, as_run_here, held_port, on_free_port, roomchat_env

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def anchors(text: str) -> set[str]:
    """GitHub's anchors for a Markdown text's headings: lower case, punctuation dropped, spaces as -."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def table(text: str, heading: str) -> list[str]:
    """The rows of the first Markdown table after `heading` (a whole heading line)."""
    section = text.split(f"\n{heading}\n", 1)[1]
    return re.search(r"((?:^\|.*\|\n)+)", section, re.M).group(1).splitlines()


def test_readme_is_short_and_opens_with_what_to_run():
    """README is at most 300 lines, and its first screen (60 lines) says what roomchat needs,
    `make run`, the page's address, another port, `--host 0.0.0.0` and `make test`."""
    assert len(README.splitlines()) <= 300
    first = "\n".join(README.splitlines()[:60])
    for needed in ("Python 3.11", "venv", "`make`", "make run", "http://127.0.0.1:8765/", "--port 9000",
                   "--host 0.0.0.0", "make test"):
        assert needed in first, needed


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_lands_on_a_file_and_heading(page):
    """Each relative link of README.md and docs/*.md names a file that exists and, with `#`, a
    heading of that file."""
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text(encoding="utf-8")), f"{page.name}: {target}"


def test_limits_table_is_protocols():
    """docs/settings.md's limits table is PROTOCOL.md's, row for row."""
    protocol = (ROOT / "PROTOCOL.md").read_text(encoding="utf-8")
    settings = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert table(settings, "## Limits") == table(protocol, "## Limits")


def readme_line(pattern: str) -> str:
    """The one command line in README's ```sh blocks or inline code that matches `pattern`."""
    (line,) = {m for m in re.findall(r"`(make run[^`]*)`", README) + re.findall(r"^(make run.*?)\s*(?:#.*)?$",
                                                                                 README, re.M)
               if re.fullmatch(pattern, m)}
    return line


@contextlib.contextmanager
def make_run(command_on, tmp_path):
    """Run `command_on(port)` (a `make run ...` line for a free port, its history moved into
    tmp_path) until its "listening on" line, and yield (port, that line); then SIGINT to the whole
    group, as Ctrl-C does. When roomchat says the port is in use (another process took it first)
    it runs again on another port."""

    def start(port: int) -> tuple:
        command = command_on(port).replace('ARGS="', f'ARGS="--db {tmp_path / "r.db"} ', 1)
        proc = subprocess.Popen(["bash", "-c", command.replace("make run", "make --no-print-directory run", 1)],
                                cwd=ROOT, env=roomchat_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            line = next((line for line in proc.stdout if "listening on" in line or "cannot" in line), "")
        except BaseException:
            interrupt(proc)
            raise
        if "cannot listen" in line and "in use" in line:
            interrupt(proc)
            raise PortTaken(f"port {port}: {line.strip()}")
        return port, proc, line

    port, proc, line = on_free_port(start, "make run")
    try:
        yield port, line
    finally:
        interrupt(proc)


def interrupt(proc: subprocess.Popen) -> None:
    """SIGINT to `proc`'s process group (make and roomchat), as Ctrl-C does; wait for it."""
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(30)
    proc.stdout.close()


def page_status(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=5) as page:
        return page.status


def another_port_line(port: int) -> str:
    """README's `make run ARGS="--port 9000"` with `port` for 9000."""
    return readme_line(r'make run ARGS="--port 9000"').replace("9000", str(port))


def test_readme_another_port_line_serves_the_page_there(tmp_path):
    """README's `make run ARGS="--port 9000"` (with a free port for 9000) serves the chat page there."""
    with make_run(another_port_line, tmp_path) as (port, line):
        assert f"listening on ws://127.0.0.1:{port}/" in line, line
        assert page_status(port, f"127.0.0.1:{port}") == 200


def test_readme_port_line_runs_again_when_its_port_was_taken_meanwhile(tmp_path, ports_taken_first):
    """The free port put in README's `--port 9000` line but taken before roomchat binds it (here by
    a listener of the test's): roomchat says it is in use, and the line runs again on another port,
    which serves the page."""
    with held_port("listening") as taken:
        ports_taken_first(taken)
        with make_run(another_port_line, tmp_path) as (port, line):
            assert port != taken and f"listening on ws://127.0.0.1:{port}/" in line, line
            assert page_status(port, f"127.0.0.1:{port}") == 200


def test_readme_lan_line_listens_everywhere_and_answers_by_address(tmp_path):
    """README's `make run ARGS="--host 0.0.0.0"` listens on every interface and serves the page to
    a student who typed the machine's LAN address."""
    line = readme_line(r'make run ARGS="--host 0.0.0.0"')
    with make_run(lambda port: line.replace('ARGS="', f'ARGS="--port {port} ', 1), tmp_path) as (port, listening):
        assert f"listening on ws://0.0.0.0:{port}/" in listening, listening
        assert page_status(port, f"192.168.1.20:{port}") == 200


def sh_block(page: str, heading_text: str) -> list[str]:
    """The command lines (comments cut) of the first ```sh block after `heading_text` in docs/`page`."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text[text.index(heading_text):], re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_identity_page_commands_make_tokens_a_require_token_server_takes(tmp_path):
    """docs/identity.md's lines run as written (HOME in tmp_path, port 0 for the server): the secret
    is made private, `token` prints tokens, a --require-token server starts, and the terminal
    client line with a minted token connects and posts (its pipe exits 0)."""
    lines = sh_block("identity.md", "give the server a secret")
    env = roomchat_env(HOME=str(tmp_path))

    def bash(line: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", as_run_here(line)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=30, **kwargs)

    assert bash(lines[0]).returncode == 0
    secret = tmp_path / ".roomchat-secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes()) >= 32
    assert lines[1] == "export ROOMCHAT_TOKEN_SECRET_FILE=~/.roomchat-secret"
    env["ROOMCHAT_TOKEN_SECRET_FILE"] = str(secret)
    assert lines[2] == ".venv/bin/python roomchat.py --require-token"
    server = ServerProcess("--require-token", "--db", ":memory:", env=env)
    try:
        for line in lines[3:5]:
            printed = bash(line)
            assert printed.returncode == 0 and re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+\n", printed.stdout), printed
        client = bash(lines[5].replace("ws://127.0.0.1:8765/", server.url), input="hello from the docs\n/quit\n")
        assert client.returncode == 0, client
    finally:
        assert server.stop() == 0


def test_readme_terminal_client_pipe_line_posts_to_the_server_it_names(tmp_path):
    """README's `printf ... | roomchat.py client --room ci` line, with ROOMCHAT_PORT naming a running
    server (as `ROOMCHAT_PORT=9000 make run` would), posts its line there and exits 0."""
    (line,) = re.findall(r"^(printf .*\| \.venv/bin/python roomchat\.py client --room ci)$", README, re.M)
    server = ServerProcess("--db", str(tmp_path / "r.db"))
    try:
        env = roomchat_env(ROOMCHAT_PORT=str(server.port))
        done = subprocess.run(["bash", "-c", as_run_here(line)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done
        reader = Peer(server.url)
        assert [event["text"] for event in reader.join("ci")["history"]] == ["build is green"]
        reader.close()
    finally:
        assert server.stop() == 0
