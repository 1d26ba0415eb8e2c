"""Loading .tensors files over HTTP through the engine's HttpSource.

A real nginx (Debian's nginx-light) serves a temporary directory on a free
loopback port; files written by our serializer and by the reference
tensorizer 2.12.1 must load from it bit-exact in every load mode. Also: a
missing object fails at once with an OSError naming the URL, an object
replaced during a lazy load is an error rather than a mix of two versions,
and a server that ignores Range (Python's http.server) still works.

Faults go through tests/fault_proxy.py, a test tool in front of the same
nginx: connections cut every few MiB, bursts of 503, stalls longer than the
low-speed timeout and refused connections must all end in a bit-exact load,
or, for a server that never answers, in an OSError after a bounded number of
attempts.
"""

from __future__ import annotations

import errno
import functools
import http.server
import os
import re
import textwrap
import threading
import time

import pytest
import torch
from fault_proxy import FaultProxy
from nginx_server import run_nginx
from remote_common import assert_same, free_port, payload, payload_source, run_reference

from tensorizer import TensorDeserializer, TensorSerializer, stream_io


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """(base URL, served directory) of an nginx on loopback."""
    root = tmp_path_factory.mktemp("nginx")
    with run_nginx(root) as port:
        yield f"http://127.0.0.1:{port}", root / "www"


# The reference builds the same tensors from payload_source(*_PAYLOAD).
_PAYLOAD = (1234, (3, 1024, 1024))


def _payload() -> dict:
    return payload(*_PAYLOAD)


@pytest.fixture(scope="module")
def ours_url(nginx):
    base, served = nginx
    s = TensorSerializer(str(served / "ours.tensors"))
    s.write_state_dict(_payload())
    s.close()
    return f"{base}/ours.tensors"


_REF_WRITE = textwrap.dedent(
    """\
    import sys
    import torch
    import tensorizer
    from tensorizer import TensorSerializer
    exec(sys.argv[1])
    s = TensorSerializer(sys.argv[2])
    s.write_state_dict(_payload())
    s.close()
    print(tensorizer.__version__)
    """
)


@pytest.fixture(scope="module")
def ref_url(nginx, ref_python):
    base, served = nginx
    out = served / "ref.tensors"
    stdout = run_reference(
        ref_python, _REF_WRITE, payload_source(*_PAYLOAD), str(out), timeout_s=120
    )
    assert stdout.strip() == "2.12.1"
    return f"{base}/ref.tensors"


@pytest.mark.parametrize("writer", ["ours", "ref"])
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("num_readers", [1, 4])
@pytest.mark.parametrize("verify_hash", [False, True])
def test_loads_over_http_bit_exact(request, writer, lazy, num_readers, verify_hash):
    url = request.getfixturevalue(f"{writer}_url")
    with TensorDeserializer(
        url, device="cpu", lazy_load=lazy, num_readers=num_readers, verify_hash=verify_hash
    ) as d:
        assert_same(d, _payload())


@pytest.mark.parametrize("writer", ["ours", "ref"])
@pytest.mark.parametrize("lazy", [False, True])
def test_filter_func_over_http(request, writer, lazy):
    url = request.getfixturevalue(f"{writer}_url")
    wanted = {"layer.0.weight", "layer.0.bias", "scalar"}
    with TensorDeserializer(
        url, device="cpu", lazy_load=lazy, num_readers=4, filter_func=wanted.__contains__
    ) as d:
        assert_same(d, _payload(), wanted)


def test_http_load_matches_local_load(nginx, ours_url):
    _, served = nginx
    local = TensorDeserializer(str(served / "ours.tensors"), device="cpu")
    remote = TensorDeserializer(ours_url, device="cpu", num_readers=4)
    assert_same(remote, dict(local.items()))


def test_remote_loads_default_to_at_least_four_connections(nginx, ours_url):
    # Without num_readers, a local load read through the page cache uses
    # one reader per core; a remote one at least 4, since its readers mostly
    # wait on the network (as do O_DIRECT reads of a local file: see
    # test_direct_io.py).
    _, served = nginx
    cores = len(os.sched_getaffinity(0))
    local = TensorDeserializer(
        str(served / "ours.tensors"), device="cpu", lazy_load=True, direct_io=False
    )
    remote = TensorDeserializer(ours_url, device="cpu", lazy_load=True)
    assert local._num_threads == min(cores, len(local))
    assert remote._num_threads == min(max(cores, 4), len(remote))
    assert len(remote) >= 4


def test_missing_object_is_a_clear_oserror(nginx):
    # A 404 is what a missing local file is: an OSError (FileNotFoundError's
    # errno), as the reference's users catch for a bad path. It must not be
    # retried.
    base, _ = nginx
    url = f"{base}/no/such.tensors"
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        TensorDeserializer(url, device="cpu")
    assert time.monotonic() - start < 2.0
    assert info.value.errno == errno.ENOENT
    message = str(info.value)
    assert url in message and "404" in message


