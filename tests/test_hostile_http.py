"""Hostile HTTP and S3 endpoints (issue 12, defects 1-8, 11, 12 and 28).

The servers here are fakes on purpose: no real nginx or S3 store redirects a
signed request to another host, answers a range with gzip, echoes
credentials, lies about sizes, trickles 16 bytes per answer, sends a
megabyte-long header or endless 100 Continue, or answers a multipart
completion with a disguised error, and those are the behaviours under test.
Each server has one behaviour, set by the test.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.server
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

import pytest
import torch

from tensorizer import TensorDeserializer, TensorSerializer, stream_io


class _Server:
    """A threading HTTP server on loopback whose handler is `handle(req)`."""

    def __init__(self, handle):
        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                seen.append((self.path, dict(self.headers)))
                handle(self)

            def do_HEAD(self):  # noqa: N802
                self.do_GET()

            do_PUT = do_POST = do_DELETE = do_HEAD  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tensors_bytes(tmp_path):
    path = tmp_path / "m.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict({"w": torch.arange(4096, dtype=torch.float32)})
    s.close()
    return path.read_bytes()


def _reply(req, status, headers=(), body=b""):
    req.send_response(status)
    for k, v in headers:
        req.send_header(k, v)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body)


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    """Credentials with a session token from the AWS environment, and a HOME
    without ~/.s3cfg or ~/.aws so that nothing else is picked up."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDHOSTILETEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-never-shown")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-never-sent-elsewhere")
    return monkeypatch


def test_signed_s3_request_does_not_follow_a_redirect(s3_env):
    other = _Server(lambda req: _reply(req, 200, body=b"x" * 16))
    endpoint = _Server(
        lambda req: _reply(req, 307, [("Location", f"http://127.0.0.1:{other.port}/stolen")])
    )
    try:
        s3_env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{endpoint.port}")
        with pytest.raises(OSError) as info:
            TensorDeserializer("s3://models/m.tensors", device="cpu")
        message = str(info.value)
        assert "307" in message and "not redirected" in message
        assert "session-token-never-sent-elsewhere" not in message
        assert other.requests == [], "the token's request reached the redirect target"
        assert endpoint.requests, "the endpoint was never asked"
    finally:
        other.close()
        endpoint.close()


def test_redirect_to_ftp_is_refused():
    ftp_hits = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    ftp_port = listener.getsockname()[1]

    def accept():
        try:
            conn, _ = listener.accept()
            ftp_hits.append(conn)
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    server = _Server(lambda req: _reply(req, 302, [("Location", f"ftp://127.0.0.1:{ftp_port}/m")]))
    try:
        with pytest.raises(OSError):
            TensorDeserializer(f"http://127.0.0.1:{server.port}/m.tensors", device="cpu")
        t.join()
        assert ftp_hits == [], "the loader connected to the ftp:// redirect target"
    finally:
        server.close()
        listener.close()


def test_gzip_content_encoding_is_refused(tensors_bytes):
    def handle(req):
        first, last = req.headers["Range"].split("=")[1].split("-")
        part = tensors_bytes[int(first) : int(last) + 1]
        _reply(
            req,
            206,
            [
                ("Content-Range", f"bytes {first}-{last}/{len(tensors_bytes)}"),
                ("Content-Encoding", "gzip"),
            ],
            gzip.compress(part) if int(last) > 0 else part,
        )

    server = _Server(handle)
    try:
        with pytest.raises(OSError) as info:
            TensorDeserializer(f"http://127.0.0.1:{server.port}/m.tensors", device="cpu")
        assert "Content-Encoding" in str(info.value)
    finally:
        server.close()


