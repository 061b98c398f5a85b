"""Room rules and reserved nicks in the one-process engines (memory and SQLite, engine.LocalRules).
(The Redis engine's are tested against a real redis-server: tests/integration/test_redis_identity.py.)"""

import contextlib
import sqlite3
import time

import pytest

from chatserver.engines.memory import MemoryEngine
from chatserver.engines.sqlite import SqliteEngine


@pytest.fixture(params=["memory", "sqlite"])
def engine(request, tmp_path):
    """A started-less engine of this run's kind; closed at teardown."""
    made = MemoryEngine() if request.param == "memory" else SqliteEngine(str(tmp_path / "h.db"))
    yield made
    made.close()


def test_reservation_grows_only_and_covers_look_alikes(engine):
    """A nick reservation is found under any look-alike spelling, and a shorter one never shortens it."""
    now = time.time()
    engine.reserve_nick("bill", now + 100)
    engine.reserve_nick("BILL", now + 10)
    assert engine.reserved_until("Bi11") == pytest.approx(now + 100)
    engine.reserve_nick("bill", now + 200)
    assert engine.reserved_until("bill") == pytest.approx(now + 200)
    assert engine.reserved_until("bob") is None


def test_an_expired_reservation_or_rule_is_gone(engine):
    """Times already past read as nothing: a reservation, a ban."""
    engine.reserve_nick("ann", time.time() - 1)
    engine.restrict("lobby", "ban", "ann", time.time() - 1)
    assert engine.reserved_until("ann") is None and engine.restricted_until("lobby", "ban", "ann") is None


def test_topic_set_and_cleared(engine):
    """A room's topic is "" until set; "" clears it; other rooms are unaffected."""
    assert engine.topic("lobby") == ""
    engine.set_topic("lobby", "Exam at 10")
    assert (engine.topic("lobby"), engine.topic("other")) == ("Exam at 10", "")
    engine.set_topic("lobby", "")
    assert engine.topic("lobby") == ""


def test_ban_and_mute_are_per_room_and_kind_and_lift(engine):
    """A ban or mute holds for its room and kind only, for any look-alike of the nick, until lifted."""
    until = time.time() + 60
    engine.restrict("lobby", "ban", "Bob", until)
    engine.restrict("lobby", "mute", "eve", until)
    assert engine.restricted_until("lobby", "ban", "B0B") == pytest.approx(until)
    assert engine.restricted_until("other", "ban", "bob") is None
    assert engine.restricted_until("lobby", "mute", "bob") is None
    assert engine.restricted_until("lobby", "mute", "EVE") == pytest.approx(until)
    engine.restrict("lobby", "ban", "bob", time.time())  # now: lifted
    assert engine.restricted_until("lobby", "ban", "bob") is None


def test_sqlite_keeps_rules_across_a_restart_and_forgets_expired_ones(tmp_path):
    """Topics, bans and reservations survive a restart of the SQLite engine; those that expired are deleted."""
    path = str(tmp_path / "h.db")
    first = SqliteEngine(path)
    first.set_topic("lobby", "welcome")
    first.restrict("lobby", "ban", "bob", time.time() + 60)
    first.reserve_nick("ann", time.time() + 60)
    first.restrict("lobby", "mute", "eve", time.time() + 0.05)
    first.close()
    time.sleep(0.1)
    again = SqliteEngine(path)
    try:
        assert again.topic("lobby") == "welcome"
        assert again.restricted_until("lobby", "ban", "bob") is not None
        assert again.reserved_until("ann") is not None
        assert again.restricted_until("lobby", "mute", "eve") is None
    finally:
        again.close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("SELECT count(*) FROM rules WHERE kind = 'mute'").fetchone()[0] == 0
