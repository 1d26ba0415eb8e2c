"""tensorizer.stream_io beside the reference's: open_stream for local
paths; CURLStreamFile and RedisStreamFile against a real nginx and
redis-server, step by step against the reference tensorizer 2.12.1 in its
own interpreter; s3_download, s3_upload and the s3:// write stream a
serializer takes over, against SeaweedFS; _infer_credentials; I/O errors as
the builtin OSError subclass of their errno; and the counters
(total_bytes_read, serialization.cpu_count) the reference reports.
"""

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import redis
import torch
from nginx_server import run_nginx
from remote_common import assert_same, free_port, run_reference
from test_redis import _run_redis

from tensorizer import TensorDeserializer, TensorSerializer, serialization, stream_io
from tensorizer._errors import TensorizerIOError


def test_write_mode_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "c.bin"
    with stream_io.open_stream(str(target), "wb") as f:
        f.write(b"0123456789")
    assert target.read_bytes() == b"0123456789"


def test_begin_seeks_and_pathlike_and_bytes_paths(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"0123456789")
    with stream_io.open_stream(target, "rb", begin=4) as f:
        assert f.read() == b"456789"
    with stream_io.open_stream(bytes(target), "rb") as f:
        assert f.read(3) == b"012"


def test_text_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="binary"):
        stream_io.open_stream(str(tmp_path / "t.txt"), "w")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:1/x.tensors", "redis://127.0.0.1:1/x"])
@pytest.mark.parametrize("mode", ["wb", "ab", "rb+"])
def test_read_only_remote_schemes_refuse_write_modes(uri, mode):
    with pytest.raises(ValueError, match='Only the mode "rb"'):
        stream_io.open_stream(uri, mode)


def test_s3_refuses_an_explicit_http_endpoint_without_force_http():
    # The reference's rule: an explicitly passed endpoint is https unless
    # force_http; it checks this before any request is made.
    with pytest.raises(ValueError, match="Non-HTTPS endpoint"):
        stream_io.open_stream("s3://b/k", "rb", "id", "secret", "http://127.0.0.1:1")


def test_s3_refuses_signature_versions_other_than_v4():
    with pytest.raises(ValueError, match="SigV4"):
        stream_io.open_stream(
            "s3://b/k", "rb", "id", "secret", "127.0.0.1:1", s3_signature_version="s3"
        )


def test_s3_missing_explicit_config_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="s3_config_path"):
        stream_io.open_stream("s3://b/k", "rb", s3_config_path=tmp_path / "missing.s3cfg")


def test_cainfo_takes_exactly_one_choice(tmp_path):
    with pytest.raises(ValueError, match="Exactly one"):
        stream_io.CAInfo()
    with pytest.raises(ValueError, match="Exactly one"):
        stream_io.CAInfo(capath=str(tmp_path), allow_untrusted=True)
    with pytest.raises(ValueError, match="cacert"):
        stream_io.CAInfo(cacert=str(tmp_path / "missing.pem"))
    assert stream_io.CAInfo(capath=str(tmp_path)).curl_flags == ("--capath", str(tmp_path))


def test_unreachable_remote_is_an_os_error_naming_the_url():
    with pytest.raises(OSError, match=r"http://127\.0\.0\.1:1/x\.tensors"):
        stream_io.open_stream("http://127.0.0.1:1/x.tensors", "rb")


# --- CURLStreamFile and RedisStreamFile, side by side with the reference ----
#
# The same scenario script runs under the reference's interpreter and ours:
# every step's result (or exception type) must be the same.