def test_aws_chunked_content_encoding_is_a_plain_body(tensors_bytes):
    # S3-compatible servers such as moto store the aws-chunked coding a
    # client uploaded with and send it back on GET, over the plain bytes.
    def handle(req):
        first, last = req.headers["Range"].split("=")[1].split("-")
        part = tensors_bytes[int(first) : int(last) + 1]
        _reply(
            req,
            206,
            [
                ("Content-Range", f"bytes {first}-{last}/{len(tensors_bytes)}"),
                ("Content-Encoding", "aws-chunked"),
            ],
            part,
        )

    server = _Server(handle)
    try:
        with TensorDeserializer(f"http://127.0.0.1:{server.port}/m.tensors", device="cpu") as d:
            assert torch.equal(d["w"], torch.arange(4096, dtype=torch.float32))
    finally:
        server.close()


@pytest.mark.parametrize(
    ("url_tail", "secret"),
    [
        ("m.tensors", "url-password-never-shown"),
        ("m.tensors?X-Amz-Signature=deadbeefsignature&X-Amz-Security-Token=tok3n", "deadbeef"),
        ("m.tensors?X-Amz-Signature=deadbeefsignature&X-Amz-Security-Token=tok3n", "tok3n"),
    ],
)
def test_url_credentials_are_redacted_from_errors(url_tail, secret):
    server = _Server(lambda req: _reply(req, 403, body=b"Forbidden"))
    try:
        url = f"http://alice:url-password-never-shown@127.0.0.1:{server.port}/{url_tail}"
        with pytest.raises(OSError) as info:
            TensorDeserializer(url, device="cpu")
        message = str(info.value)
        assert "403" in message
        assert secret not in message
        assert "127.0.0.1" in message
    finally:
        server.close()


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"])
def test_control_characters_in_s3_settings_are_refused(s3_env, variable):
    endpoint = _Server(lambda req: _reply(req, 500))
    try:
        s3_env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{endpoint.port}")
        s3_env.setenv(variable, "value\r\nX-Injected: yes")
        with pytest.raises((ValueError, OSError)) as info:
            TensorDeserializer("s3://models/m.tensors", device="cpu")
        message = str(info.value)
        assert "control character" in message
        assert "X-Injected" not in message
        assert endpoint.requests == [], "a request went out with the injected header"
    finally:
        endpoint.close()



def _fast(**overrides) -> stream_io.HttpOptions:
    """Retries within milliseconds, so that a test about counting them is quick."""
    options = dict(max_retries=2, retry_base_delay_ms=1, retry_max_delay_ms=5)
    options.update(overrides)
    return stream_io.HttpOptions(**options)


