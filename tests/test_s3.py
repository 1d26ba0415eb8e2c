"""s3:// sources and sinks against a real S3 server (SeaweedFS, SigV4 enforced).

The server comes from the session fixture ``s3_server`` (tests/s3_server.py).
The first tests check the server itself, with boto3 and the reference
tensorizer 2.12.1 only: that authentication is really enforced, that the
public bucket is readable anonymously and nothing else is, and that the
reference round-trips a file through it. Everything after them exercises our
S3 support: loads and uploads, every place credentials come from, errors,
concurrency, killed and failing uploads, objects replaced mid-load, and
faults injected by tests/fault_proxy.py.

Credentials and endpoints are resolved from the environment and the home
directory, so every test that loads through our package runs with a clean
AWS environment and HOME pointing at its own temporary directory
(``clean_env``): the machine's real ~/.aws and ~/.s3cfg never matter.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import textwrap
import uuid

import botocore.exceptions
import pytest
import torch

from tensorizer import TensorDeserializer, TensorSerializer


def _payload() -> dict:
    """Several dozen tensors of mixed dtypes, ~25 MiB, one of them 20 MiB (so
    a multipart upload of it has several parts)."""
    g = torch.Generator().manual_seed(20261129)
    out = {"big": torch.randn(5 * 1024 * 1024, generator=g)}  # 20 MiB
    dtypes = [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    ]
    for i in range(40):
        dtype = dtypes[i % len(dtypes)]
        shape = (1 + (i * 7) % 13, 3 + (i * 11) % 97)
        if i % 9 == 4:
            shape = (256, 512)  # a few larger ones: the rest of the "few MiB"
        base = torch.randn(shape, generator=g) * 100
        tensor = base > 0 if dtype == torch.bool else base.to(dtype)
        out[f"layer.{i}.{'weight' if i % 2 else 'bias'}"] = tensor
    out["scalar"] = torch.tensor(7, dtype=torch.int32)
    out["empty"] = torch.zeros(0, 4)
    return out


def _assert_same(loaded, expected: dict, names=None) -> None:
    names = sorted(expected) if names is None else sorted(names)
    assert sorted(loaded.keys()) == names
    for name in names:
        got, want = loaded[name], expected[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        # Bitwise: compare the raw bytes, not the values.
        assert (
            got.contiguous()
            .view(-1)
            .view(torch.uint8)
            .equal(want.contiguous().view(-1).view(torch.uint8))
        ), name


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}.tensors"


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _ref_env() -> dict:
    # Keep our package off the reference's path, and keep the machine's own
    # AWS settings out of its boto3.
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("AWS_")}


def _run_ref(ref_python: str, script: str, *args: str) -> str:
    res = subprocess.run(
        [ref_python, "-c", script, inspect.getsource(_payload), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=_ref_env(),
        cwd="/",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout


# The reference writes _payload() to s3://bucket/key through its open_stream
# (argv: payload source, bucket, key, access key, secret, host:port).
_REF_UPLOAD = textwrap.dedent(
    """\
    import sys
    import torch
    import tensorizer
    from tensorizer import TensorSerializer, stream_io
    exec(sys.argv[1])
    bucket, key, access, secret, endpoint = sys.argv[2:7]
    stream = stream_io.open_stream(
        f"s3://{bucket}/{key}", "wb", access, secret, s3_endpoint=endpoint, force_http=True
    )
    s = TensorSerializer(stream)
    s.write_state_dict(_payload())
    s.close()
    print(tensorizer.__version__)
    """
)

# The reference loads s3://bucket/key through its open_stream and checks it
# bit-exact against _payload() (same argv as _REF_UPLOAD).
_REF_DOWNLOAD = textwrap.dedent(
    """\
    import sys
    import torch
    import tensorizer
    from tensorizer import TensorDeserializer, stream_io
    exec(sys.argv[1])
    bucket, key, access, secret, endpoint = sys.argv[2:7]
    stream = stream_io.open_stream(
        f"s3://{bucket}/{key}", "rb", access, secret, s3_endpoint=endpoint, force_http=True
    )
    expected = _payload()
    d = TensorDeserializer(stream, device="cpu")
    assert sorted(d.keys()) == sorted(expected), sorted(d.keys())
    for name, want in expected.items():
        got = d[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        a = got.contiguous().view(-1).view(torch.uint8)
        b = want.contiguous().view(-1).view(torch.uint8)
        assert a.equal(b), name
    print(tensorizer.__version__, len(expected))
    """
)


@pytest.fixture(scope="module")
def local_file(tmp_path_factory):
    """_payload() written by our serializer to a local file."""
    path = tmp_path_factory.mktemp("s3-local") / "ours.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict(_payload())
    s.close()
    return path


@pytest.fixture(scope="module")
def ref_object(s3_server, ref_python):
    """Key (in s3_server.bucket) of _payload() uploaded by the reference."""
    key = _unique("ref")
    out = _run_ref(
        ref_python,
        _REF_UPLOAD,
        s3_server.bucket,
        key,
        s3_server.access_key,
        s3_server.secret_key,
        s3_server.host_port,
    )
    assert out.strip() == "2.12.1"
    return key


# --- the server and the reference alone -----------------------------------


def test_server_enforces_sigv4(s3_server):
    admin = s3_server.client()
    key = _unique("auth")
    admin.put_object(Bucket=s3_server.bucket, Key=key, Body=b"payload")
    assert admin.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"payload"

    wrong = s3_server.client(secret_key=s3_server.secret_key + "x")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        wrong.get_object(Bucket=s3_server.bucket, Key=key)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert _error_code(info.value) == "SignatureDoesNotMatch"

    unknown = s3_server.client(access_key="AKNOSUCHKEY000000000")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        unknown.get_object(Bucket=s3_server.bucket, Key=key)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    anonymous = s3_server.client(anonymous=True)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        anonymous.get_object(Bucket=s3_server.bucket, Key=key)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_read_only_identity_cannot_write(s3_server):
    admin = s3_server.client()
    key = _unique("ro")
    admin.put_object(Bucket=s3_server.bucket, Key=key, Body=b"x")
    reader = s3_server.client(s3_server.read_only_access_key, s3_server.read_only_secret_key)
    assert reader.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"x"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        reader.put_object(Bucket=s3_server.bucket, Key=_unique("ro-put"), Body=b"y")
    assert _error_code(info.value) == "AccessDenied"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        reader.create_multipart_upload(Bucket=s3_server.bucket, Key=_unique("ro-mpu"))
    assert _error_code(info.value) == "AccessDenied"


def test_public_bucket_is_readable_anonymously_and_only_readable(s3_server):
    admin = s3_server.client()
    key = _unique("pub")
    admin.put_object(Bucket=s3_server.public_bucket, Key=key, Body=b"public bytes")
    anonymous = s3_server.client(anonymous=True)
    body = anonymous.get_object(Bucket=s3_server.public_bucket, Key=key, Range="bytes=7-11")
    assert body["Body"].read() == b"bytes"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        anonymous.put_object(Bucket=s3_server.public_bucket, Key=_unique("anon"), Body=b"z")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_reference_round_trip_through_the_server(s3_server, ref_python, ref_object, tmp_path):
    # The reference uploads (fixture) and downloads through its own S3 code.
    out = _run_ref(
        ref_python,
        _REF_DOWNLOAD,
        s3_server.bucket,
        ref_object,
        s3_server.access_key,
        s3_server.secret_key,
        s3_server.host_port,
    )
    assert out.split() == ["2.12.1", str(len(_payload()))]
    # And the bytes it uploaded load in our package from a local copy.
    local = tmp_path / "ref.tensors"
    s3_server.client().download_file(s3_server.bucket, ref_object, str(local))
    with TensorDeserializer(str(local), device="cpu") as d:
        _assert_same(d, _payload())


def test_reference_loads_our_file_put_with_boto3(s3_server, ref_python, local_file):
    key = _unique("ours-boto3")
    s3_server.client().upload_file(str(local_file), s3_server.bucket, key)
    out = _run_ref(
        ref_python,
        _REF_DOWNLOAD,
        s3_server.bucket,
        key,
        s3_server.access_key,
        s3_server.secret_key,
        s3_server.host_port,
    )
    assert out.split() == ["2.12.1", str(len(_payload()))]
