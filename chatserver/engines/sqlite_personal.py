"""Read markers and DMs that wait in the SQLite file (the SQLite engine's share of them): the
`marks` and `dms` tables (engines/sqlite_file.py), written through from engines/personal.py's
LocalPersonal."""

import logging
import sqlite3

import orjson

from chatserver.engines.base import Unavailable
from chatserver.engines.personal import LocalPersonal
from chatserver.engines.sqlite_file import (
    DROP_DMS,
    FORGET_MARK,
    READ_DMS,
    READ_MARKS,
    SAVE_DM,
    SAVE_MARK,
    connect,
)

log = logging.getLogger("roomchat.store")


class SqlitePersonal(LocalPersonal):
    """LocalPersonal written through to the SQLite file's `marks` and `dms` tables, on a connection
    of its own (`_personal_conn`, used under `_personal_lock`, opened at the first write), with the
    writer's `synchronous` setting: a mark costs a WAL append, not an fsync, and is as durable as a
    chat. Read whole at start (`_load_personal`), served from memory. `_close_personal` at close."""

    def _load_personal(self, conn) -> None:
        """Read the tables at start, on the opening connection. Raises sqlite3.Error."""
        dms = [(identity, n, orjson.loads(event)) for identity, n, event in conn.execute(READ_DMS)]
        self._init_personal(conn.execute(READ_MARKS).fetchall(), dms)
        self._personal_sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        self._personal_conn = None

    def _close_personal(self) -> None:
        with self._personal_lock:
            if self._personal_conn is not None:
                self._personal_conn.close()
                self._personal_conn = None

    def _save_mark(self, identity: str, room: str, seq: int, at: float, forget: str | None) -> None:
        steps = [(SAVE_MARK, (identity, room, seq, at))]
        if forget is not None:
            steps.append((FORGET_MARK, (identity, forget)))
        self._personal_write(steps, "read marker")

    def _save_dm(self, identity: str, n: int, event: dict) -> None:
        self._personal_write([(SAVE_DM, (n, identity, orjson.dumps(event).decode()))], "direct message")

    def _drop_dms(self, identity: str, upto: int) -> None:
        self._personal_write([(DROP_DMS, (identity, upto))], "direct message")

    def _personal_write(self, steps: list, what: str) -> None:
        """Run [(statement, params)] in one transaction (`_personal_lock` held). Raises Unavailable."""
        try:
            if self._personal_conn is None:
                self._personal_conn = connect(self.path, self._busy_timeout)
                self._personal_conn.execute(f"PRAGMA synchronous = {int(self._personal_sync)}")
            conn = self._personal_conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement, params in steps:
                    conn.execute(statement, params)
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            log.error("cannot store a %s: %s", what, exc)
            raise Unavailable(f"the {what} cannot be stored") from None
