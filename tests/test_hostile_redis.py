"""A Redis endpoint that lies, stalls or never ends (issue 12: #9, #10, #11).

A real redis-server cannot be made to return a SCAN cursor that never ends,
invent keys on every page, trickle a reply a byte at a time or drop every
connection after a few bytes, so these cases talk to a small scripted RESP
server of our own (FakeRedis below), one behaviour per case. The data it
serves is what our own ``to_redis`` writes for a real file; every behaviour
the load depends on otherwise (the listing, GETRANGE reads) follows Redis's
protocol as tests/test_redis.py checks it against redis-server.
"""

import errno
import socket
import socketserver
import threading
import time

import pytest
import torch

from tensorizer import TensorDeserializer, TensorSerializer, stream_io


class _Keys(dict):
    """What to_redis stores, captured: the keys and values of one file."""

    def set(self, key, value):
        self[key] = bytes(value)

    def exists(self, key):
        return key in self


def _file_keys(tmp_path, prefix="m"):
    path = tmp_path / "m.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict({"a": torch.arange(100_000, dtype=torch.float32), "b": torch.ones(7)})
    s.close()
    keys = _Keys()
    with TensorDeserializer(str(path), lazy_load=True) as d:
        d.to_redis(keys, prefix)
    return keys


def _encode(value) -> bytes:
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(_encode(v) for v in value)
    if isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


class FakeRedis:
    """A RESP server on loopback. ``handle(command, args, conn)`` answers one
    command by writing to ``conn`` (a socket); the default serves ``keys``
    as Redis would (GETRANGE, STRLEN, DBSIZE, one-page SCAN)."""

    def __init__(self, keys, handle=None):
        self.keys = keys
        self.handle = handle or self.serve
        self.connections = 0
        self.commands = []
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                fake.connections += 1
                stream = self.request.makefile("rb")
                try:
                    while True:
                        command = fake._read_command(stream)
                        if command is None:
                            return
                        fake.commands.append(command[0])
                        fake.handle(command[0], command[1:], self.request)
                except (OSError, ValueError):
                    return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def uri(self, prefix="m"):
        return f"redis://127.0.0.1:{self.port}/{prefix}"

    @staticmethod
    def _read_command(stream):
        line = stream.readline()
        if not line:
            return None
        count = int(line[1:])
        args = []
        for _ in range(count):
            length = int(stream.readline()[1:])
            args.append(stream.read(length + 2)[:-2])
        return [args[0].decode().upper(), *args[1:]]

    def serve(self, command, args, conn):
        conn.sendall(self.answer(command, args))

    def answer(self, command, args):
        if command == "GETRANGE":
            value = self.keys.get(args[0].decode(), b"")
            first, last = int(args[1]), int(args[2])
            return _encode(value[first : last + 1])
        if command == "STRLEN":
            return _encode(len(self.keys.get(args[0].decode(), b"")))
        if command == "DBSIZE":
            return _encode(len(self.keys))
        if command == "SCAN":
            return _encode(["0", list(self.keys)])
        return b"-ERR unknown command\r\n"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keys(tmp_path):
    return _file_keys(tmp_path)


def _open(uri, **http):
    return TensorDeserializer(
        stream_io.open_stream(uri, http_options=stream_io.HttpOptions(**http)), lazy_load=True
    )


def test_the_fake_serves_a_file_that_loads(keys):
    # The baseline for the cases below: the fake speaks enough Redis to load.
    fake = FakeRedis(keys)
    try:
        with _open(fake.uri()) as d:
            assert torch.equal(d["a"], torch.arange(100_000, dtype=torch.float32))
    finally:
        fake.close()


