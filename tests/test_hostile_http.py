"""Hostile HTTP and S3 endpoints (issue 12, defects 1-4 and 6).

The servers here are fakes on purpose: no real nginx or S3 store redirects a
signed request to another host, answers a range with gzip, or echoes
credentials, and those are the behaviours under test. Each server has one
behaviour, set by the test.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import threading

import pytest
import torch

from tensorizer import TensorDeserializer, TensorSerializer


class _Server:
    """A threading HTTP server on loopback whose handler is `handle(req)`."""

    def __init__(self, handle):
        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                seen.append((self.path, dict(self.headers)))
                handle(self)

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



def test_python_names_and_messages_redact_url_credentials(tensors_bytes):
    # #2 in the Python layer: a stream's name (which messages and the
    # deserializer quote) and the write-target refusal hide the password and
    # the presigned signature.
    from tensorizer import stream_io

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
