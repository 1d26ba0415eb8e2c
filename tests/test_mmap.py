"""Mapped loads (TensorDeserializer(mmap=True)) and the aligned writer
(TensorSerializer(align=...)).

A mapped load must give the same tensors as a normal load (eager, lazy,
filtered, with hash checks, on files whose tensors sit at odd offsets, with
the unaligned ones copied and counted); add next to no anonymous memory
(RssAnon, measured in a fresh process: RssFile counts the mapped page-cache
pages, which are not this process's memory); share its pages with another
process mapping the same file; never write the file when a tensor is
modified; and refuse what it cannot do with a clear ValueError. Files live
under /var/tmp, which is on disk here (/tmp may be tmpfs).
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

import tensorizer as tz
from tensorizer import TensorDeserializer, TensorSerializer
from tensorizer._errors import TensorizerFormatError



@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="tzr-mmap-", dir="/var/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def mixed_tensors():
    """Tensors of many dtypes whose names have odd lengths, so that in a
    tensorizer-layout file their data lands at every offset modulo 8."""
    g = torch.Generator().manual_seed(7)
    out = {}
    dtypes = [
        torch.float32,
        torch.bfloat16,
        torch.int8,
        torch.bool,
        torch.float16,
        torch.int64,
        torch.complex64,
        torch.float64,
        torch.uint8,
        torch.int32,
    ]
    for i in range(30):
        dtype = dtypes[i % len(dtypes)]
        shape = (3 + i % 5, 1 + (i * 7) % 11)
        if dtype == torch.bool:
            t = torch.rand(shape, generator=g) > 0.5
        elif dtype.is_floating_point or dtype.is_complex:
            t = torch.randn(shape, generator=g).to(dtype)
        else:
            t = torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(
                dtype
            )
        out["t" * (1 + i % 7) + f".{i}"] = t
    out["empty"] = torch.empty((0, 4), dtype=torch.float32)
    out["scalar"] = torch.tensor(2.5, dtype=torch.float64)
    return out


def write(path, tensors, **kwargs):
    s = TensorSerializer(path, **kwargs)
    s.write_state_dict(tensors)
    s.close()


def alignment(dtype: torch.dtype) -> int:
    n = torch.empty((), dtype=dtype).element_size()
    return min(n & -n, 8)


def expected_copies(path) -> int:
    """Tensors whose data offset in the file is not aligned for the dtype."""
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        return sum(
            1
            for p, e in d._entries.items()
            if e.data_length and e.data_offset % alignment(d._dtypes[p][0])
        )


def assert_same(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def mixed_file(workdir):
    path = os.path.join(workdir, "mixed.tensors")
    tensors = mixed_tensors()
    write(path, tensors)
    return path, tensors


# --- bit-exact against a normal load -----------------------------------------


@pytest.mark.parametrize("verify_hash", [False, True, "all"])
def test_eager_matches_normal_load(mixed_file, verify_hash):
    path, tensors = mixed_file
    normal = dict(TensorDeserializer(path, device="cpu", verify_hash=verify_hash))
    d = TensorDeserializer(path, device="cpu", mmap=True, verify_hash=verify_hash)
    mapped = dict(d)
    assert_same(mapped, normal)
    assert_same(mapped, tensors)
    stats = d.mmap_stats
    copies = expected_copies(path)
    # The tensorizer layout puts data at odd offsets: some are copied.
    assert 0 < copies < len(tensors) - 2
    assert stats["copied"] == copies
    assert stats["mapped"] + stats["copied"] == len(tensors)
    assert stats["copied_bytes"] > 0 and stats["mapped_bytes"] > 0


def test_lazy_random_order_and_filter(mixed_file):
    path, tensors = mixed_file
    keys = list(tensors)
    order = keys[::-3] + keys[1::3]
    d = TensorDeserializer(path, device="cpu", mmap=True, lazy_load=True, verify_hash=True)
    for k in order:
        assert torch.equal(d[k], tensors[k]), k
    wanted = {k for k in keys if k.startswith("ttt")}
    f = TensorDeserializer(path, device="cpu", mmap=True, filter_func=wanted.__contains__)
    assert set(f) == wanted
    for k in wanted:
        assert torch.equal(f[k], tensors[k])
    assert f.mmap_stats["mapped"] + f.mmap_stats["copied"] == len(wanted)


def test_views_share_the_mapping(mixed_file):
    """Mapped tensors point into one mapping of the file, at their offsets."""
    path, _ = mixed_file
    d = TensorDeserializer(path, device="cpu", mmap=True, lazy_load=True)
    ptrs = {}
    for p, e in d._entries.items():
        if e.data_length and e.data_offset % alignment(d._dtypes[p][0]) == 0:
            ptrs[e.data_offset] = d[p[0]].data_ptr()
    assert len(ptrs) >= 2
    bases = {ptr - off for off, ptr in ptrs.items()}
    assert len(bases) == 1  # data_ptr - file offset: the same mapping base


def test_meta_tensors(workdir):
    path = os.path.join(workdir, "meta.tensors")
    tensors = {"a": torch.arange(5, dtype=torch.int16), "m": torch.empty(3, 4, device="meta")}
    write(path, tensors)
    d = TensorDeserializer(path, device="cpu", mmap=True, verify_hash=True)
    assert torch.equal(d["a"], tensors["a"])
    assert torch.equal(d["m"], torch.zeros(3, 4))
    assert d.mmap_stats["mapped"] + d.mmap_stats["copied"] == 1


def test_safetensors_file(workdir):
    import safetensors.torch

    path = os.path.join(workdir, "x.safetensors")
    tensors = {"a": torch.randn(7, 3), "b": torch.arange(9, dtype=torch.int8)}
    safetensors.torch.save_file(tensors, path)
    d = TensorDeserializer(path, device="cpu", mmap=True)
    assert_same(dict(d), tensors)


def test_file_object_and_descriptor(mixed_file):
    path, tensors = mixed_file
    with open(path, "rb") as f:
        assert_same(dict(TensorDeserializer(f, device="cpu", mmap=True)), tensors)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert_same(dict(TensorDeserializer(fd, device="cpu", mmap=True)), tensors)
    finally:
        os.close(fd)


def test_load_into_module(workdir):
    path = os.path.join(workdir, "module.tensors")
    m = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3))
    s = TensorSerializer(path)
    s.write_module(m)
    s.close()
    target = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3))
    d = TensorDeserializer(path, device="cpu", mmap=True, lazy_load=True)
    assert d.load_into_module(target) == 4
    for (n, a), (_, b) in zip(m.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), n


def test_tensors_outlive_the_deserializer(mixed_file):
    import gc

    path, tensors = mixed_file
    d = TensorDeserializer(path, device="cpu", mmap=True)
    kept = {k: d[k] for k in list(tensors)[:5]}
    del d
    gc.collect()
    for k, t in kept.items():
        assert torch.equal(t, tensors[k])


# --- hash checks and bad files -------------------------------------------------


def test_verify_hash_checks_the_mapped_bytes(workdir):
    path = os.path.join(workdir, "bad.tensors")
    write(path, {"a": torch.arange(64, dtype=torch.float32)}, align=64)
    d = TensorDeserializer(path, device="cpu", lazy_load=True)
    off = d._entries[("a",)].data_offset
    d.close()
    with open(path, "r+b") as f:
        f.seek(off + 5)
        f.write(b"\xff")
    # Without a check the flipped byte loads; with one it is caught.
    TensorDeserializer(path, device="cpu", mmap=True)
    with pytest.raises(tz.serialization.HashMismatchError, match="'a'.*CRC32"):
        TensorDeserializer(path, device="cpu", mmap=True, verify_hash=True)
    with pytest.raises(tz.serialization.HashMismatchError, match="'a'.*CRC32"):
        TensorDeserializer(path, device="cpu", mmap=True, verify_hash="all", lazy_load=True)["a"]


def _error(path, **kwargs) -> str:
    with pytest.raises(TensorizerFormatError) as info:
        dict(TensorDeserializer(path, device="cpu", **kwargs))
    return str(info.value)


def test_truncated_file_same_error_as_normal_load(mixed_file, workdir):
    """A file shorter than its index claims: the index check refuses it
    before anything is mapped (no SIGBUS), with the normal load's message."""
    path, _ = mixed_file
    cut = os.path.join(workdir, "cut.tensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) - 100])
    msg = _error(cut)
    assert "lies outside the file" in msg
    assert _error(cut, mmap=True) == msg
    assert _error(cut, mmap=True, lazy_load=True) == msg


def test_lying_header_same_error_as_normal_load(mixed_file, workdir):
    """A tensor header that disagrees with the index is refused as in a
    normal load, when the tensor is loaded."""
    path, _ = mixed_file
    bad = os.path.join(workdir, "lying.tensors")
    shutil.copy(path, bad)
    d = TensorDeserializer(path, device="cpu", lazy_load=True)
    hoff = d._entries[("t.0",)].offset
    d.close()
    with open(bad, "r+b") as f:
        f.seek(hoff)
        size = int.from_bytes(f.read(8), "little")
        f.seek(hoff)
        f.write((size + 1).to_bytes(8, "little"))
    msg = _error(bad)
    assert "disagrees with the index" in msg
    assert _error(bad, mmap=True) == msg


# --- aligned files -------------------------------------------------------------


def test_aligned_writer_maps_every_tensor(workdir):
    tensors = mixed_tensors()
    path = os.path.join(workdir, "aligned.tensors")
    write(path, tensors, align=64)
    d = TensorDeserializer(path, device="cpu", mmap=True, verify_hash="all")
    assert_same(dict(d), tensors)
    assert d.mmap_stats["copied"] == 0
    assert d.mmap_stats["mapped"] == len(tensors)
    with TensorDeserializer(path, device="cpu", lazy_load=True) as lazy:
        for e in lazy._entries.values():
            assert e.data_offset % 64 == 0
    # The same tensors without padding: the same version, just no padding.
    plain = os.path.join(workdir, "plain.tensors")
    write(plain, tensors)
    assert os.path.getsize(path) > os.path.getsize(plain)
    with open(path, "rb") as a, open(plain, "rb") as b:
        assert a.read(9) == b.read(9)  # magic and data version


def test_align_validation(workdir):
    path = os.path.join(workdir, "x.tensors")
    for bad in (3, 0, 8192, -4):
        with pytest.raises(ValueError, match="power of two"):
            TensorSerializer(path, align=bad)
    with pytest.raises(TypeError):
        TensorSerializer(path, align=4.0)
    assert not os.path.exists(path)


def test_reference_loads_aligned_file(workdir, ref_python):
    """tensorizer 2.12.1 reads files written with align= (eager with many
    readers, lazy, hashes checked): the padding is inside the header, which
    it reads whole and whose last 8 bytes it takes as the data length."""
    tensors = mixed_tensors()
    path = os.path.join(workdir, "aligned.tensors")
    write(path, tensors, align=64)
    ours = {k: hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
            for k, t in tensors.items() if t.numel()}
    script = textwrap.dedent(
        """
        import hashlib, json, sys, torch
        from tensorizer import TensorDeserializer
        out = {}
        for kw in ({"num_readers": 4}, {"lazy_load": True}):
            d = TensorDeserializer(sys.argv[1], device="cpu", verify_hash=True, **kw)
            out[str(kw)] = {
                k: hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
                for k, t in d.items() if t.numel()
            }
            d.close()
        print(json.dumps(out))
        """
    )
    run = subprocess.run(
        [ref_python, "-c", script, path], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for kw, digests in result.items():
        assert digests == ours, kw


# --- memory: no extra RAM, shared pages, copy-on-write -------------------------

BIG_BYTES = 512 << 20


@pytest.fixture(scope="module")
def big_file():
    d = tempfile.mkdtemp(prefix="tzr-mmap-big-", dir="/var/tmp")
    path = os.path.join(d, "big.tensors")
    n = BIG_BYTES // 4 // 16
    tensors = {f"layer.{i}.weight": torch.full((n,), float(i), dtype=torch.float32)
               for i in range(16)}
    write(path, tensors, align=64)
    yield path
    shutil.rmtree(d, ignore_errors=True)


def _run_python(code: str, *args, timeout=300) -> str:
    env = dict(os.environ)
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()[-1]


RSS_SCRIPT = """
import json, sys, torch
from tensorizer import TensorDeserializer

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

before = status("RssAnon")
d = TensorDeserializer(sys.argv[1], device="cpu", mmap=sys.argv[2] == "1")
tensors = dict(d)
after_load = status("RssAnon")
total = sum(float(t[:: 1024].sum()) for t in tensors.values())  # touch every page
after_touch = status("RssAnon")
print(json.dumps({"load": after_load - before, "touch": after_touch - before,
                  "file": status("RssFile")}))
"""


def test_mapped_load_adds_no_anonymous_memory(big_file):
    mapped = json.loads(_run_python(RSS_SCRIPT, big_file, "1"))
    normal = json.loads(_run_python(RSS_SCRIPT, big_file, "0"))
    # The control: a normal load holds the whole model in its own memory.
    assert normal["load"] > 0.9 * BIG_BYTES, normal
    # Mapped: far below the model's size, before and after touching every
    # page (the touched pages are the page cache's, counted in RssFile).
    assert mapped["load"] < BIG_BYTES / 16, mapped
    assert mapped["touch"] < BIG_BYTES / 16, mapped
    assert mapped["file"] > 0.9 * BIG_BYTES, mapped


SHARE_SCRIPT = """
import sys, torch
from tensorizer import TensorDeserializer
tensors = dict(TensorDeserializer(sys.argv[1], device="cpu", mmap=True))
total = sum(float(t[:: 1024].sum()) for t in tensors.values())
print("ready", flush=True)
sys.stdin.readline()
"""


def _rollup(pid) -> dict:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def test_two_processes_share_the_pages(big_file):
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(SHARE_SCRIPT), big_file],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        rollups = [_rollup(p.pid) for p in procs]
    finally:
        for p in procs:
            p.communicate("\n", timeout=60)
    for r in rollups:
        # Every page of the weights is mapped by both processes, once in RAM.
        assert r["Shared_Clean"] > 0.9 * BIG_BYTES, r
        # Pss splits the shared pages between the two.
        assert r["Pss"] < r["Rss"] - 0.4 * BIG_BYTES, r


def test_writes_stay_private(workdir):
    path = os.path.join(workdir, "cow.tensors")
    tensors = {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(10, dtype=torch.int8)}
    write(path, tensors, align=64)
    with open(path, "rb") as f:
        before = hashlib.sha256(f.read()).hexdigest()
    d = TensorDeserializer(path, device="cpu", mmap=True)
    w = d["w"]
    with torch.no_grad():
        w.mul_(-1)
        d["b"].zero_()
    assert float(w[3]) == -3.0
    assert int(d["b"].sum()) == 0
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before
    again = TensorDeserializer(path, device="cpu", mmap=True, verify_hash=True)
    assert_same(dict(again), tensors)


# --- refusals ---------------------------------------------------------------------


def test_refusals(mixed_file, workdir):
    path, _ = mixed_file
    with pytest.raises(ValueError, match="mmap=True needs a local file, not http"):
        TensorDeserializer("http://127.0.0.1:9/model.tensors", device="cpu", mmap=True)
    with pytest.raises(ValueError, match="mmap=True needs a local file, not s3"):
        TensorDeserializer("s3://bucket/model.tensors", device="cpu", mmap=True)
    with open(path, "rb") as f:
        data = f.read()
    with pytest.raises(ValueError, match="mmap=True needs a local file"):
        TensorDeserializer(io.BytesIO(data), device="cpu", mmap=True)
    with pytest.raises(ValueError, match="CPU only"):
        TensorDeserializer(path, device="cuda", mmap=True)
    with pytest.raises(ValueError, match="cannot cast"):
        TensorDeserializer(path, device="cpu", dtype=torch.float16, mmap=True)
    with pytest.raises(ValueError, match="direct_io=True"):
        TensorDeserializer(path, device="cpu", direct_io=True, mmap=True)
    with pytest.raises(TypeError):
        TensorDeserializer(path, device="cpu", mmap="yes")


def test_refuses_encrypted_files(workdir):
    path = os.path.join(workdir, "enc.tensors")
    key = tz.EncryptionParams.random()
    write(path, {"a": torch.arange(10.0)}, encryption=key)
    dec = tz.DecryptionParams.from_key(key.key)
    with pytest.raises(ValueError, match="cannot decrypt"):
        TensorDeserializer(path, device="cpu", encryption=dec, mmap=True)
    with pytest.raises(ValueError, match="is encrypted"):
        TensorDeserializer(path, device="cpu", mmap=True)
    assert torch.equal(TensorDeserializer(path, device="cpu", encryption=dec)["a"],
                       torch.arange(10.0))


def test_device_none_means_cpu(mixed_file):
    path, tensors = mixed_file
    d = TensorDeserializer(path, mmap=True)
    assert all(t.device.type == "cpu" for t in d.values())
