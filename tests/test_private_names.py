"""Private names of tensorizer 2.12.1 that its own tests and CoreWeave's
examples use: they exist here and mean what they mean there."""

import ctypes
import dataclasses
import json
import mmap
import socket
import os
import subprocess
import sys

import pytest
import torch

import tensorizer
from remote_common import run_reference
from tensorizer import EncryptionParams, TensorDeserializer, TensorSerializer, serialization


def _ref_json(ref_python: str, script: str, *args: str):
    return json.loads(run_reference(ref_python, script, *args))


def test_tensor_entry_and_hash_have_the_references_layout(ref_python):
    script = """
import dataclasses, json
from tensorizer.serialization import TensorEntry, TensorHash
print(json.dumps({c.__name__: [list(c.__slots__), [f.name for f in dataclasses.fields(c)],
                                c.__dataclass_params__.order] for c in (TensorEntry, TensorHash)}))
"""
    ours = {
        c.__name__: [
            list(c.__slots__),
            [f.name for f in dataclasses.fields(c)],
            c.__dataclass_params__.order,
        ]
        for c in (serialization.TensorEntry, serialization.TensorHash)
    }
    assert ours == _ref_json(ref_python, script)


def _write(path, encrypted: bool, meta: bool):
    tensors = {"w": torch.arange(64, dtype=torch.float32)}
    if meta:
        tensors["m"] = torch.empty(8, device="meta")
    params = EncryptionParams.random() if encrypted else None
    with TensorSerializer(str(path), encryption=params) as s:
        s.write_state_dict(tensors)
    return params


@pytest.mark.parametrize(("encrypted", "meta"), [(False, False), (True, False), (True, True)])
def test_file_header_and_flags_match_the_reference(tmp_path, ref_python, encrypted, meta):
    path = tmp_path / "m.tensors"
    params = _write(path, encrypted, meta)
    script = """
import json, sys
from tensorizer import TensorDeserializer, DecryptionParams
key = bytes.fromhex(sys.argv[2]) if sys.argv[2] else None
d = TensorDeserializer(sys.argv[1], device="cpu", lazy_load=True,
                       encryption=DecryptionParams.from_key(key) if key else None)
h = d._file_header
print(json.dumps([h.version_number, int(h.feature_flags), h.tensor_size, h.tensor_count,
                  int(d._file_flags)]))
"""
    expected = _ref_json(ref_python, script, str(path), params.key.hex() if params else "")
    decryption = tensorizer.DecryptionParams.from_key(params.key) if params else None
    with TensorDeserializer(str(path), device="cpu", lazy_load=True, encryption=decryption) as d:
        h = d._file_header
        got = [h.version_number, int(h.feature_flags), h.tensor_size, h.tensor_count]
        assert got + [int(d._file_flags)] == expected
        assert (serialization._FileFeatureFlags.encrypted in d._file_flags) == (
            encrypted and meta
        )


def test_loaded_hashes_are_tensorizers_bytes(tmp_path):
    path = tmp_path / "m.tensors"
    _write(path, encrypted=False, meta=False)
    with TensorDeserializer(str(path), device="cpu", lazy_load=True) as d:
        d["w"]
        (entry,) = d._entries.values()
    types = {h.type: h.hash for h in entry.hashes}
    assert set(types) == {serialization.HashType.CRC32, serialization.HashType.SHA256}
    assert isinstance(types[serialization.HashType.CRC32], bytes)
    assert len(types[serialization.HashType.CRC32]) == 4
    assert len(types[serialization.HashType.SHA256]) == 32


_PERF_SCRIPT = """
import sys, torch
from tensorizer import TensorDeserializer, TensorSerializer, serialization
with TensorSerializer(sys.argv[1]) as s:
    s.write_state_dict({"w": torch.arange(1 << 16, dtype=torch.float32)})
d = TensorDeserializer(sys.argv[1], device="cpu", lazy_load=True)
d["w"]
print(serialization._enable_perf_stats)
try:
    stats = serialization._get_perf_stats()
except RuntimeError as e:
    print("RuntimeError", e)
else:
    print(stats["file_readinto_bytes"] >= (1 << 18), stats["file_readinto_secs"] > 0,
          stats["tensor_to_device_bytes"], stats["tensor_to_device_secs"])
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_perf_stats(tmp_path, enabled):
    env = dict(os.environ)
    env.pop("TENSORIZER_ENABLE_PERF_STATS", None)
    if enabled:
        env["TENSORIZER_ENABLE_PERF_STATS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _PERF_SCRIPT, str(tmp_path / "m.tensors")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split("\n")
    if enabled:
        assert out[:2] == ["True", "True True 0 0.0"]
    else:
        assert out[:2] == ["False", "RuntimeError Performance stats are not enabled"]


def test_crypt_reports_encryption_available():
    from tensorizer import _crypt

    assert _crypt.available is True
    assert _crypt.CryptographyError is tensorizer.CryptographyError
    assert len(_crypt.random_bytes(24)) == 24


def test_prefault_fresh_memory():
    from tensorizer import _syscalls

    size = 4 * mmap.PAGESIZE
    with mmap.mmap(-1, size) as m:
        buf = (ctypes.c_ubyte * size).from_buffer(m)
        _syscalls.prefault(ctypes.addressof(buf), size)
        assert bytes(buf) == bytes(size)
        del buf


def test_stream_open_failure_says_failed_to_open_stream():
    from tensorizer import stream_io

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(ConnectionRefusedError, match="Failed to open stream: opening http://"):
        stream_io.open_stream(f"http://127.0.0.1:{port}/m.tensors")


def test_s3_default_config_paths_are_searched_in_order(tmp_path, monkeypatch):
    from tensorizer import stream_io

    cfg = tmp_path / "s3cmd.ini"
    cfg.write_text("[default]\naccess_key = AK\nsecret_key = SK\nhost_base = h.example\n")
    monkeypatch.setattr(
        stream_io, "_s3_default_config_paths", (str(tmp_path / "missing"), str(cfg))
    )
    assert stream_io._s3_options(None, None, None, None, None, None, None) == {
        "s3_config_path": str(cfg)
    }
    found = stream_io._infer_credentials(None, None)
    assert (found.config_file, found.s3_access_key, found.s3_endpoint) == (str(cfg), "AK", "h.example")
    monkeypatch.setattr(stream_io, "_s3_default_config_paths", ())
    with pytest.raises(ValueError, match="no default .s3cfg file could be found"):
        stream_io._infer_credentials(None, None)


def test_enforce_scheme_is_looked_up_at_each_call(monkeypatch):
    from tensorizer import stream_io

    with pytest.raises(ValueError, match="Non-HTTPS"):
        stream_io._s3_options(None, None, "http://127.0.0.1:9", None, None, None, None)
    monkeypatch.setattr(stream_io, "_enforce_scheme", lambda endpoint, *_: endpoint)
    options = stream_io._s3_options(None, None, "http://127.0.0.1:9", None, None, None, None)
    assert options["s3_endpoint"] == "http://127.0.0.1:9"
