"""roomchat's server internals: transport, frames, protocol, hub and registry, engines, and wiring.

Imports go one way: app -> {transport, dispatch, registry, engines}; registry -> hub -> engine
(the interface); dispatch -> handlers -> {registry, protocol, errors}. transport is the only
module that imports websocket_server; sqlite_engine the only one that imports sqlite3 (with
sqlite_file), redis_engine the only one that imports redis.
"""

__version__ = "1.0.0"
