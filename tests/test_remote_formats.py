"""Encrypted .tensors files and safetensors files from every remote source.

Issue 4 asks that decryption and safetensors input work "from every source":
the same files are served by a real nginx (HTTP) and a real SeaweedFS (S3)
and must load bit-exact, eagerly and lazily with a filter, including an
encrypted file written by the reference tensorizer 2.12.1. Redis has its own
suite (test_redis.py).
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import pytest
import torch
from nginx_server import run_nginx
from safetensors.torch import save_file

from tensorizer import (
    CryptographyError,
    DecryptionParams,
    EncryptionParams,
    TensorDeserializer,
    TensorSerializer,
)

PASSPHRASE = "remote formats passphrase"


def _tensors() -> dict:
    g = torch.Generator().manual_seed(7)
    out = {f"layer{i}.weight": torch.randn(64 + i, 96, generator=g) for i in range(12)}
    out["big"] = torch.randn(6 << 20 >> 2, generator=g)  # 6 MiB: several crypt chunks
    out["ids"] = torch.arange(1000, dtype=torch.int64)
    out["half"] = torch.randn(33, 17, generator=g).to(torch.bfloat16)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, ref_python):
    """Local files: ours encrypted (random key and passphrase), the
    reference's encrypted (passphrase), and a safetensors file."""
    d = tmp_path_factory.mktemp("remote-formats")
    tensors = _tensors()
    torch.save(tensors, d / "expected.pt")
    key_params = EncryptionParams.random()
    s = TensorSerializer(str(d / "ours-key.tensors"), encryption=key_params)
    s.write_state_dict(tensors)
    s.close()
    s = TensorSerializer(
        str(d / "ours-pass.tensors"), encryption=EncryptionParams.from_string(PASSPHRASE)
    )
    s.write_state_dict(tensors)
    s.close()
    save_file(tensors, str(d / "model.safetensors"))
    script = textwrap.dedent(
        f"""
        import torch
        from tensorizer import TensorSerializer, EncryptionParams
        t = torch.load({str(d / "expected.pt")!r})
        s = TensorSerializer({str(d / "ref-pass.tensors")!r},
                             encryption=EncryptionParams.from_string({PASSPHRASE!r}))
        s.write_state_dict(t)
        s.close()
        """
    )
    subprocess.run([ref_python, "-c", script], check=True, timeout=300)
    return d, tensors, key_params.key


def _decryption(name: str, key: bytes):
    if name == "ours-key.tensors":
        return DecryptionParams.from_key(key)
    return DecryptionParams.from_string(PASSPHRASE)


def _assert_loaded(d, expected: dict, names=None) -> None:
    names = sorted(expected) if names is None else names
    assert sorted(d.keys()) == sorted(names)
    for k in names:
        assert d[k].dtype == expected[k].dtype, k
        assert torch.equal(d[k], expected[k]), k


@pytest.fixture(scope="module")
def http_base(tmp_path_factory, files):
    d, _, _ = files
    root = tmp_path_factory.mktemp("nginx-formats")
    (root / "www").mkdir()
    for f in ("ours-key.tensors", "ours-pass.tensors", "ref-pass.tensors", "model.safetensors"):
        shutil.copy(d / f, root / "www" / f)
    with run_nginx(root) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def s3_base(s3_server, files):
    d, _, _ = files
    client = s3_server.client()
    for f in ("ours-key.tensors", "ours-pass.tensors", "ref-pass.tensors", "model.safetensors"):
        client.upload_file(str(d / f), s3_server.bucket, f"formats/{f}")
    return f"s3://{s3_server.bucket}/formats"


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(params=["http", "s3"])
def base(request):
    if request.param == "http":
        return request.getfixturevalue("http_base")
    request.getfixturevalue("s3_env")
    return request.getfixturevalue("s3_base")


@pytest.mark.parametrize("name", ["ours-key.tensors", "ours-pass.tensors", "ref-pass.tensors"])
@pytest.mark.parametrize("num_readers", [1, 4])
def test_encrypted_file_loads_from_remote_source(files, base, name, num_readers):
    _, expected, key = files
    d = TensorDeserializer(
        f"{base}/{name}", encryption=_decryption(name, key), num_readers=num_readers
    )
    _assert_loaded(d, expected)


def test_encrypted_file_lazy_filtered_from_remote_source(files, base):
    _, expected, key = files
    wanted = ["big", "layer3.weight"]
    d = TensorDeserializer(
        f"{base}/ours-key.tensors",
        encryption=_decryption("ours-key.tensors", key),
        lazy_load=True,
        filter_func=lambda n: n in wanted,
        verify_hash=True,
    )
    _assert_loaded(d, expected, wanted)


def test_wrong_key_over_remote_source_yields_no_data(files, base):
    with pytest.raises(CryptographyError):
        TensorDeserializer(
            f"{base}/ours-key.tensors", encryption=DecryptionParams.from_key(bytes(32))
        )


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("num_readers", [1, 4])
def test_safetensors_loads_from_remote_source(files, base, lazy, num_readers):
    _, expected, _ = files
    d = TensorDeserializer(f"{base}/model.safetensors", lazy_load=lazy, num_readers=num_readers)
    _assert_loaded(d, expected)


def test_safetensors_filtered_from_remote_source(files, base):
    _, expected, _ = files
    wanted = ["half", "ids"]
    d = TensorDeserializer(
        f"{base}/model.safetensors", lazy_load=True, filter_func=lambda n: n in wanted
    )
    _assert_loaded(d, expected, wanted)
