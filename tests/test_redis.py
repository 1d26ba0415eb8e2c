"""Loading .tensors files from Redis through the engine's RedisSource, and
TensorDeserializer.to_redis.

A real redis-server (Debian's redis-server) runs on a free loopback port.
What the reference tensorizer 2.12.1's to_redis writes must load bit-exact
in ours in every load mode; what our to_redis writes must be the same keys and
values the reference writes, and load in the reference and in ours. Also:
force, a missing prefix, a server that is down, connections killed while a
load is running, AUTH, overlapping keys, missing keys and keys that change
during a load.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import textwrap
import threading
import time

import pytest
import redis
import torch
from remote_common import (
    assert_same,
    free_port,
    payload,
    payload_source,
    run_reference,
    server_process,
)

from tensorizer import TensorDeserializer, TensorSerializer

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@contextlib.contextmanager
def _run_redis(directory, extra_config: str = ""):
    """A redis-server on a free loopback port for the with block; yields the port."""
    if not os.path.exists(REDIS_SERVER):
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    conf = directory / "redis.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            bind 127.0.0.1
            port {port}
            daemonize no
            save ""
            appendonly no
            dir {directory}
            logfile {directory}/redis.log
            """
        )
        + extra_config
    )
    with server_process([REDIS_SERVER, str(conf)], port, log_path=directory / "redis.log"):
        yield port


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    with _run_redis(tmp_path_factory.mktemp("redis")) as port:
        yield port


@pytest.fixture
def client(redis_port):
    c = redis.Redis(host="127.0.0.1", port=redis_port)
    yield c
    c.close()


# The reference builds the same tensors from payload_source(*_PAYLOAD).
_PAYLOAD = (4321, (3, 512, 1024))


def _payload() -> dict:
    return payload(*_PAYLOAD)


def _write_ours(path, tensors: dict) -> str:
    s = TensorSerializer(str(path))
    s.write_state_dict(tensors)
    s.close()
    return str(path)


def _keys(client, prefix: str) -> dict:
    """{key without the prefix: value} of every key under `prefix:`."""
    out = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        out[key.decode()[len(prefix) + 1 :]] = client.get(key)
    return out


# The reference writes a file with its own serializer and copies it to Redis
# with its own to_redis.
_REF_TO_REDIS = textwrap.dedent(
    """\
    import sys
    import redis
    import torch
    import tensorizer
    from tensorizer import TensorDeserializer, TensorSerializer
    exec(sys.argv[1])
    path, port, prefix = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    s = TensorSerializer(path)
    s.write_state_dict(_payload())
    s.close()
    d = TensorDeserializer(path, lazy_load=True)
    d.to_redis(redis.Redis(host="127.0.0.1", port=port), prefix)
    print(tensorizer.__version__)
    """
)


