"""roomchat's server internals: transport, frames, protocol, hub and registry, engines, and wiring.

Imports go one way: app -> {transport, dispatch, registry, engines, exposure, tls}; registry ->
hub -> engine (the interface); dispatch -> handlers -> {registry, protocol, errors}; transport ->
{handshake, frames, streams, state, housekeeper, proxies, tls}; config -> {exposure, proxies} ->
handshake. transport is the only module that imports websocket_server; sqlite_engine (with
sqlite_file) the only one that imports sqlite3; redis_engine the only one that imports redis.
"""

__version__ = "1.0.0"