class _RawServer:
    """Answers the first request of each connection with raw bytes from
    `respond(send, method, path, headers)`, then closes it: for what
    http.server cannot send (endless interim responses, a 1 MiB header)."""

    def __init__(self, respond):
        self.respond = respond
        self.requests = []
        self.sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _send(self, conn, data: bytes):
        conn.sendall(data)
        self.sent += len(data)

    def _serve(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
            self.requests.append((method, path, headers))
            try:
                self.respond(lambda b: self._send(conn, b), method, path, headers)
            except OSError:
                pass

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _range(req):
    first, last = req.headers["Range"].split("=")[1].split("-")
    return int(first), int(last)


# --- Retries must count progress (defect 11) ----------------------------------


def test_sixteen_byte_answers_do_not_retry_forever():
    # Every ranged read is answered with its full Content-Range but only 16
    # bytes of body. Any byte used to reset the failure count, so the read
    # went on 16 bytes at a time; now an attempt must deliver 1 MiB (or all
    # that is missing) to count as progress.
    size = 64 << 10

    def handle(req):
        first, last = _range(req)
        body = b"\0" * (last - first + 1)
        if last > 0:
            body = body[:16]
        _reply(req, 206, [("Content-Range", f"bytes {first}-{last}/{size}")], body)

    server = _Server(handle)
    try:
        stream = stream_io.open_stream(f"http://127.0.0.1:{server.port}/o", http_options=_fast())
        with pytest.raises(OSError, match="ended after 16 of") as info:
            stream.read(size)
        assert "gave up after 3 attempts" in str(info.value)
        # The probe, then 1 + max_retries attempts of the one read.
        assert len(server.requests) == 1 + 3
    finally:
        server.close()


# --- Errors that mislead (defect 12) ------------------------------------------


@pytest.mark.parametrize("ranges", [True, False], ids=["ranged", "no-range"])
def test_size_change_mid_load_is_estale(ranges):
    # docs/storage.md: a different total size is "the object changed" with
    # ESTALE. It was EIO when found at the start of a body.
    size = 8192
    answers = []

    def handle(req):
        now = size if not answers else size + 4096
        answers.append(now)
        if ranges:
            first, last = _range(req)
            _reply(req, 206, [("Content-Range", f"bytes {first}-{last}/{now}")],
                   b"\0" * (last - first + 1))
        else:
            _reply(req, 200, body=b"\0" * now)

    server = _Server(handle)
    try:
        stream = stream_io.open_stream(f"http://127.0.0.1:{server.port}/o", http_options=_fast())
        with pytest.raises(OSError, match="changed during the load") as info:
            stream.read(size)
        assert info.value.errno == errno.ESTALE
        assert "size is now 12288" in str(info.value)
    finally:
        server.close()


def test_megabyte_response_header_is_named_not_out_of_memory():
    server = _RawServer(
        lambda send, *_: send(b"HTTP/1.1 206 Partial Content\r\nX-Big: " + b"a" * (1 << 20)
                              + b"\r\nContent-Range: bytes 0-0/1\r\nContent-Length: 1\r\n\r\nx")
    )
    try:
        with pytest.raises(OSError) as info:
            stream_io.open_stream(f"http://127.0.0.1:{server.port}/o", http_options=_fast())
        message = str(info.value)
        assert "Out of memory" not in message
        assert "header line longer than libcurl accepts" in message
    finally:
        server.close()


def test_headers_past_256_kib_in_all_are_refused_at_once():
    # 280 headers of 1 KiB: within libcurl's own 300 KiB, past ours.
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1024) for i in range(280))
    server = _RawServer(
        lambda send, *_: send(b"HTTP/1.1 206 Partial Content\r\n" + many
                              + b"Content-Range: bytes 0-0/1\r\nContent-Length: 1\r\n\r\nx")
    )
    try:
        with pytest.raises(OSError, match="the response headers exceed 256 KiB"):
            stream_io.open_stream(f"http://127.0.0.1:{server.port}/o", http_options=_fast())
        assert len(server.requests) == 1, "a header flood is not worth a retry"
    finally:
        server.close()


def test_endless_100_continue_fails_quickly():
    stop = threading.Event()

    def respond(send, *_):
        while not stop.is_set():
            send(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(0.02)

    server = _RawServer(respond)
    try:
        start = time.monotonic()
        with pytest.raises(OSError, match=r"more than 16 interim \(1xx\) responses"):
            stream_io.open_stream(f"http://127.0.0.1:{server.port}/o", http_options=_fast())
        assert time.monotonic() - start < 5
    finally:
        stop.set()
        server.close()


# --- A 200 without ranges is bounded (defect 8) -------------------------------


def test_no_range_server_without_content_length_is_refused():
    # A body of unknown size used to be read whole into memory (1 GiB of it
    # reached 1.25 GB RSS). Now the open refuses, having read one byte.
    def respond(send, *_):
        send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(64):
            send(b"\0" * (1 << 20))

    server = _RawServer(respond)
    try:
        with pytest.raises(OSError, match="sends no Content-Length"):
            stream_io.open_stream(f"http://127.0.0.1:{server.port}/o", http_options=_fast())
        assert len(server.requests) == 1
        # The probe's connection was dropped after its first byte; what the
        # kernel buffers took before that is all that was sent.
        assert server.sent < 16 << 20
    finally:
        server.close()


def test_no_range_server_with_a_huge_content_length_reads_only_what_the_load_needs(
    tensors_bytes,
):
    # Content-Length says 10^15 bytes; a real file comes first, then the
    # connection ends after 64 MiB. The whole object used to be fetched (and
    # re-fetched on every retry); now the load reads a prefix as far as it
    # needs, in one GET after the probe.
    def respond(send, method, path, headers):
        send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % 10**15)
        send(tensors_bytes)
        for _ in range(64):
            send(b"\0" * (1 << 20))

    server = _RawServer(respond)
    try:
        stream = stream_io.open_stream(f"http://127.0.0.1:{server.port}/o", http_options=_fast())
        with TensorDeserializer(stream, device="cpu") as d:
            assert torch.equal(d["w"], torch.arange(4096, dtype=torch.float32))
        assert len(server.requests) == 2
        assert server.sent < 32 << 20
    finally:
        server.close()


