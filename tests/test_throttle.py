"""Throttling answers are retried apart from max_retries (503 SlowDown, 429),
and so, for up to 30 s, are server errors (500, 502, 504) such as a store
failing over.

docs/scaling.md: a fleet that meets a store's request rate gets 503s for as
long as it asks too fast. bench/cluster_faults.py showed the loads failing
("gave up after 7 attempts") where they should have slowed down. The
server here is a fake that answers the first N requests with 503 and then
serves a real file: no real server throttles on cue.
"""

import threading

import pytest
import torch

from tensorizer import TensorDeserializer, TensorSerializer, stream_io
from test_hostile_http import _reply, _Server


def _throttling_server(data: bytes, throttled: int, status: int = 503):
    lock = threading.Lock()
    left = [throttled]

    def handle(req):
        with lock:
            throttle = left[0] > 0
            left[0] -= throttle
        if throttle:
            _reply(req, status, body=b"<Error><Code>SlowDown</Code></Error>")
            return
        first, last = (int(x) for x in req.headers["Range"].split("=")[1].split("-"))
        last = min(last, len(data) - 1)
        _reply(req, 206, [("Content-Range", f"bytes {first}-{last}/{len(data)}")],
               data[first : last + 1])

    return _Server(handle)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "m.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict({"w": torch.arange(4096, dtype=torch.float32)})
    s.close()
    return path.read_bytes()


def _fast(**kw):
    return stream_io.HttpOptions(max_retries=2, retry_base_delay_ms=1, retry_max_delay_ms=5, **kw)


@pytest.mark.parametrize("status", [503, 429, 500, 502, 504])
def test_throttling_is_retried_beyond_max_retries(data, status):
    server = _throttling_server(data, throttled=20, status=status)
    try:
        url = f"http://127.0.0.1:{server.port}/m.tensors"
        with TensorDeserializer(stream_io.open_stream(url, http_options=_fast())) as d:
            assert torch.equal(d["w"], torch.arange(4096, dtype=torch.float32))
        assert len(server.requests) > 20
    finally:
        server.close()


def test_other_statuses_use_max_retries(data):
    # 408 is retried, but as any failure: max_retries bounds it.
    server = _throttling_server(data, throttled=20, status=408)
    try:
        url = f"http://127.0.0.1:{server.port}/m.tensors"
        with pytest.raises(OSError, match="408"):
            TensorDeserializer(stream_io.open_stream(url, http_options=_fast()))
        assert len(server.requests) == 3
    finally:
        server.close()


def test_throttling_counts_as_failure_when_its_window_is_off(data):
    server = _throttling_server(data, throttled=20)
    try:
        url = f"http://127.0.0.1:{server.port}/m.tensors"
        with pytest.raises(OSError, match="503"):
            TensorDeserializer(stream_io.open_stream(url, http_options=_fast(throttle_retry_ms=0)))
        assert len(server.requests) == 3
    finally:
        server.close()


@pytest.mark.parametrize("status", [503, 500])
def test_throttling_ends_with_its_window(data, status):
    server = _throttling_server(data, throttled=10**9, status=status)
    try:
        url = f"http://127.0.0.1:{server.port}/m.tensors"
        with pytest.raises(OSError, match=str(status)):
            TensorDeserializer(
                stream_io.open_stream(url, http_options=_fast(throttle_retry_ms=300))
            )
    finally:
        server.close()
