"""roomchat's server internals: transport, frames, protocol, registry, store and wiring.

Imports go one way: app -> {transport, dispatch, registry, store, exposure, tls}; dispatch ->
handlers -> {registry, protocol, errors}; transport -> {handshake, frames, streams, state,
housekeeper, proxies, tls}; config -> {exposure, proxies} -> handshake; transport is the only
module that imports websocket_server.
"""

__version__ = "1.0.0"
