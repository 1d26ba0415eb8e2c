"""The load deadline (HttpOptions.deadline_ms, --deadline-ms; issue 12 #10).

A server that accepts connections and never answers is what the deadline is
for, and no real server does that on purpose, so it is a raw listening
socket here (a fake, by necessity). The stall rule is set far above the
deadline, and the retries high, so only the deadline can end these loads.
"""

import errno
import socket
import subprocess
import threading
import time

import pytest

from tensorizer import TensorDeserializer, stream_io


@pytest.fixture
def silent_server():
    """Accepts every connection, reads the request, never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_the_deadline_ends_an_http_load_that_never_gets_an_answer(silent_server):
    port, held = silent_server
    options = stream_io.HttpOptions(low_speed_timeout_ms=60_000, max_retries=50, deadline_ms=1500)
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        TensorDeserializer(
            stream_io.open_stream(f"http://127.0.0.1:{port}/m.tensors", http_options=options)
        )
    took = time.monotonic() - start
    assert 1.4 < took < 4, took
    assert info.value.errno == errno.ETIMEDOUT
    assert "deadline" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert len(held) == 1, "the deadline was retried"


def test_cli_deadline(cli, silent_server):
    port, _ = silent_server
    start = time.monotonic()
    out = subprocess.run(
        [cli, "inspect", "--deadline-ms", "1500", "--retries", "50",
         f"http://127.0.0.1:{port}/m.tensors"],
        capture_output=True, text=True, timeout=60,
    )
    assert time.monotonic() - start < 5
    assert out.returncode != 0
    assert "deadline" in out.stderr
