"""The fault suite (issue 16): several roomchat processes on one real redis-server, with faults
injected for real, and the properties users need checked at the end of every case.

harness.py    FaultyRedis (SIGSTOP, DEBUG SLEEP, kill -9, restart from a cut AOF), Proxy (a TCP
              proxy that blackholes, holds replies, cuts and heals one process's link), Node (a
              roomchat process), Rig (all of a test's processes and clients, and what they saw)
recorder.py   Recorder: a chat client that records everything and follows 1012 as real clients do
streams.py    one client's chat streams in segments: gaps, repeats, continuation by `after`
invariants.py check(): the properties every case ends with
test_*.py     the cases: pauses (process, Redis), links (blackhole, blip, cut), redis_data (cut
              AOF, a held chat), races (nick claims, ban against join), deaths (kill -9, SIGTERM);
              test_harness.py and test_streams.py check the harness itself

Run: .venv/bin/python -m pytest tests/faults (each case runs its own redis-server; skipped
without one, failing under CI=true). Every process gets `--redis-lease 2` (harness.LEASE).
"""