def test_no_range_copy_of_a_large_object_streams_in_bounded_memory(cli, tmp_path):
    # The rest of defect 8: an object without range support was read into a
    # growing prefix buffer, so memory reached the object's size (512 MiB
    # here). Its one GET now streams into the reads' buffers through a
    # window of a few MiB; `cp` holds 4 chunks of 16 MiB.
    size = 512 << 20
    block = bytearray(os.urandom(1 << 20))

    def payload():
        for i in range(size >> 20):
            block[:8] = struct.pack("<Q", i)
            yield bytes(block)

    expected = hashlib.sha256()
    for b in payload():
        expected.update(b)

    def respond(send, method, path, headers):
        send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        for b in payload():
            send(b)

    server = _RawServer(respond)
    out = tmp_path / "copy.bin"
    try:
        child = subprocess.Popen([cli, "cp", f"http://127.0.0.1:{server.port}/o", str(out)],
                                 stderr=subprocess.PIPE, text=True)
        # The child's own high-water mark, read while it runs: its rusage
        # would count the memory of this process, which it was forked from.
        peak_kib = 0
        while child.poll() is None:
            try:
                with open(f"/proc/{child.pid}/status") as f:
                    hwm = [line for line in f if line.startswith("VmHWM:")]
            except OSError:
                break
            if hwm:
                peak_kib = max(peak_kib, int(hwm[0].split()[1]))
            time.sleep(0.02)
        stderr = child.communicate(timeout=60)[1]
    finally:
        server.close()
    assert child.returncode == 0, stderr
    peak_mib = peak_kib / 1024
    assert peak_mib < 160, f"peak RSS {peak_mib:.0f} MiB for a {size >> 20} MiB object"
    got = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(8 << 20):
            got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()
    # The probe, then one GET streams everything (a read that came too late
    # for the window would cost another).
    assert 2 <= len(server.requests) <= 4, server.requests
    out.unlink()


def test_no_range_lazy_load_out_of_file_order_restreams_from_byte_0(tmp_path):
    # A lazy load reads tensors in the order they are asked for. One whose
    # bytes the stream (and its window of a few MiB) has passed costs a new
    # GET from byte 0; one ahead of the stream is read on.
    tensors = {f"t{i}": torch.full((1 << 20,), float(i)) for i in range(4)}  # 4 MiB each
    path = tmp_path / "m.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict(tensors)
    s.close()
    data = path.read_bytes()

    def respond(send, method, path, headers):
        send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data))
        send(data)

    server = _RawServer(respond)
    try:
        url = f"http://127.0.0.1:{server.port}/m.tensors"
        with TensorDeserializer(url, device="cpu", lazy_load=True) as d:
            for name in ["t3", "t0", "t2", "t1"]:
                assert torch.equal(d[name], tensors[name]), name
        # The probe; the GET that read the index and t3; one more from byte
        # 0 for t0, which then streams on to t2 (t1 is in the window behind
        # it, or costs one more GET).
        assert 3 <= len(server.requests) <= 5, len(server.requests)
    finally:
        server.close()


# --- CompleteMultipartUpload must prove itself (defects 5 and 7) --------------