def test_a_scan_that_never_ends_is_bounded_by_the_database_size(keys):
    # Every page says "more to come" and holds no key: before the fix, the
    # listing followed the cursor forever.
    def handle(command, args, conn):
        if command == "SCAN":
            conn.sendall(_encode(["1", []]))
        else:
            fake.serve(command, args, conn)

    fake = FakeRedis(keys, handle)
    try:
        start = time.monotonic()
        with pytest.raises(ValueError, match="SCAN did not finish within") as info:
            _open(fake.uri())
        assert time.monotonic() - start < 10
        assert fake.uri() in str(info.value)
        # DBSIZE is 5: the bound is a few hundred pages, not millions.
        assert fake.commands.count("SCAN") < 1000
    finally:
        fake.close()


def test_a_scan_that_invents_keys_is_bounded_by_the_file_header(keys):
    # New keys on every page, as a server growing the listing without end
    # would send: the file's header (2 tensors) allows 5 keys, and the
    # listing takes in 1024 strays beyond them (so that a few are named by
    # the overlap and shape checks), then stops.
    pages = iter(range(10**9))

    def handle(command, args, conn):
        if command == "SCAN":
            n = next(pages)
            conn.sendall(_encode(["1", [f"m:x{n}-{i}:0" for i in range(1000)]]))
        else:
            fake.serve(command, args, conn)

    fake = FakeRedis(keys, handle)
    try:
        with pytest.raises(ValueError, match=r"more than 1029 keys match 'm:\*'.* allows 5"):
            _open(fake.uri())
        assert fake.commands.count("SCAN") == 2
    finally:
        fake.close()


def test_a_trickled_reply_fails_under_the_minimum_rate(keys):
    # One byte of each reply every 0.3 s: each read moves a byte long before
    # any per-read timeout, so only a minimum rate over a window catches it.
    def handle(command, args, conn):
        for i in range(len(reply := fake.answer(command, args))):
            conn.sendall(reply[i : i + 1])
            time.sleep(0.3)

    fake = FakeRedis(keys, handle)
    try:
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            _open(fake.uri(), low_speed_timeout_ms=1000, max_retries=1, retry_max_delay_ms=10)
        assert time.monotonic() - start < 6
        assert info.value.errno == errno.ETIMEDOUT
    finally:
        fake.close()


def test_a_server_that_never_answers_fails_within_the_stall_window(keys):
    def handle(command, args, conn):
        time.sleep(30)

    fake = FakeRedis(keys, handle)
    try:
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            _open(fake.uri(), low_speed_timeout_ms=1000, max_retries=1, retry_max_delay_ms=10)
        assert info.value.errno == errno.ETIMEDOUT
        assert time.monotonic() - start < 5
        assert fake.connections == 2
    finally:
        fake.close()


def test_the_deadline_bounds_the_whole_load(keys):
    # A generous stall window and many retries; the deadline still ends it.
    def handle(command, args, conn):
        time.sleep(30)

    fake = FakeRedis(keys, handle)
    try:
        start = time.monotonic()
        with pytest.raises(OSError, match="deadline") as info:
            _open(fake.uri(), low_speed_timeout_ms=60_000, max_retries=50, deadline_ms=1500)
        assert 1.4 < time.monotonic() - start < 4
        assert info.value.errno == errno.ETIMEDOUT
    finally:
        fake.close()


def test_retries_count_progress_not_bytes(keys):
    # The listing works; every GETRANGE of tensor data sends 16 bytes of its
    # reply and drops the connection. Before the fix, each 16 bytes counted
    # as progress and reset the retry count: the read ran ~75,000 attempts.
    def handle(command, args, conn):
        reply = fake.answer(command, args)
        data_of_a = command == "GETRANGE" and args[0].startswith(b"m:a:")
        if data_of_a and int(args[2]) - int(args[1]) > 4096:
            conn.sendall(reply[:16])
            conn.shutdown(socket.SHUT_RDWR)
            return
        conn.sendall(reply)

    fake = FakeRedis(keys, handle)
    try:
        with _open(fake.uri(), max_retries=2, retry_max_delay_ms=10) as d:
            before = fake.connections
            with pytest.raises(OSError, match="gave up after 3 attempts"):
                d["a"]
            assert fake.connections - before <= 3
    finally:
        fake.close()
