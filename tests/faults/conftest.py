"""Fixtures of the fault suite: `rig`, a Rig (tests/faults/harness.py) with this test's own
redis-server (skipped with one line without one; failing under CI=true), torn down with every
process, proxy and client it made."""

import pytest

from tests.faults.harness import Rig


@pytest.fixture
def rig(tmp_path):
    """A Rig: its redis-server is running; processes and clients are added by the test."""
    rig = Rig(tmp_path)
    yield rig
    rig.close()
