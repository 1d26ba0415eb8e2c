"""Golden tests of the `tensorizer` command-line tool: its output and exit codes.

The binary under test is $TENSORIZER_CLI (scripts/test.sh points it at
build/cpp/tensorizer). Files are written with our Python package.
Regenerate a golden file after an intended change of the output with
TENSORIZER_UPDATE_GOLDEN=1 and review the diff.

Remote URIs are tested against real servers: the SeaweedFS S3 server of the
`s3_server` fixture (SigV4 enforced), whose public bucket also answers plain
HTTP GETs. Credentials reach the tool only through its environment, with
HOME a fresh directory so this machine's ~/.s3cfg and ~/.aws never matter.
"""

import hashlib
import json
import os
import re
import struct
import subprocess
import textwrap
import time
import uuid
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tensorizer import TensorSerializer, TensorType

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
COMMANDS = ["inspect", "verify", "bench"]
ALL_COMMANDS = ["inspect", "verify", "bench", "convert", "cp"]


def run(cli, *args, cwd=None, env=None):
    return subprocess.run(
        [cli, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def write_small(path: Path) -> None:
    """A small file that exercises every column: each tensor type, a path
    name, names needing escapes, an opaque dtype, a 0-d and a meta tensor."""
    s = TensorSerializer(str(path))
    s.write_tensor(
        0, "embed.weight", TensorType.PARAM, torch.arange(32, dtype=torch.float32).reshape(4, 8)
    )
    s.write_tensor(0, "embed.bias", TensorType.PARAM, torch.zeros(8, dtype=torch.bfloat16))
    s.write_tensor(1, "norm.running_mean", TensorType.BUFFER, torch.ones(8, dtype=torch.float16))
    s.write_tensor(
        0,
        ["layers", 0, "weight"],
        TensorType.STATE_DICT,
        torch.arange(6, dtype=torch.int64).reshape(2, 3),
    )
    s.write_tensor(0, "scalar", TensorType.STATE_DICT, torch.tensor(3, dtype=torch.int32))
    s.write_tensor(
        0, 'tab\there "é" \\ \x01', TensorType.STATE_DICT, torch.ones(2, dtype=torch.bool)
    )
    s.write_tensor(0, "meta", TensorType.STATE_DICT, torch.empty(3, 4, device="meta"))
    s.close()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "small.tensors"
    write_small(path)
    return path


def index_of(cli, path: Path) -> dict:
    out = run(cli, "inspect", "--json", path)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def corrupted(tmp_path: Path, small: Path, name: str, edit) -> Path:
    data = bytearray(small.read_bytes())
    data = edit(data)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


# --- inspect ---------------------------------------------------------------


def test_inspect_matches_golden(cli, small):
    out = run(cli, "inspect", small.name, cwd=small.parent)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    golden = GOLDEN_DIR / "inspect_small.txt"
    if os.environ.get("TENSORIZER_UPDATE_GOLDEN"):
        golden.write_text(out.stdout)
    assert out.stdout == golden.read_text()


def test_inspect_json(cli, small):
    doc = index_of(cli, small)
    assert doc["file"] == str(small)
    assert doc["format"] == "tensorizer"
    assert doc["file_size"] == small.stat().st_size
    assert doc["data_version"] == 4  # the meta tensor needs version 4
    assert doc["feature_flags"] == 0
    assert doc["features"] == []
    assert doc["encrypted"] is False
    assert doc["tensor_count"] == 7
    tensors = {t["name"]: t for t in doc["tensors"]}
    assert list(tensors) == [
        "embed.weight",
        "embed.bias",
        "norm.running_mean",
        '["layers",0,"weight"]',
        "scalar",
        'tab\there "é" \\ \x01',
        "meta",
    ]
    w = tensors["embed.weight"]
    assert (w["dtype"], w["shape"], w["data_bytes"], w["type"], w["meta"]) == (
        "<f4",
        [4, 8],
        128,
        "param",
        False,
    )
    assert w["path"] == ["embed.weight"]
    assert tensors["embed.bias"]["dtype"] == "torch.bfloat16"
    assert tensors["norm.running_mean"]["type"] == "buffer"
    assert tensors['["layers",0,"weight"]']["path"] == ["layers", 0, "weight"]
    assert tensors["scalar"]["shape"] == []
    meta = tensors["meta"]
    assert (meta["meta"], meta["data_bytes"], meta["shape"]) == (True, 0, [3, 4])
    total = sum(t["data_bytes"] for t in doc["tensors"])
    assert doc["tensor_data_bytes"] == total == 128 + 16 + 16 + 48 + 4 + 2
    assert doc["totals"] == {
        "tensors": 7,
        "data_bytes": total,
        "param": 2,
        "buffer": 1,
        "state_dict": 4,
        "meta": 1,
    }
    # The offsets point at the data: the first tensor's bytes are its values.
    raw = small.read_bytes()
    off = w["data_offset"]
    assert raw[off : off + 128] == torch.arange(32, dtype=torch.float32).numpy().tobytes()


def test_inspect_safetensors(cli, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16)}, str(path))
    doc = index_of(cli, path)
    assert doc["format"] == "safetensors"
    assert doc["data_version"] is None
    assert [(t["name"], t["dtype"], t["shape"], t["type"]) for t in doc["tensors"]] == [
        ("a", "<f4", [3, 4], "state_dict"),
        ("b", "torch.bfloat16", [2], "state_dict"),
    ]
    text = run(cli, "inspect", path).stdout
    assert "format:        safetensors\n" in text
    assert "data version" not in text
    # No hashes to check: it passes, and says that nothing was checked.
    out = run(cli, "verify", path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        f"{path}: OK: 2 tensors read; safetensors files store no hashes,"
        " so their data was not checked\n"
    )


