"""README's "A team's day", run as written with bash against `python roomchat.py` with a token
secret (its port for 8765): the bot's curl post, ann's reaction, edit, search and mark from the
terminal client, bob's answer, and ann's other device counting what she has not read."""

import json
import re
import subprocess

from tests.helpers import ROOT, as_run_here, curl_server

README = (ROOT / "README.md").read_text("utf-8")


def team_day_script() -> str:
    """The ```sh block of README's "A team's day" section."""
    section = README[README.index("## A team's day"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_team_day_runs_as_the_readme_says(tmp_path):
    """Each command of the section succeeds, and the clients print what the prose after it says."""
    server, env = curl_server(tmp_path, "team.db")
    try:
        script = "set -e\n" + team_day_script().replace("127.0.0.1:8765", f"127.0.0.1:{server.port}")
        done = subprocess.run(["bash", "-c", as_run_here(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=90)
    finally:
        assert server.stop() == 0
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    posted = json.loads(lines[0])
    assert (posted["from"], posted["text"], posted["seq"]) == ("ci-bot", "build 124 is green", 1)
    out = "\n".join(line.split(" ", 1)[1] for line in lines[1:])  # without the clocks
    for said in ("[dev] #1 <ci-bot> build 124 is green", "[dev] * ann reacted 🎉 to #1",
                 "[dev] * ann edited #3: release at 4 today?", "[dev] #1 <ci-bot> build 124 is green",
                 "* dev marked read up to #4", "[dev] #5 <bob> yes, @ann: at 4",
                 "* 1 unread in dev since you last read (#4); /mark when read"):
        assert said in out, out
    prose = README[README.index("## A team's day"):README.index("## Documentation")]
    for quoted in ("#1 <ci-bot> build 124 is green", "* ann reacted 🎉 to #1", "* ann edited #3: release at 4 today?",
                   "* dev marked read up to #4", "* 1 unread in dev since you last read (#4); /mark when read"):
        assert quoted in prose and quoted.lstrip("* ") in out
