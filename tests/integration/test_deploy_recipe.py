"""docs/deploy.md's install recipe, run as far as this machine allows: its clone, venv and pip
lines in a temporary directory (a local clone of this repository in place of the example
address, the temporary directory in place of /opt/roomchat), then roomchat started with
docs/roomchat.service's own command line and environment from its state directory, and the
recipe's selftest line against it. systemctl is not run: the test machines have no systemd as
PID 1 (test_deploy.py has `systemd-analyze verify` on the unit)."""

import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import ROOT, ServerProcess, roomchat_env

DEPLOY = ROOT / "docs" / "deploy.md"
UNIT = ROOT / "docs" / "roomchat.service"
EXAMPLE_URL, OPT = "https://git.example.org/roomchat.git", "/opt/roomchat"


def recipe() -> list[str]:
    """The command lines of the ```sh block in "As a systemd service, from a clean clone"."""
    section = DEPLOY.read_text().split("## As a systemd service, from a clean clone\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_recipe_is_clone_venv_pip_then_systemd():
    """The recipe installs from a clone of its own (never a copy of a checkout) and then hands over
    to systemd: clone, venv, pip, copy the unit, enable it, read its log, selftest."""
    lines = recipe()
    assert lines[0] == f"git clone {EXAMPLE_URL} {OPT}"
    assert lines[1] == f"python3 -m venv {OPT}/.venv"
    assert lines[2] == f"{OPT}/.venv/bin/pip install -r {OPT}/requirements.txt"
    assert lines[3] == f"cp {OPT}/docs/roomchat.service /etc/systemd/system/"
    assert lines[4].startswith("systemctl daemon-reload && systemctl enable --now roomchat")
    assert lines[5].startswith("journalctl -u roomchat")
    assert lines[6] == f"{OPT}/.venv/bin/python {OPT}/roomchat.py selftest ws://127.0.0.1:8765/"
    assert "cp -r" not in DEPLOY.read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_recipe_installs_from_a_clean_clone_and_the_unit_command_serves(tmp_path):
    """The clone, venv and pip lines run as written (paths moved into tmp_path) and give a clone
    with its own venv and no history file; the unit's ExecStart and Environment, run from an empty
    state directory with port 0, keep the history there and pass the recipe's selftest."""
    opt, state = tmp_path / "opt" / "roomchat", tmp_path / "state"
    state.mkdir()
    for line in recipe()[:3]:
        command = line.replace(EXAMPLE_URL, str(ROOT)).replace(OPT, str(opt))
        if command.startswith("python3 "):
            command = f"'{sys.executable}' " + command[len("python3 "):]
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    assert not list(opt.glob("roomchat.db*")), "a clean clone has no history file"
    unit = UNIT.read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, re.M)
    (working,) = re.findall(r"^WorkingDirectory=(.+)$", unit, re.M)
    assert working == "%S/roomchat" and "StateDirectory=roomchat" in unit  # the state directory
    env = dict(item.split("=", 1) for line in re.findall(r"^Environment=(.+)$", unit, re.M)
               for item in shlex.split(line))
    argv = shlex.split(exec_start.replace(OPT, str(opt)))
    assert argv[0] == str(opt / ".venv" / "bin" / "python")  # the clone's own venv
    server = ServerProcess(cwd=state, env=roomchat_env(**{**env, "ROOMCHAT_PORT": "0"}), defaults=(), program=argv)
    try:
        assert server.lines[0] == f"history in {state / 'roomchat.db'}"
        selftest = recipe()[6].replace(OPT, str(opt)).replace("ws://127.0.0.1:8765/", server.url)
        done = subprocess.run(shlex.split(selftest), capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        assert server.stop() == 0
    assert (state / "roomchat.db").exists() and not list(opt.glob("roomchat.db*"))