# --- verify ----------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--all"]])
def test_verify_good_file(cli, small, flags):
    out = run(cli, "verify", *flags, small)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == f"{small}: OK: 7 tensors passed (7 CRC32, {7 if flags else 0} SHA-256)\n"


@pytest.mark.parametrize("flags", [[], ["--all"]])
def test_verify_flipped_data_byte(cli, small, tmp_path, flags):
    doc = index_of(cli, small)
    offsets = {t["name"]: t["data_offset"] for t in doc["tensors"]}

    def flip(data):
        data[offsets["embed.weight"] + 5] ^= 0xFF
        data[offsets["norm.running_mean"]] ^= 0x01
        return data

    bad = corrupted(tmp_path, small, "flipped.tensors", flip)
    out = run(cli, "verify", *flags, bad)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    # One line per failing tensor (every one, not just the first), then the summary.
    assert len(lines) == 3, out.stdout
    assert lines[0].startswith("FAILED embed.weight: ")
    assert lines[1].startswith("FAILED norm.running_mean: ")
    assert "verification" in lines[0]
    assert lines[2] == f"{bad}: FAILED: 2 of 7 tensors failed"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("case", "edit", "message"),
    [
        ("truncated", lambda d: d[: len(d) - 100], "lies outside the file"),
        ("bad_magic", lambda d: b"|XYZ|" + d[5:], "bad magic"),
        ("empty", lambda d: b"", "bad magic"),
        ("header_only", lambda d: d[:40], "too small"),
    ],
)
def test_unreadable_file_fails_naming_it(cli, small, tmp_path, command, case, edit, message):
    bad = corrupted(tmp_path, small, f"{case}.tensors", edit)
    out = run(cli, command, bad)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith(f"tensorizer {command}: ")
    assert str(bad) in out.stderr
    assert message in out.stderr
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_file(cli, tmp_path, command):
    missing = tmp_path / "nope.tensors"
    out = run(cli, command, missing)
    assert out.returncode == 1
    assert out.stderr == f"tensorizer {command}: opening {missing}: No such file or directory\n"


def test_verify_corrupt_tensor_header_names_tensor(cli, small, tmp_path):
    first_header = 262217  # where writers put the first tensor record

    def clobber(data):
        data[first_header + 10] ^= 0xFF  # the tensor type byte
        return data

    bad = corrupted(tmp_path, small, "header.tensors", clobber)
    out = run(cli, "verify", bad)
    assert out.returncode == 1
    assert out.stdout.startswith("FAILED embed.weight: ")
    assert out.stdout.endswith(f"{bad}: FAILED: 1 of 7 tensors failed\n")


def write_with_names(path: Path, names, dtype=torch.float32) -> None:
    s = TensorSerializer(str(path))
    s.write_state_dict({n: torch.ones(2, dtype=dtype) for n in names})
    s.close()


