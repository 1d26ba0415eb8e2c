"""Direct-I/O local reads (TensorDeserializer(direct_io=...)).

Direct and buffered loads must give the same bytes on files whose sizes and
tensor offsets are odd (eager, lazy, filtered, verified, encrypted,
safetensors, file objects); tmpfs falls back to buffered reads without an
error; a forced direct load leaves the page cache as it found it, checked
with mincore(2) on a mapping of the file; auto mode reads a cold file
direct and a warm one buffered. Files live under /var/tmp, which is on disk
here (/tmp or /dev/shm may be tmpfs, which has no direct I/O).
"""

import ctypes
import io
import mmap
import os
import random
import shutil
import subprocess
import sys
import tempfile

import pytest
import safetensors.torch
import torch

import tensorizer as tz
from tensorizer import TensorDeserializer, TensorSerializer

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_pages(path) -> int:
    """Pages of the file in the page cache (mincore on an untouched mapping)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(v & 1 for v in vec)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def page_count(path) -> int:
    return (os.path.getsize(path) + mmap.PAGESIZE - 1) // mmap.PAGESIZE


def evict(path):
    """Drops the (clean) file from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert resident_pages(path) == 0, "could not drop the file from the page cache"


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    assert resident_pages(path) == page_count(path)


@pytest.fixture
def disk_dir():
    d = tempfile.mkdtemp(prefix="tensorizer_direct_", dir="/var/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def odd_tensors():
    """Tensors of odd sizes and dtypes, named so their offsets are odd."""
    g = torch.Generator().manual_seed(5)
    out = {}
    for i, (dtype, n) in enumerate(
        [
            (torch.float32, 70001),
            (torch.float16, 100003),
            (torch.int8, 200003),
            (torch.bfloat16, 1),
            (torch.float32, 300007),
            (torch.bool, 99),
            (torch.complex64, 20011),
            (torch.float32, (3 << 20) // 4 + 5),
            (torch.int64, 7),
            (torch.uint8, 0),
        ]
    ):
        raw = torch.randint(0, 256, (n * torch.empty((), dtype=dtype).element_size(),), generator=g)
        t = raw.to(torch.uint8).view(dtype) if dtype != torch.bool else raw.to(torch.uint8) % 2 == 1
        out["x" * (i % 5 + 1) + f".t{i}"] = t
    return out


def raw_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def write_tensors(path, tensors, encryption=None):
    s = TensorSerializer(str(path), encryption=encryption)
    s.write_state_dict(tensors)
    s.close()
    assert os.path.getsize(path) % 4096 != 0
    return path


@pytest.fixture
def model(disk_dir):
    tensors = odd_tensors()
    return write_tensors(os.path.join(disk_dir, "m.tensors"), tensors), tensors


def load_all(path, lazy=False, **kwargs):
    d = TensorDeserializer(str(path), device="cpu", lazy_load=lazy, **kwargs)
    keys = list(d.keys())
    if lazy:
        random.Random(3).shuffle(keys)
    out = {k: raw_bytes(d[k]) for k in keys}
    stats = d.read_stats
    d.close()
    return out, stats


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"lazy": True},
        {"filter_func": lambda name: name.endswith(("t0", "t2", "t4", "t7"))},
        {"verify_hash": True},
        {"lazy": True, "verify_hash": True},
    ],
    ids=["eager", "lazy", "filtered", "verified", "lazy-verified"],
)
def test_direct_and_buffered_loads_are_bit_exact(model, kwargs):
    path, tensors = model
    evict(path)
    direct, dstats = load_all(path, direct_io=True, **kwargs)
    buffered, bstats = load_all(path, direct_io=False, **kwargs)
    assert direct == buffered
    assert direct == {k: raw_bytes(v) for k, v in tensors.items() if k in direct}
    if "filter_func" in kwargs:
        assert sorted(direct) == ["x.t0", "xxx.t2", "xxx.t7", "xxxxx.t4"]
    assert dstats["mode"] == "direct", dstats
    assert dstats["buffered_bytes"] == 0
    assert dstats["direct_block_bytes"] >= 512
    if not kwargs.get("lazy"):
        # Large tensors whose file offset suits their dtype land in place.
        assert dstats["in_place_bytes"] > 0
    assert bstats["mode"] == "buffered"
    assert bstats["direct_bytes"] == 0
    assert bstats["buffered_reason"] == "direct I/O off"


def test_encrypted_direct_load_is_bit_exact(disk_dir):
    tensors = odd_tensors()
    enc = tz.EncryptionParams.random()
    path = write_tensors(os.path.join(disk_dir, "enc.tensors"), tensors, encryption=enc)
    dec = tz.DecryptionParams.from_key(enc.key)
    direct, dstats = load_all(path, direct_io=True, encryption=dec)
    buffered, _ = load_all(path, direct_io=False, encryption=dec)
    assert direct == buffered == {k: raw_bytes(v) for k, v in tensors.items()}
    assert dstats["mode"] == "direct"


