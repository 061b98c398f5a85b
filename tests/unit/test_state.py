"""A connection's state machine on its own: the allowed moves, the first reason, one winner per move."""

import threading

import pytest

from chatserver.transport.state import MOVES, ConnectionState, State


def at(state: State) -> ConnectionState:
    life = ConnectionState()
    path = {State.CONNECTING: [], State.OPEN: [State.OPEN], State.CLOSING: [State.OPEN, State.CLOSING],
            State.CLOSED: [State.CLOSED]}[state]
    for step in path:
        life.move(step)
    assert life.state is state
    return life


@pytest.mark.parametrize("start", list(State))
@pytest.mark.parametrize("to", list(State))
def test_only_the_listed_moves_happen(start, to):
    """move() goes forward along MOVES and returns the state it left; any other move returns None
    and changes nothing."""
    life = at(start)
    was = life.move(to)
    if to in MOVES[start]:
        assert (was, life.state) == (start, to)
    else:
        assert (was, life.state) == (None, start)


def test_states_only_go_forward():
    """No state can be reached again once left (CLOSED is final)."""
    order = list(State)
    for start, targets in MOVES.items():
        assert all(order.index(target) > order.index(start) for target in targets)
    assert MOVES[State.CLOSED] == set()


def test_first_reason_is_kept():
    """The reason logged is the first one given; later moves do not overwrite it."""
    life = at(State.OPEN)
    life.move(State.CLOSING, "closed by server (1008 too slow)")
    life.move(State.CLOSED, "connection lost")
    assert life.reason == "closed by server (1008 too slow)"


def test_one_winner_when_threads_race_to_close():
    """Of many threads moving OPEN -> CLOSING and then -> CLOSED at once, exactly one wins each move."""
    for _ in range(50):
        life = at(State.OPEN)
        wins = {State.CLOSING: [], State.CLOSED: []}
        start = threading.Barrier(8)

        def race(life=life, wins=wins, start=start):
            start.wait()
            for to in (State.CLOSING, State.CLOSED):
                if life.move(to) is not None:
                    wins[to].append(threading.get_ident())

        threads = [threading.Thread(target=race) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (len(wins[State.CLOSING]), len(wins[State.CLOSED])) == (1, 1)