def renamed(tmp_path: Path, names, old: bytes, new: bytes, file_name="bad.tensors") -> Path:
    """A file whose index and tensor headers hold `new` where the writer put
    `old` (same length), as a hostile writer would leave it."""
    assert len(old) == len(new)
    src = tmp_path / "src.tensors"
    write_with_names(src, names)
    data = src.read_bytes()
    assert old in data
    path = tmp_path / file_name
    path.write_bytes(rehashed(data.replace(old, new)))
    return path


def rehashed(data: bytes) -> bytes:
    """`data` (an unencrypted file without versioned metadata) with every
    tensor's stored CRC32 and SHA-256 recomputed, so only what the edit broke
    can fail, not its hashes."""
    out = bytearray(data)
    (count,) = struct.unpack_from("<Q", data, 57)
    at = 73
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", data, at)
        at += 2 + name_len + 1
        dtype_len = data[at]
        at += 1 + dtype_len
        ndim = data[at]
        at += 1 + 4 * ndim
        header_at, data_at, data_len = struct.unpack_from("<QQQ", data, at)
        at += 24
        # Header: size, module, type, name, dtype, shape, then the hashes.
        h = header_at + 8 + 2 + 1
        (name_len,) = struct.unpack_from("<H", data, h)
        h += 2 + name_len
        h += 1 + data[h]
        h += 1 + 4 * data[h]
        h += 2
        hashes = []
        for _ in range(data[h]):
            hashes.append((data[h + 1], h + 3, data[h + 2]))
            h += 2 + data[h + 2]
        for _, value_at, length in hashes:
            out[value_at : value_at + length] = bytes(length)
        hashed = bytes(out[header_at:data_at]) + data[data_at : data_at + data_len]
        for kind, value_at, length in hashes:
            value = (
                struct.pack("<I", zlib.crc32(hashed))
                if kind == 0
                else hashlib.sha256(hashed).digest()
            )
            out[value_at : value_at + length] = value
    return bytes(out)


# `verify --all` promises, like verify_hash="all", that every tensor was
# checked: it passed a tensor that stores no hash, listing it only in the
# summary. Now it fails, naming the tensor; without --all it warns.
@pytest.fixture
def unhashed(tmp_path):
    """A file whose last tensor, 'last', stores no hashes."""
    from test_hash_checks import without_hashes

    good = tmp_path / "good.tensors"
    s = TensorSerializer(str(good))
    s.write_state_dict({"first": torch.arange(8.0), "last": torch.full((16,), 3.0)})
    s.close()
    path = tmp_path / "unhashed.tensors"
    path.write_bytes(without_hashes(good.read_bytes(), "last"))
    return path


def test_verify_all_fails_a_tensor_without_hashes(cli, unhashed):
    out = run(cli, "verify", "--all", unhashed)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == (
        "FAILED last: stores no hash, so --all cannot check its data\n"
        f"{unhashed}: FAILED: 1 of 2 tensors failed\n"
    )


def test_verify_all_names_unhashed_and_damaged_tensors_together(cli, unhashed, tmp_path):
    data = bytearray(unhashed.read_bytes())
    data[data.index(struct.pack("<8f", *range(8)))] ^= 0x01  # first's data
    bad = tmp_path / "both.tensors"
    bad.write_bytes(bytes(data))
    out = run(cli, "verify", "--all", bad)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout
    assert lines[0].startswith("FAILED first: ") and "hash" in lines[0]
    assert lines[1] == "FAILED last: stores no hash, so --all cannot check its data"
    assert lines[2] == f"{bad}: FAILED: 2 of 2 tensors failed"


def test_verify_warns_about_a_tensor_without_hashes(cli, unhashed):
    out = run(cli, "verify", unhashed)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == (
        f"{unhashed}: OK: 2 tensors passed (1 CRC32, 0 SHA-256; 1 with no stored hash)\n"
    )
    assert out.stderr == "tensorizer verify: warning: last stores no hash; its data was not checked\n"


