"""TLS for https:// and wss:// on the WebSocket port, with the standard library's ssl module.

`server_context(certfile, keyfile)` builds the one `ssl.SSLContext` (PROTOCOL_TLS_SERVER: TLS 1.2
and 1.3, the library's modern cipher defaults, no compression, ALPN "http/1.1"). Each connection
gets a `TlsSession`: an `ssl.SSLObject` over memory buffers (ssl's MemoryBIO), so the socket stays
a plain socket. Why not `SSLSocket`: our outbox writes with MSG_DONTWAIT from any thread, which
SSLSocket refuses, and an SSLSocket read and written from two threads at once is not safe. Here
the transport moves the bytes, and TLS only turns plaintext into records and back.

Threads and locks: `handshake` runs on the connection's own thread, before the HTTP request is
read and under the same deadline (the accept thread never waits for a slow TLS client). Then
that thread decrypts in `recv`, and whoever sends encrypts in `encrypt`, called by the Outbox
with its lock held: so records leave in the order they are made. `self._lock` guards the
SSLObject and its buffers; it is a leaf taken after the Outbox lock, and no socket call is made
while it is held.
"""

import ssl
import threading

from chatserver.errors import HandshakeError

TLS_RECORD = 0x16  # first byte of a TLS handshake record (RFC 8446 section 5.1): a ClientHello
RECV_SIZE = 65536
MAX_PLAINTEXT = 256 * 1024  # bytes `recv` returns at most at once


class TlsSetupError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


def server_context(certfile: str, keyfile: str = "") -> ssl.SSLContext:
    """The server's TLS settings, with the certificate chain from `certfile` (PEM, leaf first) and
    its private key from `keyfile` (or from `certfile` when it holds both).

    Raises:
        TlsSetupError: a file is missing or unreadable, or the key does not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile, keyfile or None)
    except (OSError, ssl.SSLError) as exc:  # FileNotFoundError, PEM errors, a key that does not match
        files = f"{certfile}" + (f" and {keyfile}" if keyfile else "")
        raise TlsSetupError(f"cannot use {files}: {exc.strerror or exc}") from None
    return context


class TlsSession:
    """One connection's TLS: `handshake()`, then `recv(n)` for plaintext and `encrypt(data)` for records."""

    def __init__(self, context: ssl.SSLContext, sock):
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._lock = threading.Lock()
        self.established = False

    def handshake(self) -> None:
        """Run the TLS handshake (RFC 8446 section 4) over the socket, on the connection's thread;
        the socket's timeout bounds each wait.

        Raises:
            HandshakeError: 400 when the first bytes are not a TLS record (plain HTTP sent to this
                port); the caller answers it unencrypted.
            ssl.SSLError: the peer's TLS was refused (no common version or cipher, bad record).
            OSError: the socket failed or timed out (TimeoutError). EOFError: the peer left.
        """
        first = True
        while True:
            done, error = False, None
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    error = exc
                pending = self._outgoing.read()  # our next flight, or the alert that says why we refuse
            if pending:
                self._sock.sendall(pending)
            if error:
                raise error
            if done:
                self.established = True
                return
            data = self._sock.recv(RECV_SIZE)
            if not data:
                raise EOFError
            if first and data[0] != TLS_RECORD:
                raise HandshakeError(400, "this port speaks TLS: use https:// or wss://")
            first = False
            with self._lock:
                self._incoming.write(data)

    def recv(self, n: int) -> bytes:
        """Plaintext: at least one byte, and whatever else is already decrypted (at most
        MAX_PLAINTEXT, `n` is only a hint); b"" when the peer closed (TCP EOF or close_notify).

        Raises:
            ssl.SSLError: a record failed to decrypt (the connection cannot go on).
            OSError: the socket failed or timed out (TimeoutError).
        """
        while True:
            parts, size = [], 0
            with self._lock:
                try:
                    while size < MAX_PLAINTEXT:
                        part = self._tls.read(max(n, RECV_SIZE))
                        if not part:
                            break
                        parts.append(part)
                        size += len(part)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:  # close_notify
                    return b"".join(parts)
            if parts:
                return b"".join(parts)
            data = self._sock.recv(RECV_SIZE)
            if not data:
                return b""
            with self._lock:
                self._incoming.write(data)

    def encrypt(self, data: bytes) -> bytes:
        """The TLS records carrying `data` (RFC 8446 section 5.2), after any bytes TLS itself
        still had to send. Callers must send the result in the order of their calls (the Outbox
        calls it with its lock held). Raises ssl.SSLError if the session is broken."""
        with self._lock:
            if data:
                self._tls.write(data)
            return self._outgoing.read()
