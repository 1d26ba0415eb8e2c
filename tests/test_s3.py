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

import concurrent.futures
import errno
import inspect
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import botocore.exceptions
import pytest
import torch
from fault_proxy import FaultProxy
from remote_common import assert_same, free_port, run_reference

from tensorizer import TensorDeserializer, TensorSerializer, stream_io

# Credentials and endpoints that must never be used: a test puts them in the
# places that should lose, so a load that succeeds proves which place won.
WRONG_KEY = "AKWRONGWRONGWRONG000"
WRONG_SECRET = "wrong-secret-never-used"


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


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}.tensors"


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _ref_env() -> dict:
    # Keep our package off the reference's path, and keep the machine's own
    # AWS settings out of its boto3.
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("AWS_")}


def _dead_endpoint() -> str:
    """host:port where nothing listens."""
    return f"127.0.0.1:{free_port()}"


def _list_uploads(client, bucket: str, key: str) -> list:
    res = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u for u in res.get("Uploads", []) if u["Key"] == key]


def _object_exists(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def _wait_for_upload(client, bucket: str, key: str, timeout_s: float = 10.0) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        uploads = _list_uploads(client, bucket, key)
        if uploads or time.monotonic() > deadline:
            return uploads
        time.sleep(0.05)


def _download_and_load(s3_server, bucket: str, key: str, tmp_path) -> dict:
    """Loads an uploaded object from a local copy made by boto3, so checks of
    what was uploaded do not depend on our S3 read path."""
    local = tmp_path / f"{key}.download"
    s3_server.client().download_file(bucket, key, str(local))
    with TensorDeserializer(str(local), device="cpu") as d:
        return {name: d[name].clone() for name in d}


def _run_ref(ref_python: str, script: str, *args: str) -> str:
    return run_reference(ref_python, script, inspect.getsource(_payload), *args, env=_ref_env())


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
        assert_same(d, _payload())


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


def test_session_credentials_from_the_servers_sts(s3_server):
    # The session-token tests below rely on this behaviour of the server.
    key = _unique("sts")
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"sts")
    access, secret, token = s3_server.session_credentials()
    with_token = s3_server.client(access, secret, aws_session_token=token)
    assert with_token.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"sts"
    without_token = s3_server.client(access, secret)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        without_token.get_object(Bucket=s3_server.bucket, Key=key)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # A static key with a token the server did not issue is refused too.
    foreign = s3_server.client(aws_session_token="not-a-token-this-server-issued")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        foreign.get_object(Bucket=s3_server.bucket, Key=key)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# --- our S3 support ---------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home directory of the test's own and no AWS_* variables, so the
    machine's ~/.aws, ~/.s3cfg and environment never matter."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture
