"""The S3 multipart sink against a real SeaweedFS (the `s3_server` fixture).

What the round-trip tests in test_s3.py do not pin down: host memory stays
bounded by the upload window rather than the model's size, raw bytes written
to an ``open_stream("s3://...", "wb")`` stream upload as written, an empty
stream makes an empty object, and a dropped stream publishes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from tensorizer import stream_io


def _opts(server) -> dict:
    return dict(
        s3_access_key_id=server.access_key,
        s3_secret_access_key=server.secret_key,
        s3_endpoint=server.endpoint_url,
        force_http=True,
    )


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}.bin"


def _object_bytes(server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _object_exists(server, bucket: str, key: str) -> bool:
    client = server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=key)
    return any(o["Key"] == key for o in listed.get("Contents", []))


def test_raw_bytes_written_to_an_s3_stream_upload_as_written(s3_server):
    key = _key("raw")
    chunks = [os.urandom(n) for n in (1, 3 << 20, 17 << 20, 5, 9 << 20)]
    with stream_io.open_stream(f"s3://{s3_server.bucket}/{key}", "wb", **_opts(s3_server)) as f:
        for c in chunks:
            assert f.write(c) == len(c)
        # Nothing is visible before close(): the multipart upload is open.
        assert not _object_exists(s3_server, s3_server.bucket, key)
    assert _object_bytes(s3_server, s3_server.bucket, key) == b"".join(chunks)


def test_parts_grow_so_any_size_fits_in_s3s_part_limit(s3_server):
    # 5 MiB parts doubling after every 2: 5, 5, 10, 10, 20 and an 11 MiB
    # tail hold 61 MiB in 6 parts (13 at a fixed 5 MiB). The multipart ETag
    # ends in "-<number of parts>".
    key = _key("tiers")
    data = os.urandom(61 << 20)
    upload = stream_io.S3UploadOptions(part_bytes=5 << 20, parts_per_size_step=2)
    uri = f"s3://{s3_server.bucket}/{key}"
    with stream_io.open_stream(uri, "wb", **_opts(s3_server), s3_upload_options=upload) as f:
        for i in range(0, len(data), 3 << 20):
            f.write(data[i : i + (3 << 20)])
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-6"), head["ETag"]
    assert _object_bytes(s3_server, s3_server.bucket, key) == data


def test_small_object_is_one_put_not_a_multipart_upload(s3_server):
    key = _key("small")
    data = os.urandom(1 << 20)
    with stream_io.open_stream(f"s3://{s3_server.bucket}/{key}", "wb", **_opts(s3_server)) as f:
        f.write(data)
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=key)
    assert "-" not in head["ETag"], head["ETag"]
    assert _object_bytes(s3_server, s3_server.bucket, key) == data
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket)
    assert not [u for u in uploads.get("Uploads", []) if u["Key"] == key]


def test_empty_s3_stream_makes_an_empty_object(s3_server):
    key = _key("empty")
    stream_io.open_stream(f"s3://{s3_server.bucket}/{key}", "wb", **_opts(s3_server)).close()
    assert _object_bytes(s3_server, s3_server.bucket, key) == b""


def test_s3_stream_closed_by_an_exception_publishes_nothing(s3_server):
    key = _key("aborted")
    uri = f"s3://{s3_server.scratch_bucket}/{key}"
    with (
        pytest.raises(RuntimeError, match="boom"),
        stream_io.open_stream(uri, "wb", **_opts(s3_server)) as f,
    ):
        f.write(os.urandom(12 << 20))
        raise RuntimeError("boom")
    assert not _object_exists(s3_server, s3_server.scratch_bucket, key)
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_server.scratch_bucket)
    assert not [u for u in uploads.get("Uploads", []) if u["Key"] == key]


def test_read_only_credentials_fail_the_upload_at_open(s3_server):
    uri = f"s3://{s3_server.bucket}/{_key('readonly')}"
    opts = dict(
        _opts(s3_server),
        s3_access_key_id=s3_server.read_only_access_key,
        s3_secret_access_key=s3_server.read_only_secret_key,
    )
    with pytest.raises(OSError) as info:
        stream_io.open_stream(uri, "wb", **opts).write(b"x")
    message = str(info.value)
    assert s3_server.read_only_access_key in message
    assert s3_server.read_only_secret_key not in message
    assert s3_server.bucket in message


# A fresh process serializes ~768 MiB of tensors to S3 and reports how much
# its peak RSS grew beyond the tensors themselves. A sink that buffered the
# object (or a temporary copy in memory) would grow by the model's size.
_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from tensorizer import TensorSerializer, stream_io
    uri, endpoint, key, secret = sys.argv[1:5]
    torch.manual_seed(0)
    tensors = {f"t{i}": torch.rand(12 << 20 >> 2) for i in range(64)}  # 64 x 12 MiB
    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    before = peak_mib()
    stream = stream_io.open_stream(uri, "wb", key, secret, endpoint, force_http=True)
    s = TensorSerializer(stream)
    s.write_state_dict(tensors)
    s.close()
    print(json.dumps({"growth_mib": peak_mib() - before,
                      "model_mib": sum(t.nbytes for t in tensors.values()) / 2**20}))
    """
)


def test_s3_upload_memory_is_bounded_by_the_upload_window(s3_server, tmp_path):
    key = _key("memory")
    script = tmp_path / "serialize.py"
    script.write_text(_MEMORY_SCRIPT)
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            f"s3://{s3_server.scratch_bucket}/{key}",
            s3_server.endpoint_url,
            s3_server.access_key,
            s3_server.secret_key,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    # The window: part 1, parts being filled (about two per writer thread),
    # up to 4 queued and 4 in flight, at 16 MiB each, plus the Python-side
    # batch and allocator slack. Far below the 768 MiB model.
    assert figures["model_mib"] == 768
    assert figures["growth_mib"] < 320, figures
    head = s3_server.client().head_object(Bucket=s3_server.scratch_bucket, Key=key)
    assert head["ContentLength"] > 768 << 20