def test_safetensors_direct_load_is_bit_exact(disk_dir):
    tensors = {k: v for k, v in odd_tensors().items() if v.dtype != torch.complex64}
    path = os.path.join(disk_dir, "m.safetensors")
    safetensors.torch.save_file(tensors, path)
    expected = {k: raw_bytes(v) for k, v in safetensors.torch.load_file(path).items()}
    direct, dstats = load_all(path, direct_io=True)
    buffered, _ = load_all(path, direct_io=False)
    assert direct == buffered == expected
    assert dstats["mode"] == "direct"
    # safetensors data is 8-aligned: the large tensors land in place.
    assert dstats["in_place_bytes"] > (3 << 20) // 2


def test_file_objects_are_read_direct(model):
    path, tensors = model
    with open(path, "rb") as f:
        d = TensorDeserializer(f, device="cpu", direct_io=True)
        got = {k: raw_bytes(v) for k, v in d.items()}
    assert got == {k: raw_bytes(v) for k, v in tensors.items()}
    assert d.read_stats["mode"] == "direct"


def test_tmpfs_falls_back_to_buffered_without_error():
    d = tempfile.mkdtemp(prefix="tensorizer_direct_", dir="/dev/shm")
    try:
        tensors = odd_tensors()
        path = write_tensors(os.path.join(d, "m.tensors"), tensors)
        for direct_io in (True, None):
            got, stats = load_all(path, direct_io=direct_io)
            assert got == {k: raw_bytes(v) for k, v in tensors.items()}
            assert stats["mode"] == "buffered", stats
            assert stats["direct_block_bytes"] == 0
            assert stats["buffered_reason"] == "tmpfs has no direct I/O"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_forced_direct_load_leaves_the_page_cache_as_it_found_it(model):
    path, tensors = model
    evict(path)
    for kwargs in ({}, {"lazy": True}, {"verify_hash": True}):
        got, stats = load_all(path, direct_io=True, **kwargs)
        assert stats["mode"] == "direct"
        assert resident_pages(path) == 0, kwargs
    # A warm file stays warm (direct reads do not evict it).
    warm(path)
    got, stats = load_all(path, direct_io=True)
    assert got == {k: raw_bytes(v) for k, v in tensors.items()}
    assert resident_pages(path) == page_count(path)


def test_auto_reads_a_cold_file_direct_and_a_warm_file_buffered(model):
    path, tensors = model
    expected = {k: raw_bytes(v) for k, v in tensors.items()}
    evict(path)
    got, stats = load_all(path)
    assert got == expected
    assert stats["mode"] == "direct", stats
    assert resident_pages(path) == 0
    warm(path)
    got, stats = load_all(path)
    assert got == expected
    assert stats["mode"] == "buffered", stats
    # A warm load keeps the buffered layout: every slot 64-byte aligned.
    d = TensorDeserializer(str(path), device="cpu")
    assert all(t.data_ptr() % 64 == 0 for t in d.values() if t.numel())


def test_auto_reads_buffered_where_the_page_cache_is_hidden(model):
    """The kernel hides page-cache residency of files a process neither owns
    nor may write; auto mode then reads buffered rather than guess. (Root
    makes such a file by reading it as another user.)"""
    assert os.geteuid() == 0, "this test drops to user nobody and needs root"
    path, _ = model
    os.chmod(path, 0o444)
    os.chmod(os.path.dirname(path), 0o755)
    script = (
        "import os, sys; from tensorizer import TensorDeserializer;"
        "os.setgid(65534); os.setuid(65534);"
        "d = TensorDeserializer(sys.argv[1], device='cpu');"
        "print(d.read_stats['mode']); print(d.read_stats['buffered_reason'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    mode, reason = out.stdout.splitlines()
    assert mode == "buffered"
    assert "hidden" in reason


def test_direct_io_keyword_is_checked(model):
    path, _ = model
    with pytest.raises(TypeError, match="direct_io"):
        TensorDeserializer(str(path), device="cpu", direct_io="on")


def test_in_memory_sources_have_no_read_stats(model):
    path, _ = model
    with open(path, "rb") as f:
        data = f.read()
    d = TensorDeserializer(io.BytesIO(data), device="cpu", direct_io=True)
    assert d.read_stats is None


@pytest.mark.parametrize("mode", ["on", "off", "auto"])
def test_cli_direct_io_option(cli, model, mode):
    path, _ = model
    evict(path)
    out = subprocess.run(
        [cli, "verify", "--direct-io", mode, str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "OK: 10 tensors passed" in out.stdout
    if mode != "off":
        assert resident_pages(path) == 0  # on, and auto on a cold file: direct
    out = subprocess.run(
        [cli, "bench", "--repeat", "1", "--direct-io", mode, str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    reads = next(line for line in out.stdout.splitlines() if line.startswith("reads:"))
    if mode == "on":
        assert "0.00 GB buffered (O_DIRECT block" in reads, reads
    if mode == "off":
        assert "0.00 GB direct" in reads and "(direct I/O off)" in reads, reads
