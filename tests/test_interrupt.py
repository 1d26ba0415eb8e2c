"""Ctrl-C while the engine works (issue 12, defect 20).

A child process starts something slow (a load over HTTP, a key derivation),
the test sends it SIGINT, and the child must raise KeyboardInterrupt within
two seconds, with the engine's threads gone, then exit cleanly. Before the
fix the signal waited for the engine: 15 s for the load, and a derivation
never stopped.

The HTTP and S3 servers are fakes on purpose: the HTTP one answers the
index at once and then trickles every other range (16 bytes each 50 ms), so
that a load outlasts the test, and the S3 one starts uploads but never
answers an upload of data; no real server does either on demand. The key
derivations are real Argon2id runs, made slow by their parameters.
"""

from __future__ import annotations

import http.server
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from tensorizer import EncryptionParams, TensorSerializer
from test_encryption import parse_tensors_file

# How long the child may take from SIGINT to KeyboardInterrupt.
PROMPT_S = 2.0


class TrickleServer:
    """Serves one file with range support; a range starting past byte 0
    trickles."""

    def __init__(self, data: bytes):
        self.trickled = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                first, last = (int(x) for x in self.headers["Range"][6:].split("-"))
                last = min(last, len(data) - 1)
                body = data[first : last + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if first == 0:
                        self.wfile.write(body)
                        return
                    server.trickled += 1
                    for i in range(0, len(body), 16):
                        self.wfile.write(body[i : i + 16])
                        self.wfile.flush()
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what the test wants

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/m.tensors"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class StuckS3:
    """Starts multipart uploads and aborts them; never answers a PUT (it
    reads the body slowly, until the client goes). Records each request as
    (method, path)."""

    def __init__(self):
        self.requests = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status, body=b""):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 (http.server's naming)
                seen.append(("POST", self.path))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer(
                    200,
                    b"<InitiateMultipartUploadResult><UploadId>U1</UploadId>"
                    b"</InitiateMultipartUploadResult>",
                )

            def do_PUT(self):  # noqa: N802
                seen.append(("PUT", self.path))
                try:
                    while self.rfile.read1(1024):
                        time.sleep(0.1)
                except OSError:
                    pass
                self.close_connection = True

            def do_DELETE(self):  # noqa: N802
                seen.append(("DELETE", self.path))
                self._answer(204)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# The child: prints "started", runs the body; on KeyboardInterrupt prints
# when it caught it and how many threads it has then and had before.
CHILD = """
import gc, json, os, sys, time
import torch
torch.ones(4096).sum()  # let torch start whatever threads it keeps

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
print("started", flush=True)
try:
{body}
except KeyboardInterrupt:
    caught = time.monotonic()
    gc.collect()
    print(json.dumps({{"caught": caught, "before": before, "after": threads()}}), flush=True)
    sys.exit(0)
print("finished without an interrupt", flush=True)
sys.exit(4)
"""


def interrupt(body: str, settle_s: float = 1.0, env=None) -> dict:
    """Runs `body` in a child, sends SIGINT after `settle_s`, and returns
    the child's report with "sent" (when the signal went) added."""
    script = CHILD.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout.readline() == "started\n", child.stderr.read()
        time.sleep(settle_s)
        assert child.poll() is None, "the slow operation ended before the signal"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready, "no answer to SIGINT within 20 s"
        line = child.stdout.readline()
        rc = child.wait(timeout=10)
        stderr = child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert rc == 0, f"exit status {rc}: {line}{stderr}"
    report = json.loads(line)
    report["sent"] = sent
    return report


@pytest.fixture
def trickle(tmp_path):
    path = tmp_path / "m.tensors"
    s = TensorSerializer(str(path))
    s.write_state_dict({f"t{i}": torch.full((16384,), float(i)) for i in range(4)})
    s.close()
    server = TrickleServer(path.read_bytes())
    yield server
    server.close()


@pytest.mark.parametrize("reader", ["deserializer", "stream"])
def test_ctrl_c_stops_a_slow_http_load(trickle, reader):
    if reader == "deserializer":
        body = f"""
        from tensorizer import TensorDeserializer
        TensorDeserializer({trickle.url!r}, device="cpu", num_readers=4)
        """
    else:
        body = f"""
        from tensorizer import stream_io
        with stream_io.open_stream({trickle.url!r}) as f:
            f.seek(300000)
            f.read(200000)
        """
    report = interrupt(body)
    assert trickle.trickled >= 1, "the load never reached the slow ranges"
    assert report["caught"] - report["sent"] < PROMPT_S
    # The load's workers and the binding's helper thread are gone.
    assert report["after"] <= report["before"], report


def test_ctrl_c_stops_a_key_derivation():
    # Over 10 s of Argon2id on our 2-core machine; it used to run to its end.
    body = """
    from tensorizer import EncryptionParams
    EncryptionParams.from_string("a passphrase", opslimit=10000, memlimit=8 << 20)
    """
    report = interrupt(body)
    assert report["caught"] - report["sent"] < PROMPT_S


def test_ctrl_c_stops_a_load_deriving_its_key(tmp_path):
    # Written with a cheap key derivation, then its stored opslimit raised:
    # the load derives a (wrong) key slowly, on the engine's worker threads.
    path = tmp_path / "slow_kdf.tensors"
    enc = EncryptionParams.from_string("a passphrase", opslimit=1, memlimit=8 << 20)
    s = TensorSerializer(str(path), encryption=enc)
    s.write_state_dict({"a": torch.ones(64), "b": torch.zeros(64)})
    s.close()
    data = bytearray(path.read_bytes())
    for t in parse_tensors_file(bytes(data))["tensors"]:
        at = t["kdf"]["opslimit_offset"]
        data[at : at + 8] = (10000).to_bytes(8, "little")
    path.write_bytes(data)
    body = f"""
    from tensorizer import DecryptionParams, TensorDeserializer
    dec = DecryptionParams.from_string("a passphrase")
    dec.max_opslimit = 1 << 32
    TensorDeserializer({str(path)!r}, device="cpu", encryption=dec)
    """
    report = interrupt(body)
    assert report["caught"] - report["sent"] < PROMPT_S


@pytest.mark.parametrize("megabytes", [1, 40])
def test_ctrl_c_stops_a_stuck_s3_upload_and_aborts_it(tmp_path, megabytes):
    # 1 MB: one PutObject from close(); 40 MB: UploadPart requests on the
    # uploader threads while close() waits for them.
    server = StuckS3()
    env = dict(os.environ, HOME=str(tmp_path), AWS_ENDPOINT_URL_S3=server.endpoint)
    env.update(AWS_ACCESS_KEY_ID="AKIDINTERRUPT", AWS_SECRET_ACCESS_KEY="secret", AWS_REGION="x")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    body = f"""
    from tensorizer import TensorSerializer
    s = TensorSerializer("s3://models/m.tensors")
    s.write_state_dict({{"w": torch.ones({megabytes} << 18)}})
    s.close()
    """
    try:
        report = interrupt(body, env=env)
    finally:
        server.close()
    assert report["caught"] - report["sent"] < PROMPT_S
    methods = [m for m, _ in server.requests]
    assert "PUT" in methods, server.requests
    # The upload was aborted, and never completed.
    assert ("DELETE", "/models/m.tensors?uploadId=U1") in server.requests, server.requests
    assert not any(m == "POST" and "uploadId" in p for m, p in server.requests), server.requests


# --- The command-line tool ----------------------------------------------------
#
# SIGINT used to kill `tensorizer` where it stood: a `cp` left its
# temporary file of the output's size behind. Now the signal cancels the
# command through the engine: the save removes its temporary, and the tool
# exits 128 + the signal with one line on stderr.


def run_cli_until_signal(cli, args, sig, ready):
    """Starts `tensorizer ARGS`, waits until `ready()` (at most 20 s), sends
    `sig`, and returns (exit status, stdout, stderr, seconds from the
    signal to the exit)."""
    child = subprocess.Popen(
        [cli, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while not ready():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the command never got going"
            time.sleep(0.02)
        time.sleep(0.2)
        assert child.poll() is None, "the command ended before the signal"
        sent = time.monotonic()
        child.send_signal(sig)
        out, err = child.communicate(timeout=20)
        return child.returncode, out, err, time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("sig, status, name", [(signal.SIGINT, 130, "SIGINT"),
                                               (signal.SIGTERM, 143, "SIGTERM")])
def test_cli_cp_interrupted_exits_promptly_and_leaves_no_temporary(cli, tmp_path, sig, status,
                                                                   name):
    # 24 MiB: the copy's first 16 MiB chunk comes at once, the rest trickles.
    server = TrickleServer(os.urandom(24 << 20))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        rc, out, err, took = run_cli_until_signal(
            cli, ["cp", server.url, out_dir / "m.tensors"], sig,
            lambda: server.trickled > 0 and any(out_dir.iterdir()),
        )
    finally:
        server.close()
    assert rc == status, (rc, out, err)
    assert err == f"tensorizer: interrupted by {name}\n"
    assert out == ""
    assert took < PROMPT_S, took
    assert list(out_dir.iterdir()) == [], "the copy's temporary file was left behind"


def test_cli_verify_of_a_remote_file_stops_on_sigint(cli, trickle):
    rc, out, err, took = run_cli_until_signal(
        cli, ["verify", trickle.url], signal.SIGINT, lambda: trickle.trickled > 0
    )
    assert rc == 130, (rc, out, err)
    assert (out, err) == ("", "tensorizer: interrupted by SIGINT\n")
    assert took < PROMPT_S, took
