"""docs/deploy.md "Backups", run as written: an online backup of a running roomchat's history (with the
sqlite3 program and with Python), restored under a new epoch."""

import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, Peer, require_program

LIVE, BACKUP = "/var/lib/roomchat/roomchat.db", "/var/backups/roomchat.db"


def readme_command(pattern: str) -> str:
    """The one line of docs/deploy.md's "Backups" section that matches `pattern` at its start."""
    section = (ROOT / "docs" / "deploy.md").read_text().split("## Backups\n", 1)[1].split("\n## ", 1)[0]
    (line,) = [line for line in section.splitlines() if re.match(pattern, line)]
    return line


def run_readme(line: str, live, backup) -> None:
    command = line.replace(LIVE, str(live)).replace(BACKUP, str(backup))
    if command.startswith("python3 "):
        command = f"'{sys.executable}' " + command[len("python3 "):]
    subprocess.run(["bash", "-c", command], check=True, timeout=30)


@pytest.mark.parametrize("tool", [r"sqlite3 \S+ \"\.backup ", r"python3 -c "])
def test_backup_while_running_then_restore_with_new_epoch(spawn, tmp_path, tool):
    """A backup taken while roomchat runs holds every acknowledged event; restored as the
    docs/deploy.md says, roomchat serves that history under a new epoch, so clients reload."""
    require_program("sqlite3", "apt-get install sqlite3")  # the restore step uses it either way
    live, backup = tmp_path / "roomchat.db", tmp_path / "backup.db"
    server = spawn("--db", str(live))
    peer = Peer(server.url)
    peer.join("lobby")
    peer.chat_all("lobby", ["one", "two", "three"])  # acknowledged: committed
    run_readme(readme_command(tool), live, backup)
    peer.chat_all("lobby", ["after the backup"])
    epoch = peer.welcome["epoch"]
    peer.close()
    assert server.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"roomchat.db{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, live)
    run_readme(readme_command(r"sqlite3 \S+ \"DELETE "), live, backup)
    restored = spawn("--db", str(live))
    peer = Peer(restored.url)
    assert peer.welcome["epoch"] != epoch
    assert [m["text"] for m in peer.join("lobby")["history"]] == ["one", "two", "three"]
    peer.close()