_HTTP_SCENARIO = textwrap.dedent(
    """\
    import io, json, sys
    from tensorizer import TensorDeserializer, stream_io
    url, tensors_url = sys.argv[1], sys.argv[2]
    CURL = stream_io.CURLStreamFile
    out = {}

    def step(name, fn):
        try:
            out[name] = repr(fn())
        except Exception as e:
            out[name] = [type(e).__name__, isinstance(e, ValueError), isinstance(e, OSError)]

    step("read", lambda: CURL(url).read(9))
    step("begin", lambda: CURL(url, begin=2).read(7))
    step("end", lambda: CURL(url, end=2).read(5))
    step("begin_end_all", lambda: CURL(url, begin=2, end=9).read())
    step("begin_end_more", lambda: CURL(url, begin=2, end=9).read(100))

    def past_end():
        s = CURL(url, begin=2, end=9)
        return s.read(), s.read(), s.read(3), s.tell()
    step("past_end", past_end)

    def readinto_end():
        s = CURL(url, end=2)
        buffer = bytearray(5)
        return s.readinto(buffer), bytes(buffer)
    step("readinto_end", readinto_end)

    def seeks():
        s = CURL(url)
        s.seek(2)
        a = s.read(7)
        s.seek(6)
        b = s.read(4)
        s.seek(13)
        c = s.read(5)
        s.seek(3, io.SEEK_CUR)
        return a, b, c, s.read(2), s.tell()
    step("seeks", seeks)

    def counters():
        s = CURL(url)
        s.read(9)
        s.read(5)
        return (s.bytes_read, s.read_operations, len(s.popen_latencies),
                len(s.http_response_latencies))
    step("counters", counters)
    for begin, end in [(-1, None), (None, -1), (-2, -1), (10, 5), (5, 5), (None, 0)]:
        step(f"range {begin} {end}", lambda: CURL(url, begin=begin, end=end))

    def kinds():
        s = stream_io.open_stream(url)
        return (type(s).__name__, isinstance(s, CURL), isinstance(s, io.BufferedIOBase),
                s.readable(), s.seekable(), s.writable(), s.fileno())
    step("kinds", kinds)
    step("readline", lambda: CURL(url).readline())
    step("header", lambda: CURL(url).response_headers.get("x-cache-status"))
    step("cache_status", lambda: TensorDeserializer(tensors_url, lazy_load=True).cache_status)
    step("cache_status_stream",
         lambda: TensorDeserializer(CURL(tensors_url), lazy_load=True).cache_status)
    step("missing", lambda: CURL(url + ".missing"))

    def stream_bytes_read():
        s = CURL(tensors_url)
        d = TensorDeserializer(s, device="cpu", num_readers=1)
        return d.total_bytes_read, len(d)
    step("total_bytes_read", stream_bytes_read)
    print(json.dumps(out))
    """
)

_REDIS_SCENARIO = textwrap.dedent(
    """\
    import io, json, sys
    from tensorizer import stream_io
    uri, sizes = sys.argv[1], json.loads(sys.argv[2])
    out = {}

    def step(name, fn):
        try:
            out[name] = repr(fn())
        except Exception as e:
            out[name] = [type(e).__name__, isinstance(e, ValueError), isinstance(e, OSError)]

    def reads():
        s = stream_io.open_stream(uri, "rb")
        first = s.read(1024)
        s.seek(0)
        whole_key = s.read(sizes[0])
        s.seek(sizes[0] - 16)
        tail = s.read(16)
        s.seek(sizes[0] - 16)
        spanning = s.read(1024)
        s.seek(0)
        everything = s.read(sum(sizes))
        # The reference's read() returns bytearrays here; ours, bytes.
        data = [bytes(b) for b in (first, whole_key, tail, spanning, everything)]
        return (*data, s.tell(), s.bytes_read)
    step("reads", reads)

    def begin():
        s = stream_io.RedisStreamFile(uri, begin=sizes[0] + 3)
        return bytes(s.read(10)), s.tell()
    step("begin", begin)

    def readinto():
        s = stream_io.RedisStreamFile(uri)
        buffer = bytearray(sizes[0] + 8)
        return s.readinto(buffer), bytes(buffer)
    step("readinto", readinto)

    def kinds():
        s = stream_io.open_stream(uri, "rb")
        return (type(s).__name__, isinstance(s, io.BufferedIOBase), s.readable(),
                s.seekable(), s.writable(), s.fileno(), type(s.setup_latency).__name__,
                type(s.response_latencies).__name__)
    step("kinds", kinds)
    step("readline", lambda: stream_io.RedisStreamFile(uri).readline())
    print(json.dumps(out))
    """
)


