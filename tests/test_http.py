"""Loading .tensors files over HTTP through the engine's HttpSource.

A real nginx (Debian's nginx-light) serves a temporary directory on a free
loopback port; files written by our serializer and by the reference
tensorizer 2.12.1 must load from it bit-exact in every load mode. Also: a
missing object fails at once with an OSError naming the URL, an object
replaced during a lazy load is an error rather than a mix of two versions,
and a server that ignores Range (Python's http.server) still works.
"""

from __future__ import annotations

import errno
import functools
import http.server
import inspect
import os
import re
import shutil
import socket
import subprocess
import textwrap
import threading
import time

import pytest
import torch

from tensorizer import TensorDeserializer, TensorSerializer

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nginx did not listen on port {port} within {timeout_s} s")


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """(base URL, served directory) of an nginx on loopback."""
    if not os.path.exists(NGINX):
        pytest.fail("nginx is not installed (apt-get install nginx-light)")
    root = tmp_path_factory.mktemp("nginx")
    served = root / "www"
    served.mkdir()
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / sub).mkdir()
    port = _free_port()
    conf = root / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            daemon off;
            master_process on;
            worker_processes 2;
            # pytest's temporary directories are private to root.
            user root;
            pid {root}/nginx.pid;
            error_log {root}/error.log warn;
            events {{ worker_connections 256; }}
            http {{
                access_log {root}/access.log;
                client_body_temp_path {root}/client_body;
                proxy_temp_path {root}/proxy;
                fastcgi_temp_path {root}/fastcgi;
                uwsgi_temp_path {root}/uwsgi;
                scgi_temp_path {root}/scgi;
                sendfile on;
                tcp_nopush on;
                keepalive_requests 10000;
                default_type application/octet-stream;
                server {{
                    listen 127.0.0.1:{port};
                    root {served};
                }}
            }}
            """
        )
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, proc)
    except RuntimeError as exc:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{exc}: {err.decode(errors='replace')}")
    yield f"http://127.0.0.1:{port}", served
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _payload() -> dict:
    g = torch.Generator().manual_seed(1234)
    return {
        # Big enough that num_readers=4 splits the data into several ranges.
        "big": torch.randn(3, 1024, 1024, generator=g),
        "layer.0.weight": torch.randn(64, 33, generator=g).to(torch.float16),
        "layer.0.bias": torch.arange(33, dtype=torch.int64),
        "layer.1.weight": torch.randn(17, 5, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(7, dtype=torch.int32),
        "empty": torch.zeros(0, 4),
    }


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


@pytest.fixture(scope="module")
def ours_url(nginx):
    base, served = nginx
    s = TensorSerializer(str(served / "ours.tensors"))
    s.write_state_dict(_payload())
    s.close()
    return f"{base}/ours.tensors"


_REF_WRITE = textwrap.dedent(
    """\
    import sys
    import torch
    import tensorizer
    from tensorizer import TensorSerializer
    exec(sys.argv[1])
    s = TensorSerializer(sys.argv[2])
    s.write_state_dict(_payload())
    s.close()
    print(tensorizer.__version__)
    """
)


@pytest.fixture(scope="module")
def ref_url(nginx, ref_python):
    base, served = nginx
    out = served / "ref.tensors"
    res = subprocess.run(
        [ref_python, "-c", _REF_WRITE, inspect.getsource(_payload), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        # Keep our package off the reference's path.
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "2.12.1"
    return f"{base}/ref.tensors"


@pytest.mark.parametrize("writer", ["ours", "ref"])
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("num_readers", [1, 4])
@pytest.mark.parametrize("verify_hash", [False, True])
def test_loads_over_http_bit_exact(request, writer, lazy, num_readers, verify_hash):
    url = request.getfixturevalue(f"{writer}_url")
    with TensorDeserializer(
        url, device="cpu", lazy_load=lazy, num_readers=num_readers, verify_hash=verify_hash
    ) as d:
        _assert_same(d, _payload())


@pytest.mark.parametrize("writer", ["ours", "ref"])
@pytest.mark.parametrize("lazy", [False, True])
def test_filter_func_over_http(request, writer, lazy):
    url = request.getfixturevalue(f"{writer}_url")
    wanted = {"layer.0.weight", "layer.0.bias", "scalar"}
    with TensorDeserializer(
        url, device="cpu", lazy_load=lazy, num_readers=4, filter_func=wanted.__contains__
    ) as d:
        _assert_same(d, _payload(), wanted)


def test_http_load_matches_local_load(nginx, ours_url):
    _, served = nginx
    local = TensorDeserializer(str(served / "ours.tensors"), device="cpu")
    remote = TensorDeserializer(ours_url, device="cpu", num_readers=4)
    _assert_same(remote, dict(local.items()))


def test_missing_object_is_a_clear_oserror(nginx):
    # A 404 is what a missing local file is: an OSError (FileNotFoundError's
    # errno), as the reference's users catch for a bad path. It must not be
    # retried.
    base, _ = nginx
    url = f"{base}/no/such.tensors"
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        TensorDeserializer(url, device="cpu")
    assert time.monotonic() - start < 2.0
    assert info.value.errno == errno.ENOENT
    message = str(info.value)
    assert url in message and "404" in message


def test_connection_refused_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}/x.tensors"
    with pytest.raises(OSError, match=re.escape(url)):
        TensorDeserializer(url, device="cpu")


def test_object_replaced_mid_load_is_an_error(nginx):
    base, served = nginx
    path = served / "changing.tensors"
    first = {"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(2000)}
    second = {"a": -torch.arange(1000, dtype=torch.float32), "b": torch.zeros(2000)}
    for name, tensors in (("changing.tensors", first), ("second.tensors", second)):
        s = TensorSerializer(str(served / name))
        s.write_state_dict(tensors)
        s.close()
    assert path.stat().st_size == (served / "second.tensors").stat().st_size
    d = TensorDeserializer(f"{base}/changing.tensors", device="cpu", lazy_load=True)
    # Same size, new mtime: nginx gives the new file a new ETag.
    os.replace(served / "second.tensors", path)
    future = time.time() + 100
    os.utime(path, (future, future))
    with pytest.raises(OSError, match="changed during the load") as info:
        d["a"]
    assert info.value.errno == errno.ESTALE
    assert f"{base}/changing.tensors" in str(info.value)


class _NoRangeHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server, which ignores Range and sends no Accept-Ranges."""

    def log_message(self, *args):
        pass


