"""The servers users would pick instead of roomchat, installed on demand into bench/.peers/.

Node peers (Socket.IO 4.8 and Bun, whose npm package ships its binary) come from
bench/peers/package.json, installed with npm into bench/.peers/node; Flask-SocketIO comes from
bench/peers/requirements-flask.txt, installed with pip into its own venv, bench/.peers/flask.
Nothing here touches the project's requirements. Each ensure_* returns the path of what it
installed, or raises Unavailable with a one-line reason (node or npm missing, an install failed),
and the driver leaves that server out, saying why.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SOURCES = BENCH / "peers"
PEERS = BENCH / ".peers"


class Unavailable(Exception):
    """A peer server cannot run here; the message says why in one line."""


def _run(command, what, cwd=None):
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what}: {exc}") from None
    if done.returncode:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise Unavailable(f"{what} failed: {last[0][:200]}")


def ensure_node():
    """bench/.peers/node with socket.io and bun installed as pinned; returns that folder.
    Raises Unavailable when node or npm is missing or npm install fails."""
    for program in ("node", "npm"):
        if shutil.which(program) is None:
            raise Unavailable(f"{program} is not installed (apt-get install nodejs npm)")
    folder = PEERS / "node"
    wanted = json.loads((SOURCES / "package.json").read_text())["dependencies"]
    if _installed_node(folder) != wanted:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(SOURCES / "package.json", folder / "package.json")
        print(f"# installing {', '.join(f'{k}@{v}' for k, v in wanted.items())} into {folder} ...", flush=True)
        _run(["npm", "install", "--no-audit", "--no-fund", "--no-save"], "npm install", cwd=folder)
        if _installed_node(folder) != wanted:
            raise Unavailable(f"npm install left other versions than {wanted} in {folder}")
    return folder


def _installed_node(folder):
    out = {}
    for name in ("bun", "socket.io"):
        try:
            out[name] = json.loads((folder / "node_modules" / name / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            return None
    return out


def bun_binary():
    """The bun executable the npm package installed (from its per-platform npm package).
    Raises Unavailable."""
    binary = ensure_node() / "node_modules" / ".bin" / "bun"
    if not binary.exists():
        raise Unavailable(f"the npm package bun left no binary at {binary}")
    _run([str(binary), "--version"], "bun --version")
    return binary


def ensure_flask():
    """bench/.peers/flask, a venv with Flask-SocketIO as pinned; returns its python."""
    folder = PEERS / "flask"
    python = folder / "bin" / "python"
    requirements = SOURCES / "requirements-flask.txt"
    stamp = folder / ".installed"
    if not stamp.exists() or stamp.read_text() != requirements.read_text():
        print(f"# installing Flask-SocketIO into {folder} ...", flush=True)
        _run([sys.executable, "-m", "venv", "--clear", str(folder)], "python -m venv")
        _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
              str(requirements)], "pip install Flask-SocketIO")
        stamp.write_text(requirements.read_text())
    return python