def _run_ours(script: str, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout


def _both(ref_python: str, script: str, *args: str) -> tuple:
    ref = json.loads(run_reference(ref_python, script, *args))
    ours = json.loads(_run_ours(script, *args))
    return ref, ours


_TEXT = b"# GPT Neo\n\n[DOI] " + bytes(range(256)) * 40


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """Base URL of an nginx serving neo.md (_TEXT) and small.tensors, with an
    X-Cache-Status header on every response, as an HTTP cache in front of a
    model store sends."""
    root = tmp_path_factory.mktemp("nginx-streams")
    with run_nginx(root, "add_header X-Cache-Status HIT always;") as port:
        served = root / "www"
        (served / "neo.md").write_bytes(_TEXT)
        s = TensorSerializer(str(served / "small.tensors"))
        s.write_state_dict(_small_state())
        s.close()
        yield f"http://127.0.0.1:{port}"


def _small_state() -> dict:
    g = torch.Generator().manual_seed(7)
    return {f"t{i}": torch.randn(100 + 50 * i, generator=g) for i in range(6)}


def test_curl_stream_file_behaves_as_the_references(nginx, ref_python):
    ref, ours = _both(ref_python, _HTTP_SCENARIO, f"{nginx}/neo.md", f"{nginx}/small.tensors")
    # A 404 is an OSError in both; ours is the FileNotFoundError of ENOENT.
    assert ref.pop("missing") == ["OSError", False, True]
    assert ours.pop("missing") == ["TensorizerFileNotFoundError", False, True]
    assert ours == ref
    # What the comparison covers, so a scenario that fails the same way on
    # both sides cannot pass unnoticed.
    assert ours["read"] == repr(_TEXT[:9])
    assert ours["seeks"] == repr((_TEXT[2:9], _TEXT[6:10], _TEXT[13:18], _TEXT[21:23], 23))
    assert ours["readinto_end"] == repr((2, _TEXT[:2] + bytes(3)))
    assert all(ours[f"range {b} {e}"][:2] == ["ValueError", True] for b, e in
               [(-1, None), (None, -1), (-2, -1), (10, 5), (5, 5), (None, 0)])
    assert ours["header"] == ours["cache_status"] == ours["cache_status_stream"] == repr("HIT")
    assert ours["kinds"] == repr(("CURLStreamFile", True, True, True, True, False, -1))


def test_redis_stream_file_behaves_as_the_references(ref_python, tmp_path):
    sizes = [1500, 1200, 700]
    values = [os.urandom(n) for n in sizes]
    with _run_redis(tmp_path) as port:
        client = redis.Redis(host="127.0.0.1", port=port)
        offset = 0
        for name, value in zip("abc", values):
            client.set(f"t:{name}:{offset}", value)
            offset += len(value)
        client.close()
        ref, ours = _both(
            ref_python, _REDIS_SCENARIO, f"redis://127.0.0.1:{port}/t", json.dumps(sizes)
        )
    assert ours == ref
    data = b"".join(values)
    assert ours["reads"] == repr(
        (data[:1024], data[:1500], data[1484:1500], data[1484:2508], data, len(data), 6964)
    )
    assert ours["begin"] == repr((data[1503:1513], 1513))
    assert ours["kinds"] == repr(
        ("RedisStreamFile", True, True, True, False, -1, "float", "list")
    )


def test_stream_reads_readinto_read1_and_seek_as_io_streams_do(nginx):
    url = f"{nginx}/neo.md"
    s = stream_io.CURLStreamFile(url, begin=5, end=105)
    assert s.tell() == 5
    assert s.read1(10) == _TEXT[5:15]
    assert s.read1() == _TEXT[15:105]  # one request, up to the end
    assert s.read1() == b""
    assert s.seek(-20, io.SEEK_END) == 85
    view = memoryview(bytearray(8))
    assert s.readinto(view) == 8 and view.tobytes() == _TEXT[85:93]
    assert s.seek(50) == 50 and s.bytes_skipped == 0
    assert s.seek(10, io.SEEK_CUR) == 60 and s.bytes_skipped == 10
    assert s.read(-1) == _TEXT[60:105]
    with pytest.raises(ValueError, match="negative seek"):
        s.seek(-1)
    s.close()
    assert s.closed
    with pytest.raises(ValueError):
        s.read(1)
    # A stream wrapped for small reads, as io.BufferedReader expects.
    with io.BufferedReader(stream_io.CURLStreamFile(url), buffer_size=64) as buffered:
        assert buffered.read(3) == _TEXT[:3] and buffered.read(100) == _TEXT[3:103]


def test_latencies_are_measured(nginx, tmp_path):
    s = stream_io.CURLStreamFile(f"{nginx}/neo.md")
    assert len(s.http_response_latencies) == 1 and s.http_response_latencies[0] > 0
    assert s.popen_latencies == [0.0]  # no process is started
    with _run_redis(tmp_path) as port:
        client = redis.Redis(host="127.0.0.1", port=port)
        client.set("p:x:0", b"abcdef")
        client.close()
        r = stream_io.RedisStreamFile(f"redis://127.0.0.1:{port}/p")
        assert r.setup_latency > 0 and r.response_latencies == []
        assert r.read(4) == b"abcd" and r.read(9) == b"ef"
        assert len(r.response_latencies) == 2 and min(r.response_latencies) > 0


def test_cache_status_is_none_without_the_header(tmp_path):
    path = tmp_path / "local.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict(_small_state())
    s.close()
    assert TensorDeserializer(str(path), lazy_load=True).cache_status is None


# --- I/O errors: the builtin OSError subclass of their errno ----------------

_REF_LOCAL_ERRORS = textwrap.dedent(
    """\
    import json, sys
    from tensorizer import TensorDeserializer
    out = []
    for path in sys.argv[1:]:
        try:
            TensorDeserializer(path, device="cpu")
        except Exception as e:
            out.append([c.__name__ for c in type(e).__mro__ if c.__module__ == "builtins"])
    print(json.dumps(out))
    """
)


def test_local_errors_are_the_builtin_oserror_the_reference_raises(tmp_path, ref_python):
    paths = [str(tmp_path / "missing.tensors"), str(tmp_path)]
    ref = json.loads(run_reference(ref_python, _REF_LOCAL_ERRORS, *paths))
    assert ref[0][0] == "FileNotFoundError" and ref[1][0] == "IsADirectoryError"
    for path, builtins in zip(paths, ref):
        with pytest.raises(OSError) as info:
            TensorDeserializer(path, device="cpu")
        assert isinstance(info.value, TensorizerIOError)
        assert [c.__name__ for c in type(info.value).__mro__ if c.__module__ == "builtins"] == (
            builtins
        )
        assert path in str(info.value)
    with pytest.raises(IsADirectoryError) as info:
        TensorSerializer(str(tmp_path))
    assert isinstance(info.value, TensorizerIOError) and info.value.errno == errno.EISDIR


def test_refused_connections_are_connection_refused_errors():
    port = free_port()
    dead = f"127.0.0.1:{port}"
    no_retries = stream_io.HttpOptions(max_retries=0)
    attempts = [
        lambda: stream_io.open_stream(f"http://{dead}/x.tensors", http_options=no_retries),
        lambda: stream_io.open_stream(f"redis://{dead}/prefix"),
        lambda: stream_io.open_stream(
            "s3://bucket/key", "rb", "id", "secret", f"http://{dead}", force_http=True,
            http_options=no_retries,
        ),
        lambda: TensorDeserializer(f"http://{dead}/x.tensors"),
    ]
    for attempt in attempts:
        with pytest.raises(ConnectionRefusedError) as info:
            attempt()
        assert isinstance(info.value, TensorizerIOError)
        assert info.value.errno == errno.ECONNREFUSED
        assert str(port) in str(info.value)


def test_errors_pickle_as_their_class():
    import pickle

    with pytest.raises(OSError) as info:
        TensorDeserializer("/nonexistent/dir/x.tensors")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value) and isinstance(copy, FileNotFoundError)
    assert str(copy) == str(info.value)


