"""selftest's checks of a team's requests (chatclient/selftest_team.py) against real servers: the
SQLite engine, `--db :memory:` and a process on Redis pass them all; a server whose engine cannot
search (answers `unsupported`, as roomchat on Redis did before it searched there) makes the search
check say skip; without a token the checks that need one say skip, with what to give."""

import io

import pytest

from chatclient.selftest import run
from chatclient.selftest_checks import CHECKS
from chatserver.engines.memory import MemoryEngine
from chatserver.errors import ChatError
from tests.helpers import SECRET, token

TEAM = ["edit", "delete", "react", "error too_many_reactions", "typing", "mark", "mark on another device", "search",
        "dm stored"]


def selftest(url: str, op_token: str | None = None) -> tuple[int, dict]:
    """Run the team's checks; (exit status, check name -> its line's status)."""
    out = io.StringIO()
    status = run(url, timeout=5, only=set(TEAM), out=out, op_token=op_token)
    lines = out.getvalue().splitlines()
    longest_first = sorted(TEAM, key=len, reverse=True)  # "mark on another device" before "mark"
    named = {next(n for n in longest_first if line[6:].startswith(n + " ")): line for line in lines[:-1]}
    return status, {name: (line.split()[0], line) for name, line in named.items()}


def test_the_team_checks_are_registered_in_order():
    """Each of the team's checks runs once, after the checks of protocol v1's first requests."""
    names = [name for name, _ in CHECKS]
    assert [n for n in names if n in TEAM] == TEAM and names.index("edit") > names.index("resume")


@pytest.mark.parametrize("db", ["file", ":memory:"])
def test_every_team_check_passes_on_one_process(make_server, tmp_path, db):
    """SQLite and the memory engine, with an operator's token: every team check is ok."""
    server = make_server(db=str(tmp_path / "h.db") if db == "file" else ":memory:", token_secret=SECRET)
    status, result = selftest(server.url, op_token=token("selftest-op", op=True))
    assert status == 0 and {name: r[0] for name, r in result.items()} == dict.fromkeys(TEAM, "ok"), result


def test_on_redis_every_team_check_passes(redis_server, spawn):
    """A process on Redis, with an operator's token: every team check is ok, search included."""
    process = spawn("--redis", redis_server.url, "--token-secret", SECRET)
    status, result = selftest(process.url, op_token=token("selftest-op", op=True))
    assert status == 0 and {name: r[0] for name, r in result.items()} == dict.fromkeys(TEAM, "ok"), result


class CannotSearch(MemoryEngine):
    """The memory engine but for search, which it refuses as an engine that cannot search does."""

    def search(self, room, words, before=None, limit=50, max_bytes=None):
        raise ChatError("unsupported", "this server's engine does not search")


def test_search_is_skipped_on_a_server_that_answers_unsupported(make_server):
    """A server whose engine answers search with `unsupported`: the search check says skip,
    quoting the server; the others pass and the run's status is 0."""
    status, result = selftest(make_server(engine=CannotSearch(), token_secret=SECRET).url,
                              op_token=token("selftest-op", op=True))
    assert status == 0, result
    assert {name: r[0] for name, r in result.items()} == {**dict.fromkeys(TEAM, "ok"), "search": "skip"}, result
    assert "unsupported" in result["search"][1] and "does not search" in result["search"][1]


def test_without_a_token_the_identity_checks_skip(make_server):
    """No --op-token and no secret: the checks of marks on another device and of stored DMs say
    skip and name what to give; the others pass."""
    status, result = selftest(make_server().url)
    assert status == 0, result
    skipped = {name for name, r in result.items() if r[0] == "skip"}
    assert skipped == {"mark on another device", "dm stored"}, result
    assert all("--op-token" in result[name][1] for name in skipped)