@pytest.fixture
def no_range_server(tmp_path):
    handler = functools.partial(_NoRangeHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("lazy", [False, True])
def test_server_without_range_support(no_range_server, lazy):
    base, served = no_range_server
    s = TensorSerializer(str(served / "x.tensors"))
    s.write_state_dict(_payload())
    s.close()
    with TensorDeserializer(
        f"{base}/x.tensors", device="cpu", lazy_load=lazy, num_readers=4, verify_hash=True
    ) as d:
        _assert_same(d, _payload())


def test_other_remote_schemes_still_refused():
    with pytest.raises(ValueError, match="not supported by this release"):
        TensorDeserializer("s3://bucket/x.tensors", device="cpu")


class _FlakyRangeHandler(http.server.BaseHTTPRequestHandler):
    """A test tool, not a server: serves one object with Range support and an
    ETag, after answering the first ``server.fail_503`` requests with 503 and
    cutting the connection of the next ``server.cut_bodies`` bodies after
    ``server.cut_after_bytes`` bytes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.requests.append(self.headers.get("Range"))
            fail = srv.fail_503 > 0
            srv.fail_503 -= fail
            cut = not fail and srv.cut_bodies > 0
            srv.cut_bodies -= cut
        if fail:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.data
        first, last = 0, len(data) - 1
        ranged = self.headers.get("Range")
        if ranged:
            a, b = ranged.split("=", 1)[1].split("-")
            first, last = int(a), min(int(b), len(data) - 1)
        body = data[first : last + 1]
        self.send_response(206 if ranged else 200)
        self.send_header("ETag", '"v1"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if ranged:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.end_headers()
        if cut and len(body) > srv.cut_after_bytes:
            self.wfile.write(body[: srv.cut_after_bytes])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def flaky_server(tmp_path):
    path = tmp_path / "x.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict(_payload())
    s.close()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyRangeHandler)
    server.data = path.read_bytes()
    server.lock = threading.Lock()
    server.requests = []
    server.fail_503 = 0
    server.cut_bodies = 0
    server.cut_after_bytes = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/x.tensors"
    server.shutdown()
    server.server_close()


def test_burst_of_503s_is_retried(flaky_server):
    server, url = flaky_server
    server.fail_503 = 3
    with TensorDeserializer(url, device="cpu", num_readers=2, verify_hash=True) as d:
        _assert_same(d, _payload())
    assert server.fail_503 == 0


def test_cut_connections_resume_where_they_stopped(flaky_server):
    server, url = flaky_server
    server.cut_bodies = 6
    server.cut_after_bytes = 1 << 20
    with TensorDeserializer(url, device="cpu", num_readers=2, verify_hash=True) as d:
        _assert_same(d, _payload())
    assert server.cut_bodies == 0
    # Each retry asks for the rest of its range, not the whole range again.
    ranges = {tuple(map(int, r.split("=")[1].split("-"))) for r in server.requests if r}
    resumed = {(a + server.cut_after_bytes, b) for a, b in ranges} & ranges
    assert len(resumed) >= 2, sorted(ranges)
