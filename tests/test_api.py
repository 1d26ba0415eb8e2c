"""Behaviour of our TensorSerializer/TensorDeserializer beyond byte interop:
the reference's bugs we fix, our extensions, the save contract (temporary
name + rename, nothing left behind on failure) and the load contract (only
the selected bytes read, no second copy of a CPU load)."""

import io
import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import tensorizer
from tensorizer import TensorDeserializer, TensorSerializer, TensorType


def write(path, state):
    s = TensorSerializer(path)
    s.write_state_dict(state)
    s.close()
    return path


@pytest.fixture
def sample(tmp_path):
    state = {
        "a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.arange(5, dtype=torch.int32),
        "c": torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64),
        "d": torch.tensor([True, False]),
        "e": torch.randn(7, dtype=torch.float64),
    }
    return write(tmp_path / "sample.tensors", state), state


def test_lazy_random_access_in_any_order(sample):
    # tensorizer 2.12 raises "Tensor not found" for a key earlier in the file
    # than one already read lazily.
    path, state = sample
    d = TensorDeserializer(path, device="cpu", lazy_load=True)
    for key in ["e", "a", "d", "b", "c", "a"]:
        assert torch.equal(d[key], state[key])


def test_opaque_meta_tensor_round_trip(tmp_path):
    # tensorizer 2.12 cannot read back a bfloat16 meta tensor.
    path = tmp_path / "m.tensors"
    write(path, {"w": torch.empty(4, 3, dtype=torch.bfloat16, device="meta")})
    with open(path, "rb") as f:
        f.seek(5)
        assert int.from_bytes(f.read(4), "little") == 4
    d = TensorDeserializer(path, device="cpu")
    assert d["w"].dtype == torch.bfloat16
    assert d["w"].shape == (4, 3)
    assert torch.count_nonzero(d["w"]) == 0


def test_dtype_casts_every_non_bool_tensor_by_default(sample):
    path, _ = sample
    d = TensorDeserializer(path, device="cpu", dtype=torch.float16)
    assert d["a"].dtype == torch.float16
    assert d["b"].dtype == torch.float16
    assert d["c"].dtype == torch.float16  # complex -> real, as in the reference
    assert d["d"].dtype == torch.bool


def test_cast_only_floating_leaves_other_tensors_alone(sample):
    path, state = sample
    d = TensorDeserializer(path, device="cpu", dtype=torch.float16, cast_only_floating=True)
    assert d["a"].dtype == torch.float16
    assert d["e"].dtype == torch.float16
    assert torch.equal(d["b"], state["b"]) and d["b"].dtype == torch.int32
    assert torch.equal(d["c"], state["c"]) and d["c"].dtype == torch.complex64


def test_filtered_and_lazy_loads_read_only_what_they_need(tmp_path):
    big = {f"t{i}": torch.full((1 << 18,), float(i)) for i in range(8)}  # 1 MiB each
    path = write(tmp_path / "big.tensors", big)
    prefix = 262217
    # read_bytes counts the tensor bytes the engine read (total_bytes_read
    # is tensorizer's count, a file position; see test_stream_io).
    d = TensorDeserializer(path, device="cpu", filter_func=lambda n: n == "t3")
    assert list(d) == ["t3"]
    assert d.read_bytes < (1 << 20) + 4096
    lazy = TensorDeserializer(path, device="cpu", lazy_load=True)
    assert lazy.read_bytes == 0
    assert lazy.total_bytes_read == prefix
    assert torch.equal(lazy["t5"], big["t5"])
    assert lazy.read_bytes < (1 << 20) + 4096


def test_cpu_load_tensors_share_one_arena(sample):
    path, _ = sample
    d = TensorDeserializer(path, device="cpu")
    ptrs = sorted(d[k].data_ptr() for k in "abcde")
    # All tensors are views on one mapping: within a few hundred bytes.
    assert ptrs[-1] - ptrs[0] < 4096
    assert all(p % 64 == 0 for p in ptrs)


