"""The examples of README.md and docs/how-it-works.md, run as written: the websocket-client
walkthrough (with pauses longer than the server's ping deadline between its steps), `make run`
stopped with Ctrl-C, and README's lines for another port and for a class on a LAN."""

import ast
import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import AS_IN_A_TERMINAL, ROOT, roomchat_env, wait_for

README = (ROOT / "README.md").read_text(encoding="utf-8")
HOW = (ROOT / "docs" / "how-it-works.md").read_text(encoding="utf-8")


def python_block(page: str, after_heading: str) -> str:
    """The first ```python block after `after_heading` in the Markdown text `page`."""
    section = page[page.index(after_heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def assert_prints_readme_block(output: str) -> None:
    """README's block of what `make run` prints (after "It prints where it listens") is what it
    printed, line for line, but for the database's path, the port, the log's time and this
    machine's names."""
    section = README[README.index("It prints where it listens"):]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1).splitlines()
    printed = [line for line in output.replace("\r\n", "\n").splitlines() if line.strip()]
    printed = printed[:next(at for at, line in enumerate(printed) if "answering Host names" in line) + 1]

    def shape(line: str) -> str:
        line = re.sub(r"^history in /\S+$", "history in PATH", line)
        line = re.sub(r":\d+/", ":PORT/", line)
        line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "TIME ", line)
        return re.sub(r"(answering Host names: 127\.0\.0\.1, \[::1\], localhost)(, \S+)*$", r"\1, NAMES", line)

    assert [shape(line) for line in printed] == [shape(line) for line in block], output


@pytest.mark.slow
def test_websocket_client_walkthrough_survives_pauses_in_a_repl(make_server, connect):
    """The walkthrough pasted into an interactive `python` a block at a time, with a pause longer
    than ping_interval + ping_timeout before each block, prints every event it promises, raises
    nothing, and its close leaves no connection behind."""
    server = make_server(ping_interval=0.5, ping_timeout=0.5)
    code = python_block(HOW, "## Chat between two websocket-client sessions")
    assert "ws://127.0.0.1:8765/" in code
    repl = subprocess.Popen([sys.executable, "-i", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        for block in code.replace("ws://127.0.0.1:8765/", server.url).split("\n\n"):
            time.sleep(1.5)  # the pause is the point: without a reader the server would close at 1.0 s
            repl.stdin.write(block + "\n\n")
            repl.stdin.flush()
        output, _ = repl.communicate("exit()\n", timeout=30)
    finally:
        if repl.poll() is None:
            repl.kill()
    assert "Error" not in output and "Traceback" not in output, output
    events = [ast.literal_eval(found) for found in re.findall(r"^(?:(?:>>>|\.\.\.) )*(\{'type'.*\})$", output, re.M)]
    assert [e["type"] for e in events] == ["welcome", "welcome", "nick", "joined", "joined", "presence", "chat",
                                           "chat"], output
    assert events[2] == {"type": "nick", "old": events[0]["nick"], "nick": "alice"}
    assert events[6]["id"] == 1
    assert (events[7]["from"], events[7]["text"], events[7]["seq"]) == ("alice", "hello bob", 1)
    peer = connect(server.url)
    wait_for(lambda: peer.request(type="who", room="lobby")["members"] == [], timeout=5)  # both closed


def test_make_run_stops_on_ctrl_c_as_the_readme_says(tmp_path):
    """`make run` prints where it listens, as README's block shows; Ctrl-C on its terminal makes roomchat shut down (its
    "shutting down" line) and make end interrupted, which a shell reports as 130."""
    # a terminal of its own, as a person runs it: make leads a new session whose controlling
    # terminal is the pty (setsid -c), so Ctrl-C there interrupts make and roomchat, the
    # terminal's foreground process group (no fork in this multi-threaded process: subprocess
    # starts it)
    fd, terminal = pty.openpty()
    make = subprocess.Popen(["setsid", "-c", *AS_IN_A_TERMINAL, "make", "--no-print-directory", "run",
                             f"ARGS=--port 0 --db {tmp_path / 'r.db'}"],
                            stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env=roomchat_env())
    os.close(terminal)
    output = b""

    def read_until(text: bytes, timeout: float) -> bytes:
        nonlocal output
        deadline = time.monotonic() + timeout
        while text not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    output += os.read(fd, 4096)
                except OSError:  # the terminal is gone: everyone exited
                    break
        return output

    try:
        assert b"answering Host names" in read_until(b"answering Host names", 45), output
        assert b"roomchat.py" not in output  # the command itself is not echoed
        assert_prints_readme_block(output.decode())
        os.write(fd, b"\x03")
        assert b"shutting down" in read_until(b"shutting down", 10), output
        assert make.wait(timeout=30) == -signal.SIGINT  # killed by SIGINT: the shell's 130
    finally:  # on failure: make and roomchat are in the process group setsid made for make
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGKILL)
        make.wait()
        os.close(fd)