# --- counters the reference reports ----------------------------------------

_COUNTERS = textwrap.dedent(
    """\
    import json, os, sys
    from tensorizer import TensorDeserializer, TensorSerializer
    from tensorizer import serialization
    path = sys.argv[1]
    out = {"cpu_count": serialization.cpu_count}
    out["cpu_limit"] = TensorSerializer(sys.argv[2]).cpu_limit
    for nr in (1, 4):
        d = TensorDeserializer(path, device="cpu", num_readers=nr)
        out[f"eager {nr}"] = d.total_bytes_read
        d = TensorDeserializer(path, device="cpu", lazy_load=True, num_readers=nr)
        seen = [d.total_bytes_read]
        for key in ("t0", "t3", "t4", "t5"):
            d[key]
            seen.append(d.total_bytes_read)
        d["t3"]  # already read: no move
        seen.append(d.total_bytes_read)
        d.close()
        seen.append(d.total_bytes_read)
        out[f"lazy {nr}"] = seen
        with open(path, "rb") as f:
            d = TensorDeserializer(f, device="cpu", lazy_load=True, num_readers=nr)
            first = d.total_bytes_read
            list(d.read_tensors())
            out[f"file object {nr}"] = [first, d.total_bytes_read]
    import torch
    m = torch.nn.Module()
    for i in range(6):
        m.register_buffer(f"t{i}", torch.zeros(100 + 50 * i))
    module_path = sys.argv[3]
    if not os.path.exists(module_path):
        s = TensorSerializer(module_path)
        s.write_module(m)
        s.close()
    d = TensorDeserializer(module_path, device="cpu", lazy_load=True)
    d.load_into_module(m)
    out["load_into_module"] = d.total_bytes_read
    print(json.dumps(out))
    """
)