class _FakeS3:
    """Just enough of S3's multipart upload for the sink: CreateMultipartUpload,
    UploadPart (answering `etag(part_number)`), CompleteMultipartUpload
    (answering `complete(body)`, which returns a status and a body) and HEAD
    (answering the stored size unless `head_size` says otherwise; a completion
    stores nothing unless `stores`)."""

    RESULT = (b'<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult '
              b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket>'
              b'<Key>k</Key><ETag>"done-2"</ETag></CompleteMultipartUploadResult>')

    def __init__(self, complete=None, etag=None, head_size=None, stores=True):
        self.completion = None
        self.methods = []
        self.stores = stores
        self.parts = {}
        self.size = None
        self.complete = complete or (lambda body: (200, self.RESULT))
        self.etag = etag or (lambda n: f'"etag-{n}"')
        self.head_size = head_size
        self.server = _Server(self._handle)
        self.endpoint = f"http://127.0.0.1:{self.server.port}"

    def _handle(self, req):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query,
                                      keep_blank_values=True)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        self.methods.append(req.command)
        if req.command == "POST" and "uploads" in query:
            _reply(req, 200, body=b"<InitiateMultipartUploadResult><UploadId>u1</UploadId>"
                                  b"</InitiateMultipartUploadResult>")
        elif req.command == "PUT" and "partNumber" in query:
            n = int(query["partNumber"][0])
            self.parts[n] = len(body)
            _reply(req, 200, [("ETag", self.etag(n))])
        elif req.command == "PUT":
            self.size = len(body)
            _reply(req, 200, [("ETag", '"put"')])
        elif req.command == "POST":
            self.completion = body
            status, answer = self.complete(body)
            if status == 200 and self.stores:
                self.size = sum(self.parts.values())
            _reply(req, status, body=answer)
        elif req.command == "DELETE":
            _reply(req, 204)
        elif req.command == "HEAD":
            size = self.size if self.head_size is None else self.head_size
            if size is None:
                req.send_response(404)
                req.send_header("Content-Length", "0")
                req.end_headers()
            else:
                req.send_response(200)
                req.send_header("Content-Length", str(size))
                req.end_headers()

    def upload(self, nbytes=6 << 20):
        """Writes `nbytes` (two parts of 5 MiB at most) and closes the stream."""
        stream = stream_io.open_stream(
            "s3://b/k", "wb", "AKIDFAKE", "fake-secret", self.endpoint, force_http=True,
            http_options=_fast(max_retries=1),
            s3_upload_options=stream_io.S3UploadOptions(part_bytes=5 << 20),
        )
        stream.write(b"\x01" * nbytes)
        stream.close()

    def close(self):
        self.server.close()


@pytest.mark.parametrize(
    "answer",
    [
        b" " * ((64 << 10) + 100) + b"<Error><Code>InternalError</Code><Message>x</Message></Error>",
        b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>InternalError</Code>'
        b"</Error>",
        b"",
        b"<html>proxy says hello</html>",
    ],
    ids=["error-after-64-kib-of-whitespace", "namespaced-error", "empty", "not-a-result"],
)
def test_completion_without_a_result_fails_close(answer):
    s3 = _FakeS3(complete=lambda body: (200, answer))
    try:
        with pytest.raises(OSError, match="CompleteMultipartUpload"):
            s3.upload()
        assert s3.completion is not None, "the upload never reached its completion"
    finally:
        s3.close()


@pytest.mark.parametrize(("stores", "head_size"), [(False, None), (True, 5 << 20)],
                         ids=["no-object", "wrong-size"])
def test_completion_is_confirmed_by_a_head(stores, head_size):
    # The completion answers a proper result, but no object of the size
    # written exists: close() must not report success.
    s3 = _FakeS3(stores=stores, head_size=head_size)
    try:
        with pytest.raises(OSError, match="CompleteMultipartUpload of s3://b/k succeeded, but"):
            s3.upload()
        assert "HEAD" in s3.methods
    finally:
        s3.close()


def test_hostile_upload_part_etag_is_escaped_in_the_completion():
    # Defect 5: an ETag with markup must arrive as text, adding no part.
    hostile = '"x</ETag></Part><Part><PartNumber>9</PartNumber><ETag>&\'y"'
    s3 = _FakeS3(etag=lambda n: hostile if n == 2 else f'"etag-{n}"')
    try:
        s3.upload()
        root = ET.fromstring(s3.completion)
        parts = [(p.findtext("PartNumber"), p.findtext("ETag")) for p in root.iter("Part")]
        assert parts == [("1", '"etag-1"'), ("2", hostile)]
    finally:
        s3.close()


