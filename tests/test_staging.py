"""Staged loads: the engine's bounded ring of buffers between source and device.

Without a GPU the ring runs through the host stand-in (TENSORIZER_STAGING=host,
python/tensorizer/_staging.py): the same ring and copy stage, with copies
landing in separately allocated CPU tensors. Loads must be bit-exact from
every source (file, HTTP from a real nginx, S3 from SeaweedFS, Redis,
encrypted files, safetensors) with a ring small enough that every load
reuses its buffers and splits its tensors; host memory must stay at the ring
plus a bounded overhead for a 2 GiB file (measured in a fresh process); a
slow copy stage must hold the readers back instead of growing the ring; and
an error mid-load (a hash mismatch, a cut connection) must leave no thread
running and no memory held.

Tests marked ``gpu`` run the CUDA path itself; without a CUDA device they are
deselected (tests/conftest.py), so they never count as skips. On a GPU
machine, bench/gpu_check.sh runs them.
"""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from fault_proxy import FaultProxy
from nginx_server import run_nginx
from remote_common import assert_same, payload

from tensorizer import (
    DecryptionParams,
    EncryptionParams,
    TensorDeserializer,
    TensorSerializer,
    stream_io,
)
from tensorizer.serialization import TensorType
from tensorizer.utils import no_init_or_tensor

_MiB = 1 << 20
# A ring of 3 buffers of 1 MiB: the payload's 12 MiB tensor spans a dozen
# buffers, so every load reuses each buffer several times.
_SMALL_RING = {"TENSORIZER_STAGING_BUFFERS": "3", "TENSORIZER_STAGING_BUFFER_BYTES": str(_MiB)}


def _payload() -> dict:
    return payload(2468, (3, 1024, 1024))


@pytest.fixture
def host_staging(monkeypatch):
    """Loads to the CPU go through the ring, on the host stand-in."""
    monkeypatch.setenv("TENSORIZER_STAGING", "host")
    for k, v in _SMALL_RING.items():
        monkeypatch.setenv(k, v)
    return monkeypatch


def _write(path, tensors: dict, encryption=None) -> str:
    s = TensorSerializer(str(path), encryption=encryption)
    s.write_state_dict(tensors)
    s.close()
    return str(path)


@pytest.fixture(scope="module")
def local_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("staging") / "payload.tensors", _payload())


def _staged(d: TensorDeserializer) -> tuple:
    stats = d._staging_stats
    assert stats is not None, "the load did not go through the staging ring"
    return stats


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("num_readers", [1, 4])
@pytest.mark.parametrize("verify_hash", [False, True, "all"])
def test_file_loads_bit_exact(host_staging, local_file, lazy, num_readers, verify_hash):
    with TensorDeserializer(
        local_file, device="cpu", lazy_load=lazy, num_readers=num_readers, verify_hash=verify_hash
    ) as d:
        assert_same(d, _payload())
        count, size, peak, copied = _staged(d)
        assert (count, size) == (3, _MiB) and 1 <= peak <= 3


def test_eager_load_copies_every_byte_through_the_ring(host_staging, local_file):
    d = TensorDeserializer(local_file, device="cpu", num_readers=2)
    count, size, peak, copied = _staged(d)
    assert copied == sum(t.numel() * t.element_size() for t in _payload().values())
    assert peak == 3  # 12 MiB through 3 buffers: the ring filled


def test_staging_off_takes_the_arena_path(monkeypatch, local_file):
    monkeypatch.setenv("TENSORIZER_STAGING", "off")
    d = TensorDeserializer(local_file, device="cpu")
    assert d._staging_stats is None
    assert_same(d, _payload())


def test_bad_staging_setting_is_a_clear_error(monkeypatch, local_file):
    monkeypatch.setenv("TENSORIZER_STAGING", "fast")
    with pytest.raises(ValueError, match="TENSORIZER_STAGING='fast'"):
        TensorDeserializer(local_file, device="cpu")


def test_http_loads_bit_exact(host_staging, tmp_path):
    with run_nginx(tmp_path) as port:
        _write(tmp_path / "www" / "p.tensors", _payload())
        url = f"http://127.0.0.1:{port}/p.tensors"
        for lazy in (False, True):
            with TensorDeserializer(url, device="cpu", lazy_load=lazy, verify_hash=True) as d:
                assert_same(d, _payload())
                _staged(d)