def test_total_bytes_read_and_cpu_count_are_the_references(tmp_path, ref_python):
    path = tmp_path / "small.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict(_small_state())
    s.close()
    # The reference writes the module file; both load it.
    module_path = str(tmp_path / "module.tensors")
    ref = json.loads(
        run_reference(ref_python, _COUNTERS, str(path), str(tmp_path / "r.tensors"), module_path)
    )
    ours = json.loads(_run_ours(_COUNTERS, str(path), str(tmp_path / "o.tensors"), module_path))
    assert ours == ref
    assert serialization.cpu_count == ref["cpu_count"] == ref["cpu_limit"]
    tensor_bytes = sum(t.numel() * 4 for t in _small_state().values())
    # Eager: the file is closed, and tensorizer reports the tensor bytes.
    assert ours["eager 1"] == tensor_bytes
    # Lazy: the header and index, then the position after each tensor read.
    assert ours["lazy 1"][0] == 262217 and ours["lazy 1"][-1] == tensor_bytes


def test_total_bytes_read_of_a_stream_counts_the_loads(nginx):
    s = stream_io.CURLStreamFile(f"{nginx}/small.tensors")
    s.read(5)
    s.seek(0)
    d = TensorDeserializer(s, device="cpu", lazy_load=True)
    assert s.bytes_read == 5 + 262217 == d.total_bytes_read
    d["t0"]
    assert d.total_bytes_read == s.bytes_read > 5 + 262217 + 400
    d.close()
    assert d.total_bytes_read == s.bytes_read


# --- S3: s3_download, s3_upload, the write stream a serializer takes over ---


def _s3_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}.tensors"


def _s3_exists(server, bucket: str, key: str) -> bool:
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix=key)
    return any(o["Key"] == key for o in listed.get("Contents", []))


def _s3_pending_uploads(server, bucket: str, key: str) -> list:
    res = server.client().list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u for u in res.get("Uploads", []) if u["Key"] == key]


def _s3_write_stream(server, bucket: str, key: str):
    return stream_io.open_stream(
        f"s3://{bucket}/{key}",
        "wb",
        s3_access_key_id=server.access_key,
        s3_secret_access_key=server.secret_key,
        s3_endpoint=server.endpoint_url,
        force_http=True,
    )


def _big_state() -> dict:
    # 24 MiB: a multipart upload of several parts.
    g = torch.Generator().manual_seed(11)
    return {"big": torch.randn(6 << 20, generator=g), **_small_state()}


def _s3_load(server, bucket: str, key: str) -> dict:
    stream = stream_io.s3_download(
        f"s3://{bucket}/{key}", server.access_key, server.secret_key, server.endpoint_url
    )
    with TensorDeserializer(stream, device="cpu") as d:
        return {k: v.clone() for k, v in d.items()}


# The vLLM pattern: the serializer is never closed; the stream's with-block
# closes the stream. (argv: bucket, key, access key, secret, endpoint URL.)
_REF_UNCLOSED_SERIALIZER = textwrap.dedent(
    """\
    import sys
    import torch
    from tensorizer import TensorSerializer, stream_io
    bucket, key, access, secret, endpoint = sys.argv[1:6]
    with stream_io.open_stream(
        f"s3://{bucket}/{key}", "wb", access, secret, endpoint, force_http=True
    ) as f:
        s = TensorSerializer(f)
        s.write_state_dict({"w": torch.arange(10.0)})
    """
)


def test_closing_a_taken_over_s3_stream_completes_the_upload(s3_server, ref_python):
    bucket = s3_server.scratch_bucket
    # The reference publishes the object in this pattern...
    ref_key = _s3_key("ref-unclosed")
    run_reference(
        ref_python,
        _REF_UNCLOSED_SERIALIZER,
        bucket,
        ref_key,
        s3_server.access_key,
        s3_server.secret_key,
        s3_server.endpoint_url,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k[:4] != "AWS_"},
    )
    assert _s3_exists(s3_server, bucket, ref_key)
    # ...and so do we, with a multipart upload of several parts.
    key = _s3_key("unclosed")
    with _s3_write_stream(s3_server, bucket, key) as f:
        serializer = TensorSerializer(f)
        serializer.write_state_dict(_big_state())
        assert not _s3_exists(s3_server, bucket, key)
    assert f.closed
    assert _s3_exists(s3_server, bucket, key)
    assert _s3_pending_uploads(s3_server, bucket, key) == []
    assert_same(_s3_load(s3_server, bucket, key), _big_state())
    serializer.close()  # closing it afterwards changes nothing
    assert_same(_s3_load(s3_server, bucket, key), _big_state())


