"""Golden tests of the `tensorizer` command-line tool: its output and exit codes.

The binary under test is $TENSORIZER_CLI (scripts/test.sh points it at
build/cpp/tensorizer). Files are written with our Python package.
Regenerate a golden file after an intended change of the output with
TENSORIZER_UPDATE_GOLDEN=1 and review the diff.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tensorizer import TensorSerializer, TensorType

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
COMMANDS = ["inspect", "verify", "bench"]


def run(cli, *args, cwd=None):
    return subprocess.run(
        [cli, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60
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


# --- bench -----------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--verify", "--threads", "2"]])
def test_bench_prints_throughput_beside_limit(cli, small, flags):
    out = run(cli, "bench", "--repeat", "2", *flags, small)
    assert out.returncode == 0, out.stderr
    keys = [line.split(":", 1)[0] for line in out.stdout.splitlines()]
    assert keys == ["file", "page cache", "load", "limit", "ratio", "machine"]
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