def test_s3_loads_bit_exact(host_staging, s3_server, local_file, monkeypatch):
    key = f"staging-{os.getpid()}-{time.monotonic_ns()}.tensors"
    s3_server.client().upload_file(local_file, s3_server.bucket, key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    with TensorDeserializer(f"s3://{s3_server.bucket}/{key}", device="cpu", num_readers=4) as d:
        assert_same(d, _payload())
        _staged(d)


def test_redis_loads_bit_exact(host_staging, local_file, tmp_path):
    import redis
    from test_redis import _run_redis

    with _run_redis(tmp_path) as port:
        client = redis.Redis(host="127.0.0.1", port=port)
        host_staging.setenv("TENSORIZER_STAGING", "off")
        TensorDeserializer(local_file, lazy_load=True, device="cpu").to_redis(client, "p")
        host_staging.setenv("TENSORIZER_STAGING", "host")
        for lazy in (False, True):
            uri = f"redis://127.0.0.1:{port}/p"
            with TensorDeserializer(uri, device="cpu", lazy_load=lazy) as d:
                assert_same(d, _payload())
                _staged(d)
        client.close()


@pytest.mark.parametrize("num_readers", [1, 3])
def test_encrypted_loads_bit_exact(host_staging, tmp_path, num_readers):
    # 4 MiB buffers hold 2 MiB reads, so the 2 MiB chunks of the 12 MiB
    # tensor (whose data starts after its header, off the read boundaries)
    # straddle reads and are carried from one buffer to the next.
    host_staging.setenv("TENSORIZER_STAGING_BUFFER_BYTES", str(4 * _MiB))
    params = EncryptionParams.random()
    path = _write(tmp_path / "enc.tensors", _payload(), encryption=params)
    with TensorDeserializer(
        path,
        device="cpu",
        num_readers=num_readers,
        encryption=DecryptionParams.from_key(params.key),
    ) as d:
        assert_same(d, _payload())
        _staged(d)


def test_encrypted_chunks_larger_than_a_buffer_are_refused(host_staging, tmp_path):
    params = EncryptionParams.random()
    path = _write(tmp_path / "enc.tensors", _payload(), encryption=params)
    with pytest.raises(ValueError, match=r"do not fit a staging buffer of 1048576 bytes"):
        TensorDeserializer(path, device="cpu", encryption=DecryptionParams.from_key(params.key))


def test_wrong_key_fails_and_leaves_nothing_behind(host_staging, tmp_path):
    host_staging.setenv("TENSORIZER_STAGING_BUFFER_BYTES", str(4 * _MiB))
    path = _write(tmp_path / "enc.tensors", _payload(), encryption=EncryptionParams.random())
    threads = _thread_count()
    from tensorizer import CryptographyError

    with pytest.raises(CryptographyError):
        TensorDeserializer(
            path, device="cpu", encryption=DecryptionParams.from_key(os.urandom(32))
        )
    assert _thread_count() == threads


def test_safetensors_loads_bit_exact(host_staging, tmp_path):
    import safetensors.torch

    tensors = {k: v for k, v in _payload().items() if v.numel()}
    path = tmp_path / "p.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    with TensorDeserializer(str(path), device="cpu") as d:
        assert_same(d, tensors)
        _staged(d)


def test_dtype_filter_and_module(host_staging, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(300, 700), torch.nn.Linear(700, 5))
    model[1].register_buffer("steps", torch.arange(10))
    s = TensorSerializer(str(tmp_path / "m.tensors"))
    s.write_module(model)
    s.close()
    want = model.state_dict()
    d = TensorDeserializer(
        str(tmp_path / "m.tensors"), device="cpu", dtype=torch.float16, cast_only_floating=True
    )
    assert d["0.weight"].dtype == torch.float16 and d["1.steps"].dtype == torch.int64
    assert torch.equal(d["0.weight"], want["0.weight"].half())
    assert torch.equal(d["1.steps"], want["1.steps"])
    only = TensorDeserializer(
        str(tmp_path / "m.tensors"), device="cpu", filter_func=lambda n: n.startswith("1.")
    )
    assert sorted(only.keys()) == ["1.bias", "1.steps", "1.weight"]
    with no_init_or_tensor():
        fresh = torch.nn.Sequential(torch.nn.Linear(300, 700), torch.nn.Linear(700, 5))
    fresh[1].register_buffer("steps", torch.empty(10, dtype=torch.int64))
    loader = TensorDeserializer(str(tmp_path / "m.tensors"), device="cpu", lazy_load=True)
    loader.load_into_module(fresh)
    _staged(loader)
    for name, t in fresh.state_dict().items():
        assert torch.equal(t, want[name]), name


def test_plaid_mode_buffers_sets_buffers_per_reader(host_staging, local_file):
    host_staging.delenv("TENSORIZER_STAGING_BUFFERS")
    d = TensorDeserializer(
        local_file, device="cpu", plaid_mode=True, plaid_mode_buffers=3, num_readers=2
    )
    assert _staged(d)[0] == 3 * 2 + 2
    assert_same(d, _payload())


def test_slow_copy_stage_holds_the_readers_back(host_staging, local_file):
    # Each copy stream moves 8 MiB/s: the readers outrun it by far, so the
    # ring fills and stays full; it never grows past its 3 buffers, and the
    # load takes as long as the copies need.
    host_staging.setenv("TENSORIZER_STAGING_HOST_BYTES_PER_S", str(8 * _MiB))
    start = time.monotonic()
    d = TensorDeserializer(local_file, device="cpu", num_readers=4)
    elapsed = time.monotonic() - start
    count, _, peak, copied = _staged(d)
    assert count == 3 and peak == 3
    assert elapsed >= copied / (2 * 8 * _MiB) * 0.9
    assert_same(d, _payload())


def _thread_count() -> int:
    """The engine's threads: the process's, less Python's own (the fault
    proxy runs in this process, one Python thread per connection)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def _settled_thread_count(expected: int) -> int:
    """_thread_count() once it reaches expected, or after 2 s: a proxy
    thread that has just left Python may still be an OS thread for a moment."""
    deadline = time.monotonic() + 2.0
    while (n := _thread_count()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def _rss_bytes() -> int:
    """RSS after malloc_trim: the destinations in the stand-in are torch CPU
    tensors from malloc, which keeps freed memory for reuse otherwise."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _corrupt_middle(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))


def test_hash_mismatch_mid_load_stops_everything(host_staging, tmp_path):
    # 64 MiB through a 16 MiB ring, throttled so the mismatch (in the middle
    # of the file) arrives while copies are queued and readers are waiting.
    host_staging.setenv("TENSORIZER_STAGING_BUFFERS", "4")
    host_staging.setenv("TENSORIZER_STAGING_BUFFER_BYTES", str(4 * _MiB))
    host_staging.setenv("TENSORIZER_STAGING_HOST_BYTES_PER_S", str(64 * _MiB))
    tensors = {f"t{i}": torch.full((2 * _MiB,), i, dtype=torch.float32) for i in range(8)}
    path = _write(tmp_path / "bad.tensors", tensors)
    del tensors
    _corrupt_middle(path)
    from tensorizer import HashMismatchError

    def load():
        with pytest.raises(HashMismatchError, match="failed CRC32 verification"):
            TensorDeserializer(path, device="cpu", num_readers=4, verify_hash=True)
        gc.collect()

    _assert_nothing_held(load)


def _assert_nothing_held(failing_load) -> None:
    """failing_load() leaves no thread behind, and neither the ring (16 MiB)
    nor the destinations (64 MiB): each failure leaves less than one buffer
    (4 MiB) more resident (malloc's bookkeeping and fragments), not the
    80 MiB it had."""
    gc.collect()
    threads, rss = _thread_count(), _rss_bytes()
    for _ in range(4):
        failing_load()
        assert _settled_thread_count(threads) == threads
    assert _rss_bytes() - rss < 16 * _MiB


def test_cut_connection_mid_load_stops_everything(host_staging, tmp_path):
    host_staging.setenv("TENSORIZER_STAGING_BUFFERS", "4")
    host_staging.setenv("TENSORIZER_STAGING_BUFFER_BYTES", str(4 * _MiB))
    tensors = {f"t{i}": torch.full((2 * _MiB,), i, dtype=torch.float32) for i in range(8)}
    with run_nginx(tmp_path) as port:
        _write(tmp_path / "www" / "big.tensors", tensors)
        del tensors
        with FaultProxy("127.0.0.1", port) as proxy:
            proxy.cut_after_bytes = 3 * _MiB

            def load():
                stream = stream_io.open_stream(
                    f"http://127.0.0.1:{proxy.port}/big.tensors",
                    "rb",
                    http_options=stream_io.HttpOptions(max_retries=0),
                )
                with pytest.raises(OSError, match=f"127.0.0.1:{proxy.port}/big.tensors"):
                    TensorDeserializer(stream, device="cpu", num_readers=4)
                stream.close()
                gc.collect()

            _assert_nothing_held(load)
            assert proxy.cuts >= 4


_RSS_CHILD = textwrap.dedent(
    """\
    import json, os, sys
    import torch
    from tensorizer import TensorDeserializer

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    path, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restart the peak (VmHWM) from here
    before = status("VmRSS")
    d = TensorDeserializer(path, device="cpu", num_readers=2)
    peak = status("VmHWM")
    ok = all(
        torch.equal(d[f"t{i}"], torch.arange(count, dtype=torch.int32) + i) for i in range(size)
    )
    dest = sum(t.numel() * t.element_size() for t in d.values())
    ring = d._staging_stats[0] * d._staging_stats[1]
    print(json.dumps(dict(before=before, peak=peak, dest=dest, ring=ring, ok=ok)))
    """
)


def test_host_memory_of_a_2_gib_load_is_the_ring(tmp_path):
    # 2 GiB in 16 tensors of 128 MiB. In the stand-in the destinations are
    # host memory too (2 GiB of it, torch's allocation, as on a GPU):
    # the peak RSS of a fresh process, less its RSS before the load and less
    # the destinations, is what the load itself held, and must stay within
    # the ring plus 300 MiB. (An arena load holds the whole file: 2 GiB
    # more.)
    count, n = 32 * _MiB, 16
    s = TensorSerializer(str(tmp_path / "big.tensors"))
    for i in range(n):
        s.write_tensor(i, f"t{i}", TensorType.STATE_DICT, torch.arange(count, dtype=torch.int32) + i)
    s.close()
    assert os.path.getsize(tmp_path / "big.tensors") >= 2 << 30
    env = dict(os.environ, TENSORIZER_STAGING="host")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(tmp_path / "big.tensors"), str(count), str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    import json

    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ok"]
    assert r["dest"] == 2 << 30
    held = r["peak"] - r["before"] - r["dest"]
    assert held <= r["ring"] + 300 * _MiB, r


# --- on a GPU (bench/gpu_check.sh) --------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("verify_hash", [False, True])
def test_gpu_loads_bit_exact(local_file, lazy, verify_hash):
    before = torch.cuda.memory_allocated()
    d = TensorDeserializer(local_file, device="cuda", lazy_load=lazy, verify_hash=verify_hash)
    got = {k: d[k] for k in d}
    assert all(t.device.type == "cuda" for t in got.values())
    _staged(d)
    assert torch.cuda.memory_allocated() - before >= sum(t.nbytes for t in got.values())
    assert_same({k: v.cpu() for k, v in got.items()}, _payload())
    del d, got
    gc.collect()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.gpu
def test_gpu_device_forms_and_dtype_on_device(local_file):
    want = _payload()
    for device in ("cuda", "cuda:0", 0, torch.device("cuda", 0)):
        d = TensorDeserializer(local_file, device=device, dtype=torch.float16)
        assert d["big"].device == torch.device("cuda", 0)
        assert d["big"].dtype == torch.float16
        assert torch.equal(d["big"].cpu(), want["big"].half())
        assert d["layer.0.bias"].dtype == torch.float16
    d = TensorDeserializer(local_file, device="cuda", dtype=torch.float16, cast_only_floating=True)
    assert d["layer.0.bias"].dtype == torch.int64


@pytest.mark.gpu
def test_gpu_encrypted_filter_and_module(tmp_path):
    params = EncryptionParams.random()
    model = torch.nn.Sequential(torch.nn.Linear(1000, 3000), torch.nn.Linear(3000, 7))
    s = TensorSerializer(str(tmp_path / "m.tensors"), encryption=params)
    s.write_module(model)
    s.close()
    with no_init_or_tensor():
        fresh = torch.nn.Sequential(torch.nn.Linear(1000, 3000), torch.nn.Linear(3000, 7))
    d = TensorDeserializer(
        str(tmp_path / "m.tensors"),
        device="cuda",
        encryption=DecryptionParams.from_key(params.key),
        filter_func=lambda n: n.startswith("0."),
    )
    assert sorted(d.keys()) == ["0.bias", "0.weight"]
    d.load_into_module(fresh)
    assert fresh[0].weight.device.type == "cuda"
    assert torch.equal(fresh[0].weight.cpu(), model[0].weight)


@pytest.mark.gpu
def test_gpu_load_model_takes_the_staged_path(tmp_path):
    from tensorizer import _model_io  # noqa: F401  (load_model lives there)

    model = torch.nn.Linear(512, 512)
    s = TensorSerializer(str(tmp_path / "m.tensors"))
    s.write_module(model)
    s.close()
    d = TensorDeserializer(str(tmp_path / "m.tensors"))  # device=None: the GPU
    assert d["weight"].device.type == "cuda"
    _staged(d)