def env_creds(home, monkeypatch, s3_server):
    """The admin's credentials and the endpoint in the AWS environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    return home


def _write_s3cfg(home, access: str, secret: str, host_base: str, use_https: bool = False):
    (home / ".s3cfg").write_text(
        "[default]\n"
        f"access_key = {access}\n"
        f"secret_key = {secret}\n"
        f"host_base = {host_base}\n"
        f"host_bucket = {host_base}\n"
        f"use_https = {use_https}\n"
    )


def _write_aws_files(home, credentials: dict, config: dict) -> None:
    """credentials: profile -> {key: value}; config: section -> text lines."""
    aws = home / ".aws"
    aws.mkdir(exist_ok=True)
    text = ""
    for profile, values in credentials.items():
        text += f"[{profile}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    (aws / "credentials").write_text(text)
    text = ""
    for section, body in config.items():
        text += f"[{section}]\n{textwrap.dedent(body).strip()}\n"
    (aws / "config").write_text(text)


def _wrong_aws_files(home) -> None:
    _write_aws_files(
        home,
        {"default": {"aws_access_key_id": WRONG_KEY, "aws_secret_access_key": WRONG_SECRET}},
        {"default": f"endpoint_url = http://{_dead_endpoint()}"},
    )


@pytest.fixture(scope="module")
def ours_object(s3_server, local_file):
    """Key (in s3_server.bucket) of our local file, put there with boto3."""
    key = _unique("ours")
    s3_server.client().upload_file(str(local_file), s3_server.bucket, key)
    return key


def _explicit_stream(s3_server, bucket: str, key: str, mode: str = "rb", **kwargs):
    return stream_io.open_stream(
        f"s3://{bucket}/{key}",
        mode,
        s3_access_key_id=kwargs.pop("access", s3_server.access_key),
        s3_secret_access_key=kwargs.pop("secret", s3_server.secret_key),
        s3_endpoint=kwargs.pop("endpoint", s3_server.host_port),
        force_http=kwargs.pop("force_http", True),
        **kwargs,
    )


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("num_readers", [1, 4])
@pytest.mark.parametrize("verify_hash", [False, True])
def test_loads_from_s3_bit_exact(s3_server, env_creds, ours_object, lazy, num_readers, verify_hash):
    with TensorDeserializer(
        f"s3://{s3_server.bucket}/{ours_object}",
        device="cpu",
        lazy_load=lazy,
        num_readers=num_readers,
        verify_hash=verify_hash,
    ) as d:
        assert_same(d, _payload())


@pytest.mark.parametrize("lazy", [False, True])
def test_filter_func_over_s3(s3_server, env_creds, ours_object, lazy):
    wanted = {"big", "layer.3.weight", "layer.4.bias", "scalar", "empty"}
    with TensorDeserializer(
        f"s3://{s3_server.bucket}/{ours_object}",
        device="cpu",
        lazy_load=lazy,
        num_readers=4,
        verify_hash=True,
        filter_func=wanted.__contains__,
    ) as d:
        assert_same(d, _payload(), wanted)


def test_open_stream_reads_seeks_and_loads(s3_server, home, ours_object, local_file):
    data = local_file.read_bytes()
    stream = _explicit_stream(s3_server, s3_server.bucket, ours_object)
    assert stream.readable()
    assert stream.read(5) == data[:5] == b"|TZR|"
    assert stream.tell() == 5
    assert stream.seek(1_000_000) == 1_000_000
    assert stream.read(4096) == data[1_000_000:1_004_096]
    assert stream.tell() == 1_004_096
    assert stream.seek(-100, io.SEEK_END) == len(data) - 100
    assert stream.read() == data[-100:]
    assert stream.read(10) == b""
    stream.seek(0)
    with TensorDeserializer(stream, device="cpu", num_readers=4, verify_hash=True) as d:
        assert_same(d, _payload())


def test_file_the_reference_uploaded_loads_in_ours(s3_server, home, ref_object):
    stream = _explicit_stream(s3_server, s3_server.bucket, ref_object)
    with TensorDeserializer(stream, device="cpu", num_readers=4, verify_hash=True) as d:
        assert_same(d, _payload())


# --- where credentials and the endpoint come from -------------------------


def test_credentials_from_explicit_arguments(s3_server, home, monkeypatch, ours_object):
    # Every other place holds wrong credentials and a dead endpoint.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRONG_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{_dead_endpoint()}")
    _write_s3cfg(home, WRONG_KEY, WRONG_SECRET, _dead_endpoint())
    _wrong_aws_files(home)
    stream = _explicit_stream(s3_server, s3_server.bucket, ours_object)
    with TensorDeserializer(stream, device="cpu") as d:
        assert_same(d, _payload())


def test_credentials_and_endpoint_from_s3cfg(s3_server, home, ours_object):
    # No AWS variables; ~/.aws holds wrong ones. use_https = False makes the
    # scheme-less host_base http.
    _write_s3cfg(home, s3_server.access_key, s3_server.secret_key, s3_server.host_port)
    _wrong_aws_files(home)
    with TensorDeserializer(f"s3://{s3_server.bucket}/{ours_object}", device="cpu") as d:
        assert_same(d, _payload())


def test_s3cfg_comes_before_the_environment(s3_server, home, monkeypatch, ours_object):
    # The order of src/storage/s3_config.h and of the reference (which reads
    # ~/.s3cfg and leaves the environment to boto3 only when it has none).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRONG_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{_dead_endpoint()}")
    _write_s3cfg(home, s3_server.access_key, s3_server.secret_key, s3_server.host_port)
    with TensorDeserializer(f"s3://{s3_server.bucket}/{ours_object}", device="cpu") as d:
        assert_same(d, _payload())


def test_credentials_and_endpoint_from_environment(s3_server, home, monkeypatch, ours_object):
    _wrong_aws_files(home)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    with TensorDeserializer(f"s3://{s3_server.bucket}/{ours_object}", device="cpu") as d:
        assert_same(d, _payload())


def test_aws_endpoint_url_s3_comes_before_aws_endpoint_url(
    s3_server, home, monkeypatch, ours_object
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{_dead_endpoint()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    with TensorDeserializer(f"s3://{s3_server.bucket}/{ours_object}", device="cpu") as d:
        assert_same(d, _payload())


def test_credentials_and_endpoint_from_aws_profile(s3_server, home, monkeypatch, ours_object):
    # The default profile is wrong everywhere; AWS_PROFILE picks the right one.
    _write_aws_files(
        home,
        {
            "default": {"aws_access_key_id": WRONG_KEY, "aws_secret_access_key": WRONG_SECRET},
            "tzr": {
                "aws_access_key_id": s3_server.access_key,
                "aws_secret_access_key": s3_server.secret_key,
            },
        },
        {
            "default": f"endpoint_url = http://{_dead_endpoint()}",
            "profile tzr": f"endpoint_url = {s3_server.endpoint_url}\nregion = {s3_server.region}",
        },
    )
    monkeypatch.setenv("AWS_PROFILE", "tzr")
    with TensorDeserializer(f"s3://{s3_server.bucket}/{ours_object}", device="cpu") as d:
        assert_same(d, _payload())


def test_default_profile_with_s3_section_endpoint(s3_server, home, ours_object):
    # The nested form boto3 documents: an `s3 =` block with its own
    # endpoint_url, which comes before the profile-wide one.
    _write_aws_files(
        home,
        {
            "default": {
                "aws_access_key_id": s3_server.access_key,
                "aws_secret_access_key": s3_server.secret_key,
            }
        },
        {
            "default": f"""
                endpoint_url = http://{_dead_endpoint()}
                s3 =
                    endpoint_url = {s3_server.endpoint_url}
                    addressing_style = path
            """
        },
    )
    with TensorDeserializer(f"s3://{s3_server.bucket}/{ours_object}", device="cpu") as d:
        assert_same(d, _payload())


def test_session_token_from_environment(s3_server, home, monkeypatch, ours_object):
    access, secret, token = s3_server.session_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    uri = f"s3://{s3_server.bucket}/{ours_object}"
    # The temporary key alone is refused: the token is what makes it work.
    with pytest.raises(OSError) as info:
        TensorDeserializer(uri, device="cpu")
    assert info.value.errno == errno.EACCES
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    with TensorDeserializer(uri, device="cpu", num_readers=4) as d:
        assert_same(d, _payload())


def test_session_token_from_aws_credentials_file(s3_server, home, ours_object):
    access, secret, token = s3_server.session_credentials()
    _write_aws_files(
        home,
        {
            "default": {
                "aws_access_key_id": access,
                "aws_secret_access_key": secret,
                "aws_session_token": token,
            }
        },
        {"default": f"endpoint_url = {s3_server.endpoint_url}"},
    )
    with TensorDeserializer(f"s3://{s3_server.bucket}/{ours_object}", device="cpu") as d:
        assert_same(d, _payload())


def test_anonymous_read_of_public_bucket(s3_server, home, monkeypatch, local_file):
    key = _unique("public")
    s3_server.client().upload_file(str(local_file), s3_server.public_bucket, key)
    # No credentials anywhere: requests go unsigned.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    with TensorDeserializer(f"s3://{s3_server.public_bucket}/{key}", device="cpu") as d:
        assert_same(d, _payload())
    # Empty explicit credentials mean anonymous too, as in the reference.
    stream = _explicit_stream(s3_server, s3_server.public_bucket, key, access="", secret="")
    with TensorDeserializer(stream, device="cpu", num_readers=4) as d:
        assert_same(d, _payload())
    # And anonymity is real: the private bucket refuses it.
    s3_server.client().upload_file(str(local_file), s3_server.bucket, key)
    with pytest.raises(OSError) as info:
        TensorDeserializer(f"s3://{s3_server.bucket}/{key}", device="cpu")
    assert info.value.errno == errno.EACCES


# --- endpoint schemes -------------------------------------------------------


def test_explicit_http_endpoint_needs_force_http(s3_server, home, ours_object):
    with pytest.raises(ValueError):
        _explicit_stream(
            s3_server,
            s3_server.bucket,
            ours_object,
            endpoint=s3_server.endpoint_url,
            force_http=None,
        )
    stream = _explicit_stream(
        s3_server, s3_server.bucket, ours_object, endpoint=s3_server.endpoint_url
    )
    with TensorDeserializer(stream, device="cpu") as d:
        assert_same(d, _payload())


def test_explicit_endpoint_without_scheme_is_https(s3_server, home, ours_object):
    # The server speaks plain HTTP, so the TLS handshake of an https request
    # to it fails; with force_http the same endpoint works (other tests).
    with pytest.raises(OSError) as info:
        stream = _explicit_stream(s3_server, s3_server.bucket, ours_object, force_http=None)
        TensorDeserializer(stream, device="cpu")
    assert re.search(r"ssl|tls|https", str(info.value), re.IGNORECASE), str(info.value)


def test_unreachable_endpoint_is_named(s3_server, home, ours_object):
    endpoint = _dead_endpoint()
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        stream = _explicit_stream(s3_server, s3_server.bucket, ours_object, endpoint=endpoint)
        TensorDeserializer(stream, device="cpu")
    assert time.monotonic() - start < 30.0
    # As "host:port" or in libcurl's words ("host port N").
    host, port = endpoint.split(":")
    assert host in str(info.value) and port in str(info.value), str(info.value)


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["explicit", "environment"])
def test_wrong_secret_is_a_fast_eacces_naming_everything_but_the_secret(
    s3_server, home, monkeypatch, ours_object, where
):
    secret = "tzr-wrong-secret-4c1f7e"
    uri = f"s3://{s3_server.bucket}/{ours_object}"
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        if where == "explicit":
            TensorDeserializer(
                _explicit_stream(s3_server, s3_server.bucket, ours_object, secret=secret),
                device="cpu",
            )
        else:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
            TensorDeserializer(uri, device="cpu")
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"a 403 took {elapsed:.1f} s: was it retried?"
    assert info.value.errno == errno.EACCES
    message = str(info.value)
    assert s3_server.host_port in message
    assert s3_server.bucket in message
    assert s3_server.access_key in message
    assert secret not in message


@pytest.mark.parametrize("missing", ["key", "bucket"])
def test_missing_object_is_enoent_naming_the_uri(s3_server, env_creds, missing):
    if missing == "key":
        uri = f"s3://{s3_server.bucket}/no/such/{_unique('key')}"
    else:
        uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x.tensors"
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        TensorDeserializer(uri, device="cpu")
    assert time.monotonic() - start < 5.0
    assert info.value.errno == errno.ENOENT
    assert uri in str(info.value)


# --- uploads --------------------------------------------------------------------


def _check_uploaded(s3_server, bucket: str, key: str, tmp_path) -> None:
    admin = s3_server.client()
    assert _list_uploads(admin, bucket, key) == []
    etag = admin.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    # A multipart object's ETag ends in "-<number of parts>".
    match = re.fullmatch(r"[0-9a-f]{32}-(\d+)", etag)
    assert match and int(match[1]) >= 2, etag
    assert_same(_download_and_load(s3_server, bucket, key, tmp_path), _payload())


def test_serializer_streams_a_multipart_upload_to_s3_uri(s3_server, env_creds, tmp_path):
    key = _unique("up-env")
    admin = s3_server.client()
    s = TensorSerializer(f"s3://{s3_server.bucket}/{key}")
    s.write_state_dict(_payload())
    # Streamed: the upload is under way before close(), and the object
    # does not exist until then.
    assert _wait_for_upload(admin, s3_server.bucket, key), "no multipart upload before close()"
    assert not _object_exists(admin, s3_server.bucket, key)
    s.close()
    _check_uploaded(s3_server, s3_server.bucket, key, tmp_path)
    # And it loads back through our S3 source.
    with TensorDeserializer(
        f"s3://{s3_server.bucket}/{key}", device="cpu", num_readers=4, verify_hash=True
    ) as d:
        assert_same(d, _payload())


def test_serializer_uploads_through_open_stream(s3_server, home, monkeypatch, tmp_path):
    # Explicit credentials win over wrong ones in the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRONG_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    key = _unique("up-stream")
    admin = s3_server.client()
    s = TensorSerializer(_explicit_stream(s3_server, s3_server.bucket, key, mode="wb"))
    s.write_state_dict(_payload())
    assert not _object_exists(admin, s3_server.bucket, key)
    s.close()
    _check_uploaded(s3_server, s3_server.bucket, key, tmp_path)


def test_reference_loads_a_file_we_uploaded(s3_server, home, ref_python):
    key = _unique("ours-for-ref")
    s = TensorSerializer(_explicit_stream(s3_server, s3_server.bucket, key, mode="wb"))
    s.write_state_dict(_payload())
    s.close()
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


def test_upload_with_session_token(s3_server, home, monkeypatch, tmp_path):
    access, secret, token = s3_server.session_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    key = _unique("up-sts")
    s = TensorSerializer(f"s3://{s3_server.bucket}/{key}")
    s.write_state_dict(_payload())
    s.close()
    _check_uploaded(s3_server, s3_server.bucket, key, tmp_path)


def test_read_only_identity_cannot_upload(s3_server, home):
    key = _unique("up-ro")
    with pytest.raises(OSError) as info:
        s = TensorSerializer(
            _explicit_stream(
                s3_server,
                s3_server.scratch_bucket,
                key,
                mode="wb",
                access=s3_server.read_only_access_key,
                secret=s3_server.read_only_secret_key,
            )
        )
        s.write_state_dict(_payload())
        s.close()
    assert info.value.errno == errno.EACCES
    assert s3_server.read_only_secret_key not in str(info.value)
    admin = s3_server.client()
    assert not _object_exists(admin, s3_server.scratch_bucket, key)
    assert _list_uploads(admin, s3_server.scratch_bucket, key) == []


def test_exception_mid_serialization_aborts_the_upload(s3_server, env_creds):
    # An exception inside the serializer's `with` block aborts the upload. (A
    # write_* call that only rejects its input leaves the serializer usable,
    # as in the reference, so it is not the abort trigger here.)
    key = _unique("up-error")
    admin = s3_server.client()
    with pytest.raises(RuntimeError, match="stop here"):
        with TensorSerializer(f"s3://{s3_server.scratch_bucket}/{key}") as s:
            s.write_state_dict(_payload())
            assert _wait_for_upload(admin, s3_server.scratch_bucket, key), "nothing was uploading"
            raise RuntimeError("stop here")
    assert not _object_exists(admin, s3_server.scratch_bucket, key)
    assert _list_uploads(admin, s3_server.scratch_bucket, key) == []


_KILLED_WRITER = textwrap.dedent(
    """\
    import sys, time
    import torch
    from tensorizer import TensorSerializer
    exec(sys.argv[1])
    s = TensorSerializer(sys.argv[2])
    s.write_state_dict(_payload())
    print("written", flush=True)
    time.sleep(120)
    s.close()
    """
)


def test_serializer_killed_mid_upload_leaves_no_object(s3_server, env_creds):
    key = _unique("up-killed")
    admin = s3_server.client()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_WRITER,
            inspect.getsource(_payload),
            f"s3://{s3_server.scratch_bucket}/{key}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "written", proc.stderr.read() if proc.poll() is not None else line
        assert _wait_for_upload(admin, s3_server.scratch_bucket, key), "nothing was uploading"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.5)  # any request in flight when it died has landed by now
    assert not _object_exists(admin, s3_server.scratch_bucket, key)


# --- many loaders, changing objects, faults ----------------------------------


def test_eight_concurrent_loaders_bit_exact(s3_server, env_creds, ours_object):
    uri = f"s3://{s3_server.bucket}/{ours_object}"
    expected = _payload()

    def load(i):
        with TensorDeserializer(uri, device="cpu", num_readers=2, lazy_load=bool(i % 2)) as d:
            assert_same(d, expected)
        return i

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(load, range(8))) == list(range(8))


def test_object_replaced_mid_load_is_an_error(s3_server, env_creds, tmp_path):
    first = {"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(2000)}
    second = {"a": -torch.arange(1000, dtype=torch.float32), "b": torch.zeros(2000)}
    paths = []
    for name, tensors in (("first", first), ("second", second)):
        path = tmp_path / f"{name}.tensors"
        s = TensorSerializer(str(path))
        s.write_state_dict(tensors)
        s.close()
        paths.append(path)
    assert paths[0].stat().st_size == paths[1].stat().st_size
    key = _unique("changing")
    admin = s3_server.client()
    admin.put_object(Bucket=s3_server.bucket, Key=key, Body=paths[0].read_bytes())
    uri = f"s3://{s3_server.bucket}/{key}"
    d = TensorDeserializer(uri, device="cpu", lazy_load=True)
    admin.put_object(Bucket=s3_server.bucket, Key=key, Body=paths[1].read_bytes())
    with pytest.raises(OSError) as info:
        d["a"]
    assert info.value.errno == errno.ESTALE
    assert uri in str(info.value)


def test_load_through_connections_cut_every_few_mib(s3_server, home, ours_object):
    with FaultProxy("127.0.0.1", s3_server.port) as proxy:
        proxy.cut_after_bytes = 3 << 20
        stream = _explicit_stream(
            s3_server, s3_server.bucket, ours_object, endpoint=f"127.0.0.1:{proxy.port}"
        )
        with TensorDeserializer(stream, device="cpu", num_readers=4, verify_hash=True) as d:
            assert_same(d, _payload())
        assert proxy.cuts >= 2, proxy.cuts


def test_burst_of_503s_is_retried(s3_server, home, ours_object):
    with FaultProxy("127.0.0.1", s3_server.port) as proxy:
        proxy.fail_503 = 4
        stream = _explicit_stream(
            s3_server, s3_server.bucket, ours_object, endpoint=f"127.0.0.1:{proxy.port}"
        )
        with TensorDeserializer(stream, device="cpu", num_readers=2, verify_hash=True) as d:
            assert_same(d, _payload())
        assert proxy.responses_503 == 4
        assert proxy.fail_503 == 0