def test_upload_part_etag_with_a_control_character_is_refused():
    s3 = _FakeS3(etag=lambda n: '"bad\x01etag"')
    try:
        with pytest.raises(OSError, match="well-formed ETag"):
            s3.upload()
        assert s3.completion is None
    finally:
        s3.close()


# --- A server's <Message> is not ours to repeat (defect 28) -------------------


def test_s3_error_message_echoing_the_request_is_redacted(s3_env):
    # A proxy that echoes the request's headers in its <Message> puts the
    # session token and the signature there; the secret key is added too
    # (no server can know it), with a CR LF (as XML character references:
    # raw control characters are not XML) and far more text than a message
    # needs.
    seen = {}

    def handle(req):
        token = req.headers["x-amz-security-token"]
        seen["signature"] = req.headers["Authorization"].rsplit("Signature=", 1)[-1]
        message = (f"denied&#13;&#10;X-Forged: 1; x-amz-security-token: {token}; "
                   f"Signature={seen['signature']}; key secret-key-never-shown; " + "z" * 5000)
        body = f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>".encode()
        _reply(req, 403, body=body)

    endpoint = _Server(handle)
    try:
        s3_env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{endpoint.port}")
        with pytest.raises(OSError) as info:
            TensorDeserializer("s3://models/m.tensors", device="cpu")
        message = str(info.value)
        assert "AccessDenied: denied\\x0d\\x0aX-Forged: 1" in message
        assert "x-amz-security-token: ***; Signature=***; key ***;" in message
        assert "session-token-never-sent-elsewhere" not in message
        assert "secret-key-never-shown" not in message
        assert seen["signature"] not in message
        assert not any(ord(c) < 0x20 for c in message)
        assert len(message) < 700
    finally:
        endpoint.close()


def test_s3_plain_text_error_body_has_its_control_characters_escaped(s3_env):
    endpoint = _Server(lambda req: _reply(req, 403, body=b"no\x1b[2J way\x07"))
    try:
        s3_env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{endpoint.port}")
        with pytest.raises(OSError) as info:
            TensorDeserializer("s3://models/m.tensors", device="cpu")
        message = str(info.value)
        assert "HTTP 403 Forbidden: no\\x1b[2J way\\x07 (endpoint" in message
        assert not any(ord(c) < 0x20 for c in message)
    finally:
        endpoint.close()


def test_plain_http_error_page_has_its_control_characters_escaped():
    server = _Server(lambda req: _reply(req, 404, body=b"gone\x1b[2J\r\x07 for good"))
    try:
        with pytest.raises(OSError) as info:
            stream_io.open_stream(f"http://127.0.0.1:{server.port}/o", http_options=_fast())
        message = str(info.value)
        assert "HTTP 404 Not Found: gone\\x1b[2J" in message
        assert not any(ord(c) < 0x20 for c in message)
    finally:
        server.close()


def test_python_names_and_messages_redact_url_credentials(tensors_bytes):
    # #2 in the Python layer: a stream's name (which messages and the
    # deserializer quote) and the write-target refusal hide the password and
    # the presigned signature.
    server = _Server(
        lambda req: _reply(
            req, 206, [("Content-Range", f"bytes 0-0/{len(tensors_bytes)}")], tensors_bytes[:1]
        )
    )
    try:
        url = (f"http://bob:pw-never-shown@127.0.0.1:{server.port}/m.tensors"
               "?X-Amz-Signature=sig-never-shown")
        stream = stream_io.open_stream(url)
        assert "pw-never-shown" not in stream.name and "sig-never-shown" not in stream.name
        assert f"127.0.0.1:{server.port}/m.tensors" in stream.name
        stream.close()
    finally:
        server.close()
    with pytest.raises(ValueError) as info:
        TensorSerializer("http://bob:pw-never-shown@127.0.0.1:1/m.tensors")
    assert "pw-never-shown" not in str(info.value) and "127.0.0.1:1" in str(info.value)
