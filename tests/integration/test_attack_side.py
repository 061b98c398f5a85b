"""Typing, read markers and DMs that wait, from hostile or careless clients and in races, over
real sockets on the SQLite and memory engines."""

import threading

import pytest

from tests.helpers import FAST_LIMITS, SECRET, token, wait_for, with_token

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "memory"])
def side_server(request, make_server, tmp_path):
    """side_server(**settings) -> a server with a token secret and no rate limits in the way."""
    db = str(tmp_path / "side.db") if request.param == "sqlite" else ":memory:"
    return lambda **overrides: make_server(**{"db": db, "token_secret": SECRET, **FAST_LIMITS, **overrides})


def test_a_dm_kept_while_its_recipient_connects_reaches_that_connection(side_server, peers, monkeypatch):
    """A DM found no one connected and is being kept when its recipient connects (and finds no
    DM waiting yet): it is handed to that connection once kept, not left until the next one."""
    server = side_server()
    peers(with_token(server.url, token("ann"))).close()
    bob = peers(server.url)
    wait_for(lambda: bob.request(type="dm", to="ann", text="first").get("stored"), timeout=10)
    ann = peers(with_token(server.url, token("ann")))
    assert ann.recv()["text"] == "first"
    ann.close()
    wait_for(lambda: bob.request(type="dm", to="ann", text="second").get("stored"), timeout=10)
    peers(with_token(server.url, token("ann"))).close()  # takes "second"
    keep, inside, go = server.engine.keep_dm, threading.Event(), threading.Event()

    def held_keep(*args):
        inside.set()
        assert go.wait(20)
        return keep(*args)

    monkeypatch.setattr(server.engine, "keep_dm", held_keep)
    wait_for(lambda: server.registry.stats()["connections"] == 1, timeout=10)  # ann's last connection is gone
    bob.send(type="dm", to="ann", text="racing", id="r")
    assert inside.wait(10)
    ann = peers(with_token(server.url, token("ann")))  # its welcome finds nothing waiting yet
    assert ann.request(type="ping") == {"type": "pong"}
    go.set()
    assert bob.recv_type("dm")["stored"] is True
    dm = ann.recv()
    assert (dm["type"], dm["text"], dm["stored"]) == ("dm", "racing", True)
    monkeypatch.setattr(server.engine, "keep_dm", keep)
    ann.close()
    assert peers(with_token(server.url, token("ann"))).request(type="ping") == {"type": "pong"}  # delivered once