def test_connection_refused_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/x.tensors"
    with pytest.raises(OSError, match=re.escape(url)):
        TensorDeserializer(url, device="cpu")


def test_object_replaced_mid_load_is_an_error(nginx):
    base, served = nginx
    path = served / "changing.tensors"
    first = {"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(2000)}
    second = {"a": -torch.arange(1000, dtype=torch.float32), "b": torch.zeros(2000)}
    for name, tensors in (("changing.tensors", first), ("second.tensors", second)):
        s = TensorSerializer(str(served / name))
        s.write_state_dict(tensors)
        s.close()
    assert path.stat().st_size == (served / "second.tensors").stat().st_size
    d = TensorDeserializer(f"{base}/changing.tensors", device="cpu", lazy_load=True)
    # Same size, new mtime: nginx gives the new file a new ETag.
    os.replace(served / "second.tensors", path)
    future = time.time() + 100
    os.utime(path, (future, future))
    with pytest.raises(OSError, match="changed during the load") as info:
        d["a"]
    assert info.value.errno == errno.ESTALE
    assert f"{base}/changing.tensors" in str(info.value)


class _NoRangeHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server, which ignores Range and sends no Accept-Ranges."""

    def log_message(self, *args):
        pass


@pytest.fixture
def no_range_server(tmp_path):
    handler = functools.partial(_NoRangeHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("lazy", [False, True])
def test_server_without_range_support(no_range_server, lazy):
    base, served = no_range_server
    s = TensorSerializer(str(served / "x.tensors"))
    s.write_state_dict(_payload())
    s.close()
    with TensorDeserializer(
        f"{base}/x.tensors", device="cpu", lazy_load=lazy, num_readers=4, verify_hash=True
    ) as d:
        assert_same(d, _payload())


# --- Faults, through the test's fault-injecting proxy ------------------------
#
# tests/fault_proxy.py sits between the loader and nginx and injects what no
# real server does on demand: cut connections, stalls, 503s, resets.

_MiB = 1 << 20


def _big_payload() -> dict:
    """About 58 MiB in 103 tensors of several dtypes and sizes."""
    g = torch.Generator().manual_seed(99)
    out = {}
    for i in range(80):
        out[f"blocks.{i}.weight"] = torch.randn(256, 512, generator=g)  # 512 KiB
    for i in range(10):
        out[f"blocks.{i}.half"] = torch.randn(512, 512, generator=g).to(torch.float16)
        out[f"blocks.{i}.bf16"] = torch.randn(100, 7, generator=g).to(torch.bfloat16)
    out["embed"] = torch.randn(1024, 1024, generator=g)  # 4 MiB
    out["lm_head"] = torch.randn(2048, 1024, generator=g)  # 8 MiB
    out["ids"] = torch.arange(100_000, dtype=torch.int64)
    return out


@pytest.fixture(scope="module")
def big(nginx):
    """(URL path, expected tensors, file size) of a ~58 MiB file by our serializer."""
    _, served = nginx
    tensors = _big_payload()
    s = TensorSerializer(str(served / "big.tensors"))
    s.write_state_dict(tensors)
    s.close()
    size = (served / "big.tensors").stat().st_size
    assert size > 40 * _MiB
    return "/big.tensors", tensors, size


def _proxy_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("fault-proxy")]


@pytest.fixture
def proxy(nginx):
    """A FaultProxy in front of the nginx fixture, with no fault set."""
    base, _ = nginx
    port = int(base.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port) as p:
        yield p
    # Leaving the context joined every thread it started.
    assert _proxy_threads() == []


def _via(proxy: FaultProxy, path: str) -> str:
    return f"http://127.0.0.1:{proxy.port}{path}"


def _fast_retries(**overrides) -> stream_io.HttpOptions:
    """Retries within milliseconds rather than seconds, so tests stay quick."""
    options = dict(max_retries=6, retry_base_delay_ms=10, retry_max_delay_ms=200)
    options.update(overrides)
    return stream_io.HttpOptions(**options)


def test_proxy_without_faults_is_transparent(proxy, big):
    path, tensors, size = big
    with TensorDeserializer(_via(proxy, path), device="cpu", num_readers=4) as d:
        assert_same(d, tensors)
    assert proxy.cuts == proxy.stalls == proxy.responses_503 == proxy.resets == 0
    # Every byte of the file went through once, plus response headers.
    assert size <= proxy.bytes_downstream < size + _MiB
    assert 1 <= proxy.connections <= 8


@pytest.mark.parametrize("lazy", [False, True])
def test_every_connection_cut_after_4_mib(proxy, big, lazy):
    path, tensors, size = big
    proxy.cut_after_bytes = 4 * _MiB
    with TensorDeserializer(_via(proxy, path), device="cpu", lazy_load=lazy, num_readers=4) as d:
        assert_same(d, tensors)
    # No connection carried more than 4 MiB, so the load took many.
    assert proxy.connections >= size // (4 * _MiB)
    assert proxy.cuts >= size // (4 * _MiB) - 1
    # Each retry resumed where its cut stopped: the bytes sent are the file
    # once plus little, and some request asks for the tail of an earlier one.
    assert proxy.bytes_downstream < 1.1 * size
    ranges = {r for r in proxy.ranges if r is not None}
    assert any(a < a2 and b == b2 for a, b in ranges for a2, b2 in ranges), sorted(ranges)


def test_every_connection_cut_after_4_mib_verified(proxy, big):
    # verify_hash reads in smaller chunks: cuts land between and inside them.
    path, tensors, size = big
    proxy.cut_after_bytes = 4 * _MiB
    with TensorDeserializer(_via(proxy, path), device="cpu", num_readers=4, verify_hash=True) as d:
        assert_same(d, tensors)
    assert proxy.connections >= size // (4 * _MiB)


def test_burst_of_503s_when_opening_is_retried(proxy, big):
    path, tensors, _ = big
    proxy.fail_503 = 4
    proxy.retry_after = 0
    start = time.monotonic()
    with TensorDeserializer(_via(proxy, path), device="cpu", num_readers=4) as d:
        assert_same(d, tensors)
    assert proxy.responses_503 == 4 and proxy.fail_503 == 0
    # Retry-After: 0 and the default backoff (at most 0.1+0.2+0.4+0.8 s).
    assert time.monotonic() - start < 10


def test_burst_of_503s_on_kept_alive_connections_is_retried(proxy, big):
    path, tensors, _ = big
    with TensorDeserializer(_via(proxy, path), device="cpu", lazy_load=True, num_readers=4) as d:
        # The 503s answer the ranged reads of the tensor data, on connections
        # the loader keeps alive.
        proxy.fail_503 = 5
        assert_same(d, tensors)
    assert proxy.responses_503 == 5 and proxy.fail_503 == 0


def test_stall_longer_than_low_speed_timeout_is_retried(proxy, big):
    path, tensors, _ = big
    stall_s = 30.0
    proxy.stall_after_bytes = 2 * _MiB
    proxy.stall_seconds = stall_s
    proxy.stall_connections = 1
    stream = stream_io.open_stream(
        _via(proxy, path), "rb", http_options=_fast_retries(low_speed_timeout_ms=1000)
    )
    start = time.monotonic()
    with TensorDeserializer(stream, device="cpu", num_readers=4) as d:
        assert_same(d, tensors)
    elapsed = time.monotonic() - start
    assert proxy.stalls == 1
    # The stalled transfer was dropped after about a second (libcurl checks
    # speed once a second) and resumed on a new connection; it was not
    # waited out.
    assert elapsed < stall_s / 2, elapsed


def test_stall_shorter_than_low_speed_timeout_is_waited_out(proxy, big):
    path, tensors, size = big
    proxy.stall_after_bytes = 2 * _MiB
    proxy.stall_seconds = 1.0
    proxy.stall_connections = 1
    stream = stream_io.open_stream(
        _via(proxy, path), "rb", http_options=_fast_retries(low_speed_timeout_ms=5000)
    )
    with TensorDeserializer(stream, device="cpu", num_readers=4) as d:
        assert_same(d, tensors)
    assert proxy.stalls == 1
    # Nothing was retried: no byte crossed twice.
    assert proxy.bytes_downstream < size + _MiB


@pytest.fixture(params=["proxy resets", "upstream refuses"])
def refusing_url(request, proxy):
    """A URL whose every connection is reset: by the proxy itself, or because
    the upstream behind it refuses connections."""
    if request.param == "proxy resets":
        proxy.refuse = True
        yield _via(proxy, "/big.tensors"), proxy
    else:
        with FaultProxy("127.0.0.1", free_port()) as dead:
            yield _via(dead, "/big.tensors"), dead


def test_refusing_upstream_fails_after_bounded_retries(refusing_url):
    url, p = refusing_url
    start = time.monotonic()
    with pytest.raises(OSError, match=re.escape(url)):
        TensorDeserializer(url, device="cpu")
    # The default policy: 6 retries after the first attempt, with backoff of
    # at most 0.1·(1+2+4+8+16+32) = 6.3 s in all.
    assert time.monotonic() - start < 10
    assert p.connections == 7 and p.resets == 7
    assert p.bytes_upstream == 0


def test_refusing_upstream_honours_max_retries(refusing_url):
    url, p = refusing_url
    start = time.monotonic()
    with pytest.raises(OSError, match=re.escape(url)):
        stream = stream_io.open_stream(
            url, "rb", http_options=_fast_retries(max_retries=2, connect_timeout_ms=2000)
        )
        TensorDeserializer(stream, device="cpu")
    assert time.monotonic() - start < 2
    assert p.connections == 3
