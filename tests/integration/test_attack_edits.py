"""Edit, delete and react from hostile or careless clients over real sockets, on the memory and
SQLite engines: seqs at the edge of what the protocol allows, odd emoji, races."""

import pytest

from chatserver.protocol import MAX_SEQ
from tests.helpers import FAST_LIMITS
from tests.integration.test_edits import ask, seated

ENGINES = ["memory", "sqlite"]


@pytest.fixture(params=ENGINES)
def start(request, make_server, tmp_path):
    """start(**overrides) -> a server on the engine of this run (a fresh SQLite file, or memory)."""
    db = ":memory:" if request.param == "memory" else str(tmp_path / "history.db")
    return lambda **overrides: make_server(**{"db": db, **FAST_LIMITS, **overrides})


def test_the_largest_seq_is_no_such_message(start, peers):
    """An edit, delete or react of seq 2**63 - 1 (the largest the protocol allows) is no_such_message
    on every engine, not a closed connection; past it is bad_message."""
    server = start()
    (ann,) = seated(server, peers, "ann")
    ask(ann, type="chat", room="lobby", text="hi")
    for request in ({"type": "edit", "text": "x"}, {"type": "delete"}, {"type": "react", "emoji": "👍"}):
        assert ask(ann, room="lobby", seq=MAX_SEQ, **request)["code"] == "no_such_message", request
        assert ask(ann, room="lobby", seq=MAX_SEQ + 1, **request)["code"] == "bad_message", request
    assert ask(ann, type="edit", room="lobby", seq=1, text="still mine")["type"] == "edit"