def test_cpu_load_makes_no_second_copy(tmp_path):
    # Peak RSS of a fresh process loading 512 MiB stays near the model size.
    state = {f"w{i}": torch.ones(1 << 25, dtype=torch.float32) for i in range(4)}
    path = write(tmp_path / "rss.tensors", state)
    model_bytes = 4 * (1 << 27)
    code = textwrap.dedent(
        f"""
        import resource, torch, tensorizer
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        d = tensorizer.TensorDeserializer({str(path)!r}, device="cpu")
        assert float(d["w3"][-1]) == 1.0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(base, peak)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    base, peak = map(int, out.stdout.split())
    assert peak - base < model_bytes * 1.1 + (32 << 20), (base, peak)


def test_save_goes_to_a_temporary_name_until_close(tmp_path):
    path = tmp_path / "out.tensors"
    s = TensorSerializer(path)
    s.write_tensor(0, "x", TensorType.PARAM, torch.ones(3))
    assert not path.exists()
    temps = [p for p in os.listdir(tmp_path) if ".tzr-tmp-" in p]
    assert len(temps) == 1
    s.close()
    assert path.exists()
    assert os.listdir(tmp_path) == ["out.tensors"]
    assert torch.equal(TensorDeserializer(path, device="cpu")["x"], torch.ones(3))


def test_failed_save_leaves_nothing_behind(tmp_path):
    # The file-size limit makes the kernel refuse writes past 1 MiB (EFBIG),
    # a real failure in the middle of writing the data.
    target = tmp_path / "fail.tensors"
    code = textwrap.dedent(
        f"""
        import resource, signal, torch, tensorizer
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        s = tensorizer.TensorSerializer({str(target)!r})
        try:
            s.write_state_dict({{"w": torch.ones(1 << 20)}})
        except OSError as e:
            print("OSError", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "OSError" in out.stdout, out.stderr
    assert str(target) in out.stdout
    assert os.listdir(tmp_path) == []


def test_metadata_overflow_is_an_error_and_leaves_no_file(tmp_path):
    path = tmp_path / "many.tensors"
    s = TensorSerializer(path)
    state = {("n" * 200) + str(i): torch.zeros(1) for i in range(2000)}
    with pytest.raises(RuntimeError, match="Metadata overflow"):
        s.write_state_dict(state)
    del s
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_file_objects_with_and_without_descriptors(tmp_path, sample):
    _, state = sample
    buf = io.BytesIO()
    s = TensorSerializer(buf)
    s.write_state_dict(state)
    data = buf.getvalue()
    s.close()
    with open(tmp_path / "f.tensors", "wb+") as f:
        s = TensorSerializer(f)
        s.write_state_dict(state)
        s.close()
    assert (tmp_path / "f.tensors").read_bytes() == data
    d = TensorDeserializer(io.BytesIO(data), device="cpu")
    assert all(torch.equal(d[k], v) for k, v in state.items())
    with open(tmp_path / "f.tensors", "rb") as f:
        d = TensorDeserializer(f, device="cpu", num_readers=2)
        assert all(torch.equal(d[k], v) for k, v in state.items())


def test_each_write_call_leaves_a_valid_file(tmp_path):
    with open(tmp_path / "v.tensors", "wb+") as f:
        s = TensorSerializer(f)
        s.write_tensor(0, "a", TensorType.PARAM, torch.ones(2))
        f.flush()
        assert list(TensorDeserializer(str(tmp_path / "v.tensors"), device="cpu")) == ["a"]
        s.write_tensor(1, "b", TensorType.BUFFER, torch.zeros(3))
        d = TensorDeserializer(str(tmp_path / "v.tensors"), device="cpu")
        assert list(d) == ["a", "b"]
        s.close()


def test_verify_hash_modes_and_mismatch(tmp_path, sample):
    path, state = sample
    for mode in (True, "all"):
        d = TensorDeserializer(path, device="cpu", verify_hash=mode)
        assert torch.equal(d["a"], state["a"])
    raw = bytearray(open(path, "rb").read())
    raw[-9] ^= 0x01  # last data byte of the last tensor
    bad = tmp_path / "bad.tensors"
    bad.write_bytes(bytes(raw))
    TensorDeserializer(bad, device="cpu")  # without verification it loads
    for mode in (True, "all"):
        with pytest.raises(tensorizer.serialization.HashMismatchError, match=r"'e'.*bad\.tensors"):
            TensorDeserializer(bad, device="cpu", verify_hash=mode)
    with pytest.raises(ValueError):
        TensorDeserializer(path, device="cpu", verify_hash="sha512")


def test_module_round_trip_keeps_buffer_persistence(tmp_path):
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.register_buffer("kept", torch.arange(3.0))
            self.register_buffer("scratch", torch.ones(2), persistent=False)

    m = M()
    s = TensorSerializer(tmp_path / "m.tensors")
    s.write_module(m)
    s.close()
    fresh = M()
    with TensorDeserializer(tmp_path / "m.tensors", device="cpu") as d:
        assert d.load_into_module(fresh) == 4
        assert d.verify_module(fresh)[0]
    assert set(fresh.state_dict()) == set(m.state_dict())
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_numpy_arrays_and_read_numpy_arrays(tmp_path):
    s = TensorSerializer(tmp_path / "np.tensors")
    s.write_tensor(0, "n", TensorType.STATE_DICT, np.arange(6, dtype=np.int16).reshape(2, 3))
    s.write_tensor(0, "bf", TensorType.STATE_DICT, torch.ones(2, dtype=torch.bfloat16))
    s.close()
    d = TensorDeserializer(tmp_path / "np.tensors", device="cpu", lazy_load=True)
    rows = list(d.read_numpy_arrays(allow_raw_data=True))
    assert rows[0][2] == "n" and np.array_equal(
        rows[0][3], np.arange(6, dtype=np.int16).reshape(2, 3)
    )
    assert rows[1][4] is True and rows[1][5] == "torch.bfloat16"
    d = TensorDeserializer(tmp_path / "np.tensors", device="cpu", lazy_load=True)
    with pytest.raises(ValueError, match="opaque"):
        list(d.read_numpy_arrays())


def test_argument_validation(sample):
    path, _ = sample
    with pytest.raises(TypeError):
        TensorDeserializer(path, device="cpu", num_readers="2")
    with pytest.raises(ValueError):
        TensorDeserializer(path, device="cpu", num_readers=0)
    with pytest.raises(TypeError):
        TensorDeserializer(path, device="cpu", encryption="key")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            TensorDeserializer(path, device="cuda")
    with pytest.raises(TypeError):
        TensorSerializer(path.parent / "x.tensors", encryption=object())


def test_device_default_and_cuda_logic(sample):
    path, state = sample
    d = TensorDeserializer(path)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert d["a"].device.type == expected
    assert torch.equal(d["a"].cpu(), state["a"])


def test_resource_limits_respected():
    # Sanity: the no-second-copy test measures RSS in KiB units on Linux.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_numpy_scalars_and_non_contiguous_arrays(tmp_path):
    s = TensorSerializer(tmp_path / "np0.tensors")
    s.write_tensor(0, "scalar", TensorType.STATE_DICT, np.array(3.5, dtype=np.float32))
    s.write_tensor(0, "t", TensorType.STATE_DICT, np.arange(6, dtype=np.int64).reshape(2, 3).T)
    s.close()
    d = TensorDeserializer(tmp_path / "np0.tensors", device="cpu")
    assert d["scalar"].shape == () and float(d["scalar"]) == 3.5
    assert d["t"].tolist() == [[0, 3], [1, 4], [2, 5]]
