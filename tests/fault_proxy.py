"""A fault-injecting TCP proxy for tests: a test tool, not a server.

It exists to inject faults that no real server produces on demand: a
connection cut after a given number of bytes, a stall in the middle of a
response, a burst of ``503 Service Unavailable`` answers, connections reset
on arrival. It sits on a free loopback port in front of a real upstream (the
tests' nginx), forwards bytes both ways unchanged, and counts what it did.

    with FaultProxy("127.0.0.1", nginx_port) as proxy:
        proxy.cut_after_bytes = 4 << 20
        load(f"http://127.0.0.1:{proxy.port}/x.tensors")
        assert proxy.connections > 10

The fault settings are plain attributes, read when a connection or a request
needs them, so a test may change them while the proxy runs:

- ``cut_after_bytes``: close every connection once it has sent this many
  bytes downstream (response headers included). ``None``: off.
- ``stall_after_bytes``, ``stall_seconds``, ``stall_connections``: stop
  forwarding for ``stall_seconds`` once a connection has sent
  ``stall_after_bytes`` downstream; at most ``stall_connections``
  connections stall (``None``: every one).
- ``fail_503``: answer the next this many HTTP requests (on new or kept-alive
  connections) with ``HTTP/1.1 503 Service Unavailable`` and
  ``Connection: close`` without forwarding them; ``retry_after`` adds a
  ``Retry-After`` header (seconds) when not ``None``.
- ``refuse``: reset every new connection at once (TCP RST), never
  contacting the upstream. An upstream that refuses connections has the same
  effect: the client's connection is reset.

Requests are recognised by their head (up to the blank line); the clients
under test send GETs without a body and never pipeline, so every byte from
the client belongs to a request head. Bytes that do not look like HTTP (a TLS
handshake) are forwarded raw, and only the byte-level faults apply to them.

One thread accepts; one thread per connection moves bytes both ways. Leaving
the context (or ``close()``) closes every socket and joins every thread.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
from typing import List, Optional, Tuple

_RECV_BYTES = 256 * 1024
_POLL_S = 0.05
# A send that makes no progress for this long means the peer is gone.
_SEND_TIMEOUT_S = 10.0
_HTTP_START = re.compile(rb"^[A-Z]+ ")
_RANGE = re.compile(rb"^range:\s*bytes=(\d+)-(\d*)\s*$", re.IGNORECASE | re.MULTILINE)


def _reset(sock: Optional[socket.socket]) -> None:
    """Closes with a TCP RST rather than a FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _close(sock: Optional[socket.socket]) -> None:
    if sock is not None:
        sock.close()


class _Cut(Exception):
    """The connection is to end here (a fault, or a peer went away)."""


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        # Fault settings (see the module docstring).
        self.cut_after_bytes: Optional[int] = None
        self.stall_after_bytes: Optional[int] = None
        self.stall_seconds: float = 0.0
        self.stall_connections: Optional[int] = None
        self.fail_503: int = 0
        self.retry_after: Optional[int] = None
        self.refuse: bool = False
        # Counters, under _lock.
        self.connections = 0  # accepted
        self.bytes_downstream = 0  # upstream -> client
        self.bytes_upstream = 0  # client -> upstream
        self.cuts = 0
        self.stalls = 0
        self.responses_503 = 0
        self.resets = 0
        # (first, last) of each forwarded request's Range header; last is
        # None for an open range, and the entry is None for no Range.
        self.ranges: List[Optional[Tuple[int, Optional[int]]]] = []

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._threads: List[threading.Thread] = []
        self._sockets: set = set()
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._acceptor.start()

    # --- lifetime ---------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        # Every connection thread polls _stop at least every _POLL_S and
        # closes its own sockets on the way out.
        for t in threads:
            t.join()

    # --- counters -----------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def _take_503(self) -> bool:
        with self._lock:
            if self.fail_503 <= 0:
                return False
            self.fail_503 -= 1
            self.responses_503 += 1
            return True

    def _take_stall(self) -> bool:
        with self._lock:
            if self.stall_connections is not None:
                if self.stall_connections <= 0:
                    return False
                self.stall_connections -= 1
            self.stalls += 1
            return True

    # --- threads ------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], _POLL_S)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            self._count("connections")
            if self.refuse:
                self._count("resets")
                _reset(client)
                continue
            t = threading.Thread(
                target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True
            )
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError as exc:  # includes socket.timeout
            raise _Cut() from exc

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_SEND_TIMEOUT_S)
        try:
            self._relay(client)
        except (_Cut, OSError):
            pass
        finally:
            _close(client)

    def _connect_upstream(self, client: socket.socket) -> socket.socket:
        try:
            up = socket.create_connection(self.upstream, timeout=_SEND_TIMEOUT_S)
        except OSError as exc:
            # A refusing upstream: the client sees its connection reset.
            self._count("resets")
            _reset(client)
            raise _Cut() from exc
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return up

    def _answer_503(self, client: socket.socket) -> None:
        body = b"503 Service Unavailable (injected by the test's fault proxy)\n"
        head = [
            b"HTTP/1.1 503 Service Unavailable",
            b"Content-Type: text/plain",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if self.retry_after is not None:
            head.append(b"Retry-After: %d" % self.retry_after)
        self._send(client, b"\r\n".join(head) + b"\r\n\r\n" + body)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)
        raise _Cut()

    def _relay(self, client: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        sent_down = 0  # bytes sent to the client on this connection
        stalled = False
        http: Optional[bool] = None  # decided by the first client bytes
        head = b""  # an incomplete request head
        try:
            while not self._stop.is_set():
                socks = [client] if upstream is None else [client, upstream]
                ready, _, _ = select.select(socks, [], [], _POLL_S)
                if client in ready:
                    data = client.recv(_RECV_BYTES)
                    if not data:
                        return
                    if http is None:
                        http = bool(_HTTP_START.match(data))
                    if http:
                        head += data
                        data = b""
                        while b"\r\n\r\n" in head:
                            one, head = head.split(b"\r\n\r\n", 1)
                            if self._take_503():
                                self._answer_503(client)
                            m = _RANGE.search(one)
                            with self._lock:
                                self.ranges.append(
                                    (int(m[1]), int(m[2]) if m[2] else None) if m else None
                                )
                            data += one + b"\r\n\r\n"
                    if data:
                        if upstream is None:
                            upstream = self._connect_upstream(client)
                        self._send(upstream, data)
                        self._count("bytes_upstream", len(data))
                if upstream is not None and upstream in ready:
                    data = upstream.recv(_RECV_BYTES)
                    if not data:
                        return
                    cut = self.cut_after_bytes
                    if cut is not None and sent_down + len(data) > cut:
                        data = data[: max(0, cut - sent_down)]
                        self._send(client, data)
                        self._count("bytes_downstream", len(data))
                        self._count("cuts")
                        raise _Cut()
                    at = self.stall_after_bytes
                    if (
                        not stalled
                        and at is not None
                        and sent_down + len(data) >= at
                        and self._take_stall()
                    ):
                        stalled = True
                        first = data[: max(0, at - sent_down)]
                        self._send(client, first)
                        self._count("bytes_downstream", len(first))
                        sent_down += len(first)
                        data = data[len(first) :]
                        if self._stop.wait(self.stall_seconds):
                            return
                    self._send(client, data)
                    self._count("bytes_downstream", len(data))
                    sent_down += len(data)
        finally:
            _close(upstream)