@pytest.fixture(scope="module")
def ref_prefix(redis_port, ref_python, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.tensors"
    out = run_reference(
        ref_python, _REF_TO_REDIS, payload_source(*_PAYLOAD), str(path), str(redis_port), "ref"
    )
    assert out.strip() == "2.12.1"
    return f"redis://127.0.0.1:{redis_port}/ref", path


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("num_readers", [1, 4])
@pytest.mark.parametrize("verify_hash", [False, True])
def test_reference_to_redis_loads_bit_exact(ref_prefix, lazy, num_readers, verify_hash):
    uri, _ = ref_prefix
    with TensorDeserializer(
        uri, device="cpu", lazy_load=lazy, num_readers=num_readers, verify_hash=verify_hash
    ) as d:
        assert_same(d, _payload())


@pytest.mark.parametrize("lazy", [False, True])
def test_reference_to_redis_with_filter_func(ref_prefix, lazy):
    uri, _ = ref_prefix
    wanted = {"layer.0.weight", "layer.0.bias", "scalar"}
    with TensorDeserializer(
        uri, device="cpu", lazy_load=lazy, num_readers=4, filter_func=wanted.__contains__
    ) as d:
        assert_same(d, _payload(), wanted)


def test_only_the_terminator_is_in_no_key(ref_prefix, client):
    # What the reference writes covers the file from byte 0 to the end of the
    # last record without a gap or an overlap; the 8-byte terminator is the
    # only part in no key (the source's size ends before it).
    _, path = ref_prefix
    extents = sorted(
        (int(k.rsplit(":", 1)[1]), len(v)) for k, v in _keys(client, "ref").items() if v
    )
    end = 0
    for offset, length in extents:
        assert offset == end
        end = offset + length
    data = path.read_bytes()
    assert end == len(data) - 8 and data[end:] == bytes(8)
    assert extents[0] == (0, 262217)


def test_our_to_redis_writes_the_reference_keys(ref_prefix, client):
    # Same file, same keys, same values: ours is the reference's layout.
    _, path = ref_prefix
    with TensorDeserializer(str(path), device="cpu", lazy_load=True) as d:
        d.to_redis(client, "ours-copy")
    assert _keys(client, "ours-copy") == _keys(client, "ref")


@pytest.fixture(scope="module")
def ours_prefix(redis_port, tmp_path_factory):
    path = _write_ours(tmp_path_factory.mktemp("ours") / "ours.tensors", _payload())
    c = redis.Redis(host="127.0.0.1", port=redis_port)
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        d.to_redis(c, "ours")
    c.close()
    return f"redis://127.0.0.1:{redis_port}/ours"


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("num_readers", [1, 4])
def test_our_to_redis_loads_in_ours(ours_prefix, lazy, num_readers):
    with TensorDeserializer(
        ours_prefix, device="cpu", lazy_load=lazy, num_readers=num_readers, verify_hash=True
    ) as d:
        assert_same(d, _payload())


# The reference reads a Redis prefix and saves what it loaded for us to
# compare.
_REF_LOAD = textwrap.dedent(
    """\
    import sys
    import torch
    from tensorizer import TensorDeserializer, stream_io
    uri, how, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if how == "open_stream":
        f = stream_io.open_stream(uri, "rb")
    else:
        f = stream_io.RedisStreamFile(uri)
    d = TensorDeserializer(f, device="cpu", verify_hash=True)
    torch.save({k: v.detach().clone() for k, v in d.items()}, out)
    """
)


def _no_empty_payload() -> dict:
    # The reference's RedisStreamFile sorts keys by offset only, so the empty
    # data key of a zero-length tensor and the next record's header key, which
    # share an offset, come out in SCAN order; when the empty one comes second
    # the reference reads an "empty header" (its own to_redis output fails the
    # same way under other key names). Files for the reference to read hold
    # no zero-length tensor.
    return {k: v for k, v in _payload().items() if v.numel() > 0}


@pytest.mark.parametrize("how", ["open_stream", "RedisStreamFile"])
def test_our_to_redis_loads_in_the_reference(how, ref_python, client, redis_port, tmp_path):
    path = _write_ours(tmp_path / "ours.tensors", _no_empty_payload())
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        d.to_redis(client, f"for-ref-{how}")
    out = tmp_path / "loaded.pt"
    run_reference(
        ref_python, _REF_LOAD, f"redis://127.0.0.1:{redis_port}/for-ref-{how}", how, str(out)
    )
    assert_same(torch.load(out), _no_empty_payload())


def _one(value: float) -> dict:
    return {"w": torch.full((4, 4), value), "b": torch.full((4,), value)}


def test_force(client, redis_port, tmp_path):
    # Same names and shapes, so the same keys; different values.
    first = _write_ours(tmp_path / "first.tensors", _one(1.0))
    second = _write_ours(tmp_path / "second.tensors", _one(2.0))
    with TensorDeserializer(first, device="cpu", lazy_load=True) as d:
        d.to_redis(client, "force")
    before = _keys(client, "force")
    client.set("force:header:0", b"stale")
    with TensorDeserializer(second, device="cpu", lazy_load=True) as d:
        d.to_redis(client, "force")
    after = _keys(client, "force")
    # force=False: the header key is written anyway, tensors whose header key
    # exists are left alone.
    assert after["header:0"] == before["header:0"] != b"stale"
    assert after == before
    uri = f"redis://127.0.0.1:{redis_port}/force"
    assert_same(TensorDeserializer(uri, device="cpu"), _one(1.0))
    with TensorDeserializer(second, device="cpu", lazy_load=True) as d:
        d.to_redis(client, "force", force=True)
    assert _keys(client, "force") != before
    assert_same(TensorDeserializer(uri, device="cpu"), _one(2.0))


def test_to_redis_needs_the_file_open(client, tmp_path):
    path = _write_ours(tmp_path / "m.tensors", _one(1.0))
    d = TensorDeserializer(path, device="cpu")  # eager: the file is closed after loading
    with pytest.raises(ValueError, match="closed"):
        d.to_redis(client, "closed")
    assert _keys(client, "closed") == {}


def test_to_redis_from_a_file_object(client, redis_port, tmp_path):
    path = _write_ours(tmp_path / "m.tensors", _one(3.0))
    with open(path, "rb") as f:
        TensorDeserializer(f, device="cpu", lazy_load=True).to_redis(client, "fileobj")
    assert_same(TensorDeserializer(f"redis://127.0.0.1:{redis_port}/fileobj"), _one(3.0))


def test_missing_keys_are_an_error_naming_the_range(client, redis_port, tmp_path):
    # to_redis after filter_func copies the selected tensors only (as the
    # reference does); the others' bytes are in no key, and reading them is an
    # error, never zeros. "empty" is the last record, so the keys still reach
    # the end of the file.
    path = _write_ours(tmp_path / "m.tensors", _payload())
    kept = {"scalar", "layer.0.bias", "empty"}
    with TensorDeserializer(path, device="cpu", lazy_load=True, filter_func=kept.__contains__) as d:
        d.to_redis(client, "partial")
    uri = f"redis://127.0.0.1:{redis_port}/partial"
    with TensorDeserializer(uri, device="cpu", filter_func=kept.__contains__) as d:
        assert_same(d, _payload(), kept)
    with (
        TensorDeserializer(uri, device="cpu", lazy_load=True) as d,
        pytest.raises(OSError) as info,
    ):
        d["big"]
    assert info.value.errno == errno.ENODATA
    message = str(info.value)
    assert uri in message and "in no key" in message and "bytes [" in message


def test_missing_last_records_fail_at_open(client, redis_port, tmp_path):
    # The file's size is where its last key ends, so records after it lie
    # outside the file: the index check names them, before any tensor is read.
    path = _write_ours(tmp_path / "m.tensors", _payload())
    with TensorDeserializer(
        path, device="cpu", lazy_load=True, filter_func={"big"}.__contains__
    ) as d:
        d.to_redis(client, "truncated")
    uri = f"redis://127.0.0.1:{redis_port}/truncated"
    with pytest.raises(ValueError, match="outside the file") as info:
        TensorDeserializer(uri, device="cpu", filter_func={"big"}.__contains__)
    assert uri in str(info.value)


def test_missing_prefix_is_an_oserror_naming_the_uri(redis_port):
    uri = f"redis://127.0.0.1:{redis_port}/no-such-prefix"
    with pytest.raises(OSError) as info:
        TensorDeserializer(uri, device="cpu")
    assert info.value.errno == errno.ENOENT
    assert uri in str(info.value)


def test_server_down_fails_quickly():
    uri = f"redis://127.0.0.1:{free_port()}/m"
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        TensorDeserializer(uri, device="cpu")
    # Six retries with the default backoff wait at most 0.1 + 0.2 + ... + 3.2 s.
    assert time.monotonic() - start < 8.0
    assert info.value.errno == errno.ECONNREFUSED
    assert uri in str(info.value)


def test_glob_characters_in_the_prefix_match_literally(client, redis_port, tmp_path):
    # Unescaped, "g[1]*" would also match "g1x:..." keys (and overlap them).
    a = _write_ours(tmp_path / "a.tensors", _one(5.0))
    b = _write_ours(tmp_path / "b.tensors", _one(6.0))
    with TensorDeserializer(a, device="cpu", lazy_load=True) as d:
        d.to_redis(client, "g[1]*")
    with TensorDeserializer(b, device="cpu", lazy_load=True) as d:
        d.to_redis(client, "g1x")
    assert_same(TensorDeserializer(f"redis://127.0.0.1:{redis_port}/g[1]*"), _one(5.0))


def test_overlapping_keys_are_rejected(client, redis_port, tmp_path):
    path = _write_ours(tmp_path / "m.tensors", _one(1.0))
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        d.to_redis(client, "overlap")
    client.set("overlap:stray:100", b"x" * 10)  # inside header:0
    uri = f"redis://127.0.0.1:{redis_port}/overlap"
    with pytest.raises(ValueError) as info:
        TensorDeserializer(uri, device="cpu")
    message = str(info.value)
    assert uri in message and "overlap:stray:100" in message and "overlap:header:0" in message


def test_key_changed_during_a_lazy_load_is_an_error(client, redis_port, tmp_path):
    path = _write_ours(tmp_path / "m.tensors", _one(1.0))
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        d.to_redis(client, "changing")
        data_key = f"changing:w:{d._entries[('w',)].data_offset}"
    uri = f"redis://127.0.0.1:{redis_port}/changing"
    with TensorDeserializer(uri, device="cpu", lazy_load=True) as d:
        client.set(data_key, b"short")
        with pytest.raises(OSError) as info:
            d["w"]
    assert info.value.errno == errno.ESTALE
    assert uri in str(info.value)


def test_connections_killed_mid_load_still_load_bit_exact(client, redis_port, tmp_path):
    g = torch.Generator().manual_seed(7)
    payload = {"huge": torch.randn(96, 1024, 1024, generator=g), "small": torch.arange(10)}
    path = _write_ours(tmp_path / "huge.tensors", payload)
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        d.to_redis(client, "killed")
    uri = f"redis://127.0.0.1:{redis_port}/killed"
    killer = redis.Redis(host="127.0.0.1", port=redis_port)
    kills = []
    loaded = {}
    errors = []

    def load():
        try:
            with TensorDeserializer(uri, device="cpu", lazy_load=True, num_readers=4) as d:
                loaded.update(d.items())
        except BaseException as exc:  # reported below
            errors.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    # Kill every connection in the middle of a GETRANGE reply (bytes of it
    # still in the server's output buffer), up to three times, while the load
    # is running: the readers must reconnect and resume.
    while loader.is_alive() and len(kills) < 3:
        busy = [
            c
            for c in killer.client_list(_type="normal")
            if c.get("cmd") == "getrange" and int(c.get("omem", 0)) > 0
        ]
        if busy:
            killed = sum(killer.client_kill_filter(_id=c["id"]) for c in busy)
            if killed and loader.is_alive():
                kills.append(killed)
                time.sleep(0.05)
    loader.join(timeout=120)
    killer.close()
    assert not errors, errors
    assert kills, "the load ended before any connection could be killed"
    assert_same(loaded, payload)


@pytest.fixture(scope="module")
def auth_port(tmp_path_factory):
    with _run_redis(
        tmp_path_factory.mktemp("redis-auth"),
        'requirepass "s3cret"\nuser alice on >al1ce ~* &* +@all\n',
    ) as port:
        yield port


@pytest.mark.parametrize("userinfo", [":s3cret", "default:s3cret", "alice:al1ce"])
def test_password_auth(auth_port, tmp_path, userinfo):
    user, password = userinfo.split(":")
    c = redis.Redis(host="127.0.0.1", port=auth_port, username=user or None, password=password)
    path = _write_ours(tmp_path / "m.tensors", _one(4.0))
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        d.to_redis(c, "secret")
    c.close()
    uri = f"redis://{userinfo}@127.0.0.1:{auth_port}/secret"
    assert_same(TensorDeserializer(uri, device="cpu", num_readers=2), _one(4.0))


@pytest.mark.parametrize("userinfo", ["", ":wrong", "alice:wrong"])
def test_bad_credentials_are_refused(auth_port, userinfo):
    at = f"{userinfo}@" if userinfo else ""
    uri = f"redis://{at}127.0.0.1:{auth_port}/secret"
    with pytest.raises(OSError) as info:
        TensorDeserializer(uri, device="cpu")
    assert info.value.errno == errno.EACCES
    message = str(info.value)
    assert f"127.0.0.1:{auth_port}/secret" in message
    assert "wrong" not in message  # never the password