def test_an_exception_in_the_streams_block_publishes_nothing(s3_server):
    bucket = s3_server.scratch_bucket
    key = _s3_key("unclosed-error")
    with pytest.raises(RuntimeError, match="stop"):
        with _s3_write_stream(s3_server, bucket, key) as f:
            serializer = TensorSerializer(f)
            serializer.write_state_dict(_big_state())
            raise RuntimeError("stop")
    assert not _s3_exists(s3_server, bucket, key)
    assert _s3_pending_uploads(s3_server, bucket, key) == []
    serializer.close()  # aborted: closing it later publishes nothing either
    assert not _s3_exists(s3_server, bucket, key)


def test_s3_download_and_upload(s3_server, tmp_path):
    local = tmp_path / "up.bin"
    data = os.urandom((17 << 20) + 5)  # more than one 16 MiB read of the file
    local.write_bytes(data)
    key = _s3_key("s3-upload")
    uri = f"s3://{s3_server.bucket}/{key}"
    args = (s3_server.access_key, s3_server.secret_key, s3_server.endpoint_url)
    stream_io.s3_upload(str(local), uri, *args)
    got = s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    assert got == data
    stream = stream_io.s3_download(uri, *args, begin=10, end=30)
    assert isinstance(stream, stream_io.CURLStreamFile)
    assert stream.read() == data[10:30]
    opened = stream_io.open_stream(uri, "rb", *args[:2], s3_server.host_port, force_http=True)
    assert isinstance(opened, stream_io.CURLStreamFile) and opened.read(7) == data[:7]
    # The default endpoints are AWS's: no vendor's.
    assert stream_io.default_s3_read_endpoint == stream_io.default_s3_write_endpoint
    assert stream_io.default_s3_read_endpoint.endswith(".amazonaws.com")


def test_s3_upload_refused_publishes_nothing(s3_server, tmp_path):
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(1 << 20))
    key = _s3_key("s3-upload-ro")
    with pytest.raises(PermissionError) as info:
        stream_io.s3_upload(
            str(local),
            f"s3://{s3_server.scratch_bucket}/{key}",
            s3_server.read_only_access_key,
            s3_server.read_only_secret_key,
            s3_server.endpoint_url,
        )
    assert isinstance(info.value, TensorizerIOError)
    assert s3_server.read_only_secret_key not in str(info.value)
    assert not _s3_exists(s3_server, s3_server.scratch_bucket, key)


# --- _infer_credentials ---------------------------------------------------

_REF_INFER = textwrap.dedent(
    """\
    import json, sys
    from tensorizer import stream_io
    out = []
    for case in json.loads(sys.argv[1]):
        try:
            out.append(list(stream_io._infer_credentials(*case)))
        except Exception as e:
            out.append(type(e).__name__)
    print(json.dumps(out))
    """
)


def test_infer_credentials_as_the_reference(tmp_path, ref_python):
    full = tmp_path / "full.s3cfg"
    full.write_text(
        "[default]\naccess_key = AK\nsecret_key = SK\nhost_base = s3.example:9000\n"
        "use_https = False\n"
    )
    half = tmp_path / "half.s3cfg"
    half.write_text("[default]\naccess_key = AK2\n")
    other = tmp_path / "other.s3cfg"
    other.write_text("[other]\naccess_key = AK3\nsecret_key = SK3\n")
    cases = [
        ["id", "secret", None],
        ["", "", None],
        [None, None, str(full)],
        ["mine", None, str(full)],
        [None, None, str(half)],
        [None, None, str(other)],
        [None, None, str(tmp_path / "missing.s3cfg")],
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HOME"] = str(tmp_path)  # no ~/.s3cfg
    ref = json.loads(run_reference(ref_python, _REF_INFER, json.dumps(cases), env=env))
    ours = []
    for case in cases:
        try:
            ours.append(list(stream_io._infer_credentials(*case)))
        except Exception as e:
            ours.append(type(e).__name__)
    assert ours == ref
    assert ours[2] == [str(full), "s3.example:9000", "AK", "SK", False]
    assert ours[4:] == ["ValueError", "ValueError", "FileNotFoundError"]