def test_verify_all_fails_a_safetensors_file(cli, tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4)}, str(path))
    out = run(cli, "verify", "--all", path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr == (
        f"tensorizer verify: {path} is a safetensors file, which stores no hashes, so --all"
        " cannot check its data\n"
    )


# Issue 12 #23: `verify` printed OK for files the Python loader refuses. The
# rules now live in the core's index parser, which both use.
@pytest.mark.parametrize(
    "names, old, new, message",
    [
        (["a", "b"], b"<f4", b"|V4", "unsupported dtype string '|V4'"),
        (["a", "b"], b"<f4", b"<b4", "unsupported dtype string '<b4'"),
        (["dup_1", "dup_2"], b"dup_2", b"dup_1", "'dup_1' is already used"),
        (["ok", "namex"], b"namex", b"name\xff", "not valid UTF-8"),
        (["ok", "xxxxxxxxx"], b"xxxxxxxxx", b"\x1e[[[[]]]]", "nested array"),
        (["a", "path_x"], b"path_x", b'\x1e["a"]', "'a' is already used"),
    ],
)
def test_verify_refuses_what_the_python_loader_refuses(cli, tmp_path, names, old, new, message):
    from tensorizer import TensorDeserializer

    path = renamed(tmp_path, names, old, new)
    out = run(cli, "verify", path)
    assert out.returncode == 1, out.stdout
    assert "OK" not in out.stdout
    assert str(path) in out.stderr and message in out.stderr, out.stderr
    with pytest.raises(ValueError) as info:
        TensorDeserializer(path, device="cpu")
    # One decision, one message: the core's.
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


# Issue 12 #13: a name of 32,767 nested brackets (the longest a name can be)
# made `inspect --json` recurse through it: a stack overflow, or 3.5 GB and
# 2 GB of output. It is refused at its second bracket now, and a long flat
# path is printed in output proportional to it.
def test_inspect_json_bounds_names_of_nested_brackets(cli, tmp_path):
    placeholder = b"x" * 65535
    nested = b"\x1e" + b"[" * 32767 + b"]" * 32767
    path = renamed(tmp_path, [placeholder.decode()], placeholder, nested)
    out = run(cli, "inspect", "--json", path)
    assert out.returncode == 1
    assert len(out.stdout) == 0 and len(out.stderr) < 2000, out.stderr
    assert str(path) in out.stderr and "nested array" in out.stderr

    flat = b"\x1e[" + b"0," * 32765 + b"0 ]"
    assert len(flat) == len(placeholder)
    doc = index_of(cli, renamed(tmp_path, [placeholder.decode()], placeholder, flat, "flat.tensors"))
    assert doc["tensors"][0]["path"] == [0] * 32766
    assert len(json.dumps(doc)) < 20 * len(flat)


# Issue 12 #24: control characters of safetensors keys reached stderr raw.
def test_safetensors_key_control_characters_are_escaped_on_stderr(cli, tmp_path):
    key = "evil\x1b[31m\r"
    header = json.dumps({key: {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "evil.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    for command in ("inspect", "verify"):
        out = run(cli, command, path)
        assert out.returncode == 1
        assert "\x1b" not in out.stderr and "\r" not in out.stderr, repr(out.stderr)
        assert "evil\\x1b[31m\\x0d" in out.stderr, out.stderr


# Issue 12 #22: once one tensor failed, verify re-derived the passphrase key
# in every per-tensor check (11-23 s for 40 tensors). It derives it once per
# file now, so a failing file costs about what a passing one does.
def test_verify_passphrase_derives_the_key_once_per_file(cli, tmp_path):
    from tensorizer import EncryptionParams

    good = tmp_path / "enc.tensors"
    s = TensorSerializer(str(good), encryption=EncryptionParams.from_string("pw"))
    s.write_state_dict({f"t{i}": torch.full((256,), float(i)) for i in range(16)})
    s.close()
    data = bytearray(good.read_bytes())
    data[-9] ^= 0xFF  # the last tensor's ciphertext
    bad = tmp_path / "bad.tensors"
    bad.write_bytes(bytes(data))
    env = dict(os.environ, TZR_PW="pw")

    def timed(path):
        start = time.monotonic()
        out = run(cli, "verify", "--passphrase-env", "TZR_PW", path, env=env)
        return out, time.monotonic() - start

    out, t_good = timed(good)
    assert out.returncode == 0, out.stdout + out.stderr
    out, t_bad = timed(bad)
    assert out.returncode == 1
    assert out.stdout.startswith("FAILED t15: "), out.stdout
    assert out.stdout.endswith("FAILED: 1 of 16 tensors failed\n")
    # One derivation for the file; re-deriving per tensor takes 16 times longer.
    assert t_bad < 3 * t_good + 1, (t_good, t_bad)


# Issue 12 #13: convert read a safetensors header twice and trusted the second
# read, so a source whose second read differed (here __metadata__ becomes a
# number) aborted it on an uncaught JSON exception. The header is read once.
# The server is a scripted one because only a hostile server changes its
# bytes between two reads on demand.
def test_convert_reads_a_safetensors_header_once(cli, tmp_path):
    import http.server
    import threading

    src = tmp_path / "m.safetensors"
    save_file({"a": torch.arange(4, dtype=torch.float32)}, str(src), metadata={"k": "v"})
    original = src.read_bytes()
    changed = original.replace(b'{"k":"v"}', b'{"k":123}')
    assert changed != original
    header_end = 8 + struct.unpack("<Q", original[:8])[0]
    header_reads = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(original)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self):
            m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            begin = int(m.group(1)) if m else 0
            end = int(m.group(2)) + 1 if m and m.group(2) else len(original)
            # Every read of the whole JSON after the first sees other bytes.
            body = changed if header_reads else original
            if begin <= 8 and end >= header_end:
                header_reads.append((begin, end))
            self.send_response(206 if m else 200)
            if m:
                self.send_header("Content-Range", f"bytes {begin}-{end - 1}/{len(original)}")
            self.send_header("Content-Length", str(end - begin))
            self.end_headers()
            self.wfile.write(body[begin:end])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out_path = tmp_path / "out.tensors"
        out = run(cli, "convert", f"http://127.0.0.1:{server.server_port}/m.safetensors", out_path)
    finally:
        server.shutdown()
        thread.join()
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert "__metadata__" in out.stderr  # the note on what was dropped
    assert len(header_reads) == 1, header_reads
    from tensorizer import TensorDeserializer

    with TensorDeserializer(out_path, device="cpu") as d:
        assert torch.equal(d["a"], torch.arange(4, dtype=torch.float32))


# --- bench -----------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--verify", "--threads", "2"]])
def test_bench_prints_throughput_beside_limit(cli, small, flags):
    out = run(cli, "bench", "--repeat", "2", *flags, small)
    assert out.returncode == 0, out.stderr
    keys = [line.split(":", 1)[0] for line in out.stdout.splitlines()]
    assert keys == ["file", "page cache", "load", "limit", "reads", "ratio", "machine"]
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines())
    gbs = r"\s+\d+\.\d\d GB/s  best of 2 \(\d+\.\d{3} ms\)"
    assert re.match(gbs + r", \d+ threads, hash check: ", lines["load"])
    assert re.match(gbs + r", pread into a huge-page arena, \d+ threads$", lines["limit"])
    assert re.match(r"\s+\d+\.\d\d of the limit$", lines["ratio"])
    if flags:
        assert "2 threads, hash check: fast (CRC32)" in lines["load"]
    assert f"{small.stat().st_size} bytes, 7 tensors, tensorizer data version 4" in lines["file"]


# --- usage, help, version ----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["--bogus"],
        ["inspect"],
        ["inspect", "a", "b"],
        ["inspect", "--jsn", "x"],
        ["inspect", "--json=yes", "x"],
        ["verify"],
        ["verify", "--fast", "x"],
        ["bench"],
        ["bench", "--threads", "0", "x"],
        ["bench", "--threads", "many", "x"],
        ["bench", "--repeat", "-1", "x"],
        ["bench", "x", "--threads"],
        ["help", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(cli, args):
    out = run(cli, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.strip()


def test_usage_error_message(cli):
    out = run(cli, "inspect", "--jsn", "x")
    assert out.stderr == (
        "tensorizer inspect: unknown option '--jsn'\nTry 'tensorizer inspect --help'.\n"
    )


def test_version(cli):
    for flag in ["--version", "-V"]:
        out = run(cli, flag)
        assert out.returncode == 0
        assert re.fullmatch(r"tensorizer \d+\.\d+\.\d+\n", out.stdout)


def test_main_help_lists_commands_and_exit_codes(cli):
    for args in [["--help"], ["-h"], ["help"]]:
        out = run(cli, *args)
        assert out.returncode == 0
        assert out.stdout.startswith("usage: tensorizer COMMAND")
        for command in COMMANDS:
            assert re.search(rf"^  {command} ", out.stdout, re.M)
        assert "exit status:" in out.stdout
        for code in "012":
            assert re.search(rf"^  {code}  ", out.stdout, re.M)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(cli, command):
    helps = [run(cli, command, "--help"), run(cli, command, "-h"), run(cli, "help", command)]
    for out in helps:
        assert out.returncode == 0
        assert out.stderr == ""
        assert out.stdout.startswith(f"usage: tensorizer {command} ")
        assert "exit status:" in out.stdout
    assert helps[0].stdout == helps[1].stdout == helps[2].stdout
    # --help wins over everything else on the line, even a missing file.
    assert run(cli, command, "/no/such/file", "--help").returncode == 0


# --- help: golden files and the shared remote options ---------------------------

REMOTE_OPTIONS = [
    "--s3-endpoint URL",
    "--s3-region R",
    "--s3-profile P",
    "--ca-file F",
    "--ca-path D",
    "--insecure",
    "--connect-timeout-ms N",
    "--retries N",
    "--deadline-ms N",
    "--direct-io auto|on|off",
]


@pytest.mark.parametrize("command", ["main", *ALL_COMMANDS])
def test_help_matches_golden(cli, command):
    out = run(cli, "--help") if command == "main" else run(cli, command, "--help")
    assert out.returncode == 0, out.stderr
    golden = GOLDEN_DIR / f"help_{command}.txt"
    if os.environ.get("TENSORIZER_UPDATE_GOLDEN"):
        golden.write_text(out.stdout)
    assert out.stdout == golden.read_text()


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_command_takes_the_remote_options(cli, command):
    text = run(cli, command, "--help").stdout
    for option in REMOTE_OPTIONS:
        assert f"\n  {option} " in text, option
    # Secrets never go on the command line, and the help says where they come from.
    assert "S3 credentials are never taken from the command line" in text
    assert "AWS_SECRET_ACCESS_KEY" in text
    for flag in ["--secret", "--access-key", "--s3-secret"]:
        assert flag not in text


@pytest.mark.parametrize("command", ALL_COMMANDS)
@pytest.mark.parametrize(
    "option",
    [
        ["--retries", "many"],
        ["--retries", "101"],
        ["--deadline-ms", "0"],
        ["--connect-timeout-ms", "-1"],
        ["--s3-endpoint", ""],
        ["--s3-region="],
        ["--insecure=yes"],
        ["--s3-secret-key", "x"],
        ["--direct-io", "sometimes"],
    ],
)
def test_bad_remote_options_are_usage_errors(cli, command, option):
    operands = ["s3://b/in", "s3://b/out"] if command in ("convert", "cp") else ["s3://b/k"]
    out = run(cli, command, *option, *operands)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith(f"tensorizer {command}: ")


# --- remote URIs: a real S3 server ----------------------------------------------


def s3_env(server, home: Path, *, secret=None, endpoint=None) -> dict:
    """The environment of a tool run: admin credentials from AWS_* variables,
    HOME a fresh directory (no ~/.s3cfg, no ~/.aws), and no AWS_* variable of
    this machine's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(home),
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=secret or server.secret_key,
        AWS_REGION=server.region,
        AWS_ENDPOINT_URL=endpoint or server.endpoint_url,
    )
    return env


@pytest.fixture
def env(s3_server, tmp_path_factory) -> dict:
    return s3_env(s3_server, tmp_path_factory.mktemp("home"))


def new_key(name: str) -> str:
    return f"cli/{uuid.uuid4().hex}/{name}"


def s3_bytes(server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_keys(server, bucket: str, prefix: str) -> list:
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_cp_local_to_s3_to_local_is_bit_exact(cli, s3_server, env, tmp_path):
    data = os.urandom((20 << 20) + 12345)  # two 16 MiB upload parts, the second partial
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    bucket, key = s3_server.bucket, new_key("model.bin")
    out = run(cli, "cp", src, f"s3://{bucket}/{key}", env=env)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert s3_bytes(s3_server, bucket, key) == data
    # Download, to a file and into a directory under the object's name.
    out = run(cli, "cp", f"s3://{bucket}/{key}", tmp_path / "down.bin", env=env)
    assert (out.returncode, out.stderr) == (0, "")
    assert (tmp_path / "down.bin").read_bytes() == data
    (tmp_path / "dir").mkdir()
    assert run(cli, "cp", f"s3://{bucket}/{key}", tmp_path / "dir", env=env).returncode == 0
    assert (tmp_path / "dir" / "model.bin").read_bytes() == data
    # S3 -> S3, into a key prefix (the trailing '/' appends the name).
    prefix = new_key("")
    out = run(
        cli, "cp", f"s3://{bucket}/{key}", f"s3://{s3_server.scratch_bucket}/{prefix}", env=env
    )
    assert (out.returncode, out.stderr) == (0, "")
    assert s3_keys(s3_server, s3_server.scratch_bucket, prefix) == [prefix + "model.bin"]
    assert s3_bytes(s3_server, s3_server.scratch_bucket, prefix + "model.bin") == data


def test_cp_http_to_s3(cli, s3_server, env, tmp_path):
    data = os.urandom((6 << 20) + 7)
    public = new_key("public.bin")
    s3_server.client().put_object(Bucket=s3_server.public_bucket, Key=public, Body=data)
    url = f"{s3_server.endpoint_url}/{s3_server.public_bucket}/{public}"
    key = new_key("from-http.bin")
    out = run(cli, "cp", url, f"s3://{s3_server.bucket}/{key}", env=env)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert s3_bytes(s3_server, s3_server.bucket, key) == data


def test_cp_missing_s3_object_fails_naming_it(cli, s3_server, env, tmp_path):
    uri = f"s3://{s3_server.bucket}/{new_key('missing.bin')}"
    out = run(cli, "cp", uri, tmp_path / "out.bin", env=env)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith(f"tensorizer cp: opening {uri}")
    assert "404" in out.stderr
    assert out.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cp_to_s3_with_a_wrong_secret_leaves_no_object(cli, s3_server, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1 << 20))
    wrong = "not-the-secret/0123456789abcdefghijklmn"
    env = s3_env(s3_server, tmp_path / "home", secret=wrong)
    key = new_key("denied.bin")
    out = run(cli, "cp", src, f"s3://{s3_server.bucket}/{key}", env=env)
    assert out.returncode == 1
    assert out.stderr.startswith("tensorizer cp: ")
    assert f"s3://{s3_server.bucket}/{key}" in out.stderr and "403" in out.stderr
    assert s3_server.access_key in out.stderr  # names the key id ...
    assert wrong not in out.stderr  # ... never the secret
    prefix = key.rsplit("/", 1)[0]
    assert s3_keys(s3_server, s3_server.bucket, prefix) == []
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix)
    assert uploads.get("Uploads", []) == []


def test_s3_endpoint_option_overrides_the_environment(cli, s3_server, small, tmp_path):
    # AWS_ENDPOINT_URL points at a closed port; --s3-endpoint wins over it.
    env = s3_env(s3_server, tmp_path / "home", endpoint="http://127.0.0.1:9")
    uri = f"s3://{s3_server.bucket}/{new_key('small.tensors')}"
    endpoint = ["--s3-endpoint", s3_server.endpoint_url]
    assert run(cli, "cp", *endpoint, small, uri, env=env).returncode == 0
    out = run(cli, "inspect", *endpoint, "--json", uri, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tensor_count"] == 7
    # Without it, the environment's endpoint is used (and fails at once with
    # --retries 0).
    out = run(cli, "inspect", "--retries", "0", "--connect-timeout-ms", "2000", uri, env=env)
    assert out.returncode == 1
    assert out.stderr.startswith(f"tensorizer inspect: opening {uri}")
    assert "127.0.0.1 port 9" in out.stderr


@pytest.fixture
def small_on_s3(cli, s3_server, env, small) -> str:
    uri = f"s3://{s3_server.bucket}/{new_key('small.tensors')}"
    out = run(cli, "cp", small, uri, env=env)
    assert out.returncode == 0, out.stderr
    return uri


def test_inspect_and_verify_an_s3_object(cli, small, small_on_s3, env):
    out = run(cli, "inspect", "--json", small_on_s3, env=env)
    assert out.returncode == 0, out.stderr
    remote = json.loads(out.stdout)
    local = index_of(cli, small)
    assert remote.pop("file") == small_on_s3
    local.pop("file")
    assert remote == local
    # The text report is the golden one but for the file line.
    out = run(cli, "inspect", small_on_s3, env=env)
    assert out.returncode == 0, out.stderr
    golden = (GOLDEN_DIR / "inspect_small.txt").read_text()
    assert out.stdout == golden.replace("small.tensors", small_on_s3, 1)
    out = run(cli, "verify", "--all", small_on_s3, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == f"{small_on_s3}: OK: 7 tensors passed (7 CRC32, 7 SHA-256)\n"


def test_bench_an_s3_object_prints_throughput_beside_the_limit(cli, small, small_on_s3, env):
    out = run(cli, "bench", "--repeat", "2", "--threads", "3", small_on_s3, env=env)
    assert out.returncode == 0, out.stderr
    keys = [line.split(":", 1)[0] for line in out.stdout.splitlines()]
    assert keys == ["file", "page cache", "load", "limit", "ratio", "machine"]
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines())
    assert (
        lines["file"].strip().startswith(f"{small_on_s3}, {small.stat().st_size} bytes, 7 tensors")
    )
    assert lines["page cache"].strip() == "not applicable (remote source)"
    gbs = r"\s+\d+\.\d\d GB/s  best of 2 \(\d+\.\d{3} ms\)"
    assert re.match(gbs + r", 3 threads, hash check: none$", lines["load"])
    # The limit: raw range reads through the same source, as many threads as the load.
    assert re.match(
        gbs + r", range reads through the same source into a huge-page arena, 3 threads$",
        lines["limit"],
    )
    assert re.match(r"\s+\d+\.\d\d of the limit$", lines["ratio"])


REF_LOAD = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import load_file
    from tensorizer import TensorDeserializer

    def raw(t):
        return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())

    want = load_file(sys.argv[2])
    with TensorDeserializer(sys.argv[1], verify_hash=True) as d:
        got = dict(d.items())
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype and g.shape == w.shape and raw(g) == raw(w), k
    print("ok", len(got))
    """
)


def test_convert_between_s3_objects_round_trip(cli, s3_server, env, tmp_path, ref_python):
    g = torch.Generator().manual_seed(5)
    # Dtypes in an order the safetensors package reorders, so the output's
    # data order is not the input's.
    tensors = {
        "z.half": torch.randn(300, 100, generator=g).half(),
        "a.weight": torch.randn(200, 100, generator=g),
        "m.ids": torch.arange(1000),
        "b.bf16": torch.randn(50, generator=g).to(torch.bfloat16),
        "c.mask": torch.tensor([True, False, True]),
    }
    src = tmp_path / "model.safetensors"
    save_file(tensors, str(src))
    bucket, base = s3_server.bucket, new_key("")
    st_uri, tz_uri, back_uri = (
        f"s3://{bucket}/{base}{n}" for n in ("in.safetensors", "mid.tensors", "back.safetensors")
    )
    assert run(cli, "cp", src, st_uri, env=env).returncode == 0
    out = run(cli, "convert", "--batch-bytes", "30000", st_uri, tz_uri, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{st_uri} -> {tz_uri}: 5 tensors, ")
    # The same bytes as a local conversion.
    local = tmp_path / "local.tensors"
    assert run(cli, "convert", src, local).returncode == 0
    mid = s3_bytes(s3_server, bucket, base + "mid.tensors")
    assert mid == local.read_bytes()
    out = run(cli, "convert", "--verify", "--batch-bytes", "30000", tz_uri, back_uri, env=env)
    assert out.returncode == 0, out.stderr
    assert s3_bytes(s3_server, bucket, base + "back.safetensors") == src.read_bytes()
    # The .tensors object loads in the reference tensorizer.
    downloaded = tmp_path / "downloaded.tensors"
    downloaded.write_bytes(mid)
    res = subprocess.run(
        [ref_python, "-c", REF_LOAD, str(downloaded), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok", "5"]


@pytest.mark.parametrize("command", ["inspect", "verify", "bench"])
def test_url_passwords_and_signatures_never_reach_the_output(cli, small, tmp_path, command):
    # nginx ignores the credentials and serves the file, so every command
    # runs to its normal output, which names the file.
    from nginx_server import run_nginx

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "small.tensors").write_bytes(small.read_bytes())
    with run_nginx(tmp_path) as port:
        url = (
            f"http://alice:hunter2-url-password@127.0.0.1:{port}/small.tensors"
            "?X-Amz-Signature=cafef00dsig&X-Amz-Security-Token=t0kenvalue"
        )
        extra = ["--json"] if command == "inspect" else []
        out = run(cli, command, *extra, url)
    assert out.returncode == 0, out.stderr
    shown = out.stdout + out.stderr
    assert "127.0.0.1" in shown and "small.tensors" in shown
    for secret in ["hunter2-url-password", "cafef00dsig", "t0kenvalue"]:
        assert secret not in shown
