"""What the remote-source suites share: ports, server processes, the reference
interpreter, a small payload and a bitwise comparison.

test_http, test_https, test_redis, test_s3 and test_remote_formats each run a
real server on loopback, write a state dict, load it back through it and
compare the tensors bit for bit. The helpers here are the pieces of that
which do not depend on the server; tests/nginx_server.py starts nginx with
them.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest
import torch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the caller binds it; the servers here
    fail at once when that happens, which shows as a startup error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Returns once 127.0.0.1:``port`` accepts a connection.

    Raises RuntimeError when ``proc`` (the server meant to listen there)
    exits first, or when nothing listens within ``timeout_s``."""
    name = os.path.basename(str(proc.args[0]))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout_s:g} s")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s; reaps it."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def server_process(
    cmd: Sequence[str], port: int, log_path: Optional[Path] = None
) -> Iterator[subprocess.Popen]:
    """Runs the server ``cmd``, which listens on 127.0.0.1:``port``, for the
    ``with`` block; yields its process once it accepts connections.

    A server that exits or does not listen fails the test with its stderr
    and the tail of ``log_path`` (where it logs, when that is a file). The
    server is stopped when the block ends."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
    except RuntimeError as exc:
        proc.kill()
        _, err = proc.communicate()
        detail = err.decode(errors="replace")
        if log_path is not None and log_path.exists():
            detail += log_path.read_text(errors="replace")[-4000:]
        pytest.fail(f"{exc}: {detail}")
    try:
        yield proc
    finally:
        stop_process(proc)


def run_reference(
    ref_python: str, script: str, *args: str, timeout_s: float = 300, env: Optional[dict] = None
) -> str:
    """Runs ``script`` (Python source) with the reference tensorizer's
    interpreter and returns its stdout; fails the test if it fails.

    ``env`` defaults to this process's environment without PYTHONPATH, which
    would put our package on the reference's path."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [ref_python, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout


def payload(seed: int, big_shape: tuple) -> dict:
    """A small state dict: one float32 tensor of ``big_shape`` (big enough
    that num_readers=4 splits the data into several ranges), then fp16,
    int64, bf16, a 0-d and an empty tensor, all from ``seed``.

    It uses nothing but torch, so a reference script can exec its source
    (see payload_source)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "big": torch.randn(*big_shape, generator=g),
        "layer.0.weight": torch.randn(64, 33, generator=g).to(torch.float16),
        "layer.0.bias": torch.arange(33, dtype=torch.int64),
        "layer.1.weight": torch.randn(17, 5, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(7, dtype=torch.int32),
        "empty": torch.zeros(0, 4),
    }


def payload_source(seed: int, big_shape: tuple) -> str:
    """Source that defines ``_payload()`` as ``payload(seed, big_shape)``,
    for scripts run by the reference's interpreter: they ``exec`` it (with
    torch imported) and call ``_payload()``, so both sides build the same
    tensors."""
    call = f"def _payload():\n    return payload({seed!r}, {tuple(big_shape)!r})\n"
    return inspect.getsource(payload) + "\n\n" + call


def assert_same(loaded, expected: dict, names=None) -> None:
    """``loaded`` (a mapping of name to tensor) holds exactly ``names``
    (default: every name in ``expected``), each with the expected dtype,
    shape and bytes. Bitwise, so NaN payloads and -0.0 count."""
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
