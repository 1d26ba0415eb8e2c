"""`tensorizer convert` and `tensorizer cp` on local files: round trips, byte
identity with the files the safetensors package and tensorizer write, interop
with the reference tensorizer 2.12.1, encryption, failures and exit codes.
Remote sources and s3:// destinations are tested in test_cli.py, against a
real S3 server.

The binary under test is $TENSORIZER_CLI, as in test_cli.py. The reference
runs once, in one subprocess (importing torch is slow): it loads every
.tensors file we produced and writes the files we convert back.
"""

import json
import os
import pty
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tensorizer import DecryptionParams, TensorDeserializer, TensorSerializer, TensorType

PASSPHRASE = "correct horse battery staple"


def run(cli, *args, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [cli, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=60,
    )


def sample_tensors() -> dict:
    """Every dtype safetensors and .tensors share, odd names and shapes."""
    g = torch.Generator().manual_seed(1234)
    return {
        "model.embed.weight": torch.randn(16, 8, generator=g),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "f16": torch.randn(3, 3, generator=g).half(),
        "bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "i64": torch.arange(-3, 9).reshape(3, 4),
        "i32": torch.arange(6, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "u16": torch.tensor([1, 65535], dtype=torch.uint16),
        "u32": torch.tensor([1, 2**32 - 1], dtype=torch.uint32),
        "u64": torch.tensor([1, 2**63], dtype=torch.uint64),
        "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(2, generator=g, dtype=torch.complex64),
        "f8_e4m3": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(4, generator=g).to(torch.float8_e5m2),
        "f8_e8m0": torch.ones(2).to(torch.float8_e8m0fnu),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        'ünï "cødé"\\\n\t/': torch.ones(2),
    }


def raw(t: torch.Tensor) -> bytes:
    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def assert_same_tensors(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, w in want.items():
        g = got[k]
        assert (g.dtype, tuple(g.shape)) == (w.dtype, tuple(w.shape)), k
        assert raw(g) == raw(w), k


def data_order(path: Path) -> list:
    """Keys of a safetensors file in the order of their data."""
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: tuple(header[k]["data_offsets"]))


def listing(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir())


# --- safetensors -> .tensors -> safetensors ----------------------------------


@pytest.fixture(scope="module")
def converted(cli, tmp_path_factory):
    """.tensors files converted from a safetensors file, plain and encrypted."""
    d = tmp_path_factory.mktemp("converted")
    src = d / "in.safetensors"
    save_file(sample_tensors(), str(src))
    key_file = d / "key.bin"
    key_file.write_bytes(os.urandom(32))
    out = {"src": src, "key_file": key_file, "dir": d}
    for name, args, env in [
        ("plain", [], None),
        ("key", ["--encrypt-key-file", key_file], None),
        (
            "passphrase",
            ["--encrypt-passphrase-env", "TZR_PW", "--ops", "min", "--mem", "min"],
            {"TZR_PW": PASSPHRASE},
        ),
    ]:
        path = d / f"{name}.tensors"
        res = run(cli, "convert", *args, src, path, env=env)
        assert res.returncode == 0, res.stderr
        out[name] = path
    return out


def test_safetensors_round_trip_is_bit_exact(cli, converted, tmp_path):
    src = converted["src"]
    res = run(cli, "convert", converted["plain"], tmp_path / "back.safetensors")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert (tmp_path / "back.safetensors").read_bytes() == src.read_bytes()
    # The summary line.
    nbytes = sum(t.nbytes for t in sample_tensors().values())
    assert res.stdout == (
        f"{converted['plain']} -> {tmp_path / 'back.safetensors'}: 20 tensors,"
        f" {nbytes} data bytes, .tensors to safetensors\n"
    )


def test_tensors_output_equals_write_state_dict(cli, converted, tmp_path):
    src = converted["src"]
    tensors = load_file(str(src))
    ours = tmp_path / "ours.tensors"
    s = TensorSerializer(str(ours))
    s.write_state_dict({k: tensors[k] for k in data_order(src)})
    s.close()
    assert converted["plain"].read_bytes() == ours.read_bytes()
    # Batching does not change a byte: one tensor per batch.
    one = tmp_path / "one.tensors"
    res = run(cli, "convert", "--batch-bytes", "1", src, one)
    assert res.returncode == 0, res.stderr
    assert one.read_bytes() == ours.read_bytes()
    res = run(cli, "convert", "--batch-bytes", "1", one, tmp_path / "one.safetensors")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "one.safetensors").read_bytes() == src.read_bytes()


def test_output_format_from_flag_or_extension(cli, converted, tmp_path):
    src = converted["src"]
    # No known extension: the format the input is not.
    assert run(cli, "convert", src, tmp_path / "a.bin").returncode == 0
    assert (tmp_path / "a.bin").read_bytes() == converted["plain"].read_bytes()
    assert (
        run(cli, "convert", "--to", "safetensors", tmp_path / "a.bin", tmp_path / "b").returncode
        == 0
    )
    assert (tmp_path / "b").read_bytes() == src.read_bytes()
    # Same format in and out: a normalising copy.
    assert run(cli, "convert", src, tmp_path / "c.safetensors").returncode == 0
    assert (tmp_path / "c.safetensors").read_bytes() == src.read_bytes()


def test_metadata_is_kept_or_dropped_with_a_note(cli, tmp_path):
    src = tmp_path / "meta.safetensors"
    save_file({"x": torch.ones(2)}, str(src), metadata={"format": "pt", "b": "2"})
    res = run(cli, "convert", src, tmp_path / "m.tensors")
    assert res.returncode == 0
    assert res.stderr == (
        f"tensorizer convert: note: the __metadata__ of {src} (2 entries) has no place"
        " in a .tensors file and was not carried over\n"
    )
    res = run(cli, "convert", src, tmp_path / "m.safetensors")
    assert res.returncode == 0 and res.stderr == ""
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "b": "2"}


# --- .tensors -> safetensors ---------------------------------------------------


def test_our_tensors_file_to_safetensors(cli, tmp_path):
    g = torch.Generator().manual_seed(5)
    path = tmp_path / "ours.tensors"
    s = TensorSerializer(str(path))
    w = torch.randn(4, 3, generator=g)
    s.write_tensor(0, "layer.weight", TensorType.PARAM, w)
    s.write_tensor(1, "norm.mean", TensorType.BUFFER, torch.ones(3, dtype=torch.bfloat16))
    s.write_state_dict(
        {"blocks": [{"w": torch.arange(6).reshape(2, 3)}], "flag": torch.tensor(True)}
    )
    s.write_tensor(0, "ghost", TensorType.STATE_DICT, torch.empty(2, 5, device="meta"))
    s.close()
    out = tmp_path / "out.safetensors"
    res = run(cli, "convert", path, out)
    assert res.returncode == 0, res.stderr
    assert res.stderr == (
        "tensorizer convert: note: 1 tensor stored without data (meta) written as zeros\n"
    )
    expected = {
        "layer.weight": w,
        "norm.mean": torch.ones(3, dtype=torch.bfloat16),
        "blocks.0.w": torch.arange(6).reshape(2, 3),  # a path name, dotted
        "flag": torch.tensor(True),
        "ghost": torch.zeros(2, 5),  # meta: zeros, as it loads
    }
    assert_same_tensors(load_file(str(out)), expected)
    # What the safetensors package writes for the same tensors, byte for byte.
    save_file(expected, str(tmp_path / "expected.safetensors"))
    assert out.read_bytes() == (tmp_path / "expected.safetensors").read_bytes()


def test_colliding_keys_fail(cli, tmp_path):
    path = tmp_path / "clash.tensors"
    s = TensorSerializer(str(path))
    s.write_tensor(0, "a.b", TensorType.STATE_DICT, torch.ones(1))
    s.write_tensor(0, ["a", "b"], TensorType.STATE_DICT, torch.ones(1))
    s.close()
    res = run(cli, "convert", path, tmp_path / "clash.safetensors")
    assert res.returncode == 1
    assert "tensor 'a.b' appears twice" in res.stderr
    assert listing(tmp_path) == ["clash.tensors"]


# --- the reference tensorizer 2.12.1 ---------------------------------------------

REF_SCRIPT = textwrap.dedent(
    """
    import json, sys, traceback
    import torch
    from safetensors.torch import load_file, save_file
    from tensorizer import TensorSerializer, TensorDeserializer
    from tensorizer.serialization import EncryptionParams, DecryptionParams, TensorType

    job = json.loads(sys.argv[1])
    results = {}

    def raw(t):
        return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())

    for name, (path, src, key_file, passphrase) in job["load"].items():
        try:
            enc = None
            if key_file:
                enc = DecryptionParams.from_key(open(key_file, "rb").read())
            elif passphrase:
                enc = DecryptionParams.from_string(passphrase)
            with TensorDeserializer(path, encryption=enc, verify_hash=True) as d:
                got = {k: v for k, v in d.items()}
            want = load_file(src)
            assert list(got) == list(got) and set(got) == set(want), (list(got), list(want))
            for k in want:
                g, w = got[k], want[k]
                assert g.dtype == w.dtype and g.shape == w.shape, k
                assert raw(g) == raw(w), k
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()

    # Files written by the reference, for us to convert.
    w = job["write"]
    g = torch.Generator().manual_seed(7)
    tensors = {
        "emb.weight": torch.randn(6, 4, generator=g),
        "emb.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "counts": torch.arange(5),
        "half": torch.randn(3, generator=g).half(),
        "mask": torch.tensor([True, False]),
    }
    save_file(tensors, w["expected"])
    s = TensorSerializer(w["plain"])
    s.write_tensor(0, "emb.weight", TensorType.PARAM, tensors["emb.weight"])
    s.write_tensor(0, "emb.bias", TensorType.PARAM, tensors["emb.bias"])
    s.write_tensor(1, "counts", TensorType.BUFFER, tensors["counts"])
    s.write_state_dict({"half": tensors["half"], "mask": tensors["mask"]})
    s.close()
    params = EncryptionParams.random()
    open(w["key_file"], "wb").write(params.key)
    s = TensorSerializer(w["key"], encryption=params)
    s.write_state_dict(tensors)
    s.close()
    params = EncryptionParams.from_string(
        w["passphrase_value"],
        opslimit=EncryptionParams.OpsLimit.MIN,
        memlimit=EncryptionParams.MemLimit.MIN,
    )
    s = TensorSerializer(w["passphrase"], encryption=params)
    s.write_state_dict(tensors)
    s.close()
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def reference(converted, ref_python):
    """Runs the reference once: it loads our outputs and writes its own files."""
    d = converted["dir"]
    src, key_file = str(converted["src"]), str(converted["key_file"])
    write = {
        "expected": str(d / "ref_expected.safetensors"),
        "plain": str(d / "ref_plain.tensors"),
        "key": str(d / "ref_key.tensors"),
        "key_file": str(d / "ref_key.bin"),
        "passphrase": str(d / "ref_passphrase.tensors"),
        "passphrase_value": PASSPHRASE,
    }
    job = {
        "load": {
            "plain": [str(converted["plain"]), src, None, None],
            "key": [str(converted["key"]), src, key_file, None],
            "passphrase": [str(converted["passphrase"]), src, None, PASSPHRASE],
        },
        "write": write,
    }
    res = subprocess.run(
        [ref_python, "-c", REF_SCRIPT, json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return {"loaded": json.loads(res.stdout.splitlines()[-1]), "files": write}


@pytest.mark.parametrize("name", ["plain", "key", "passphrase"])
def test_converted_tensors_load_in_the_reference(reference, name):
    assert reference["loaded"][name] == "ok", reference["loaded"][name]


@pytest.mark.parametrize(
    ("name", "key_args", "env"),
    [
        ("plain", [], None),
        ("key", ["--key-file", "KEY"], None),
        ("passphrase", ["--passphrase-env", "TZR_PW"], {"TZR_PW": PASSPHRASE}),
    ],
)
def test_reference_tensors_to_safetensors(cli, reference, tmp_path, name, key_args, env):
    files = reference["files"]
    key_args = [files["key_file"] if a == "KEY" else a for a in key_args]
    out = tmp_path / "out.safetensors"
    res = run(cli, "convert", "--verify", *key_args, files[name], out, env=env)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == Path(files["expected"]).read_bytes()


# --- encryption ----------------------------------------------------------------


def test_encrypted_output_loads_in_ours(converted):
    want = load_file(str(converted["src"]))
    for name, params in [
        ("key", DecryptionParams.from_key(converted["key_file"].read_bytes())),
        ("passphrase", DecryptionParams.from_string(PASSPHRASE)),
    ]:
        with TensorDeserializer(str(converted[name]), encryption=params, verify_hash=True) as d:
            assert_same_tensors(dict(d.items()), want)


def test_verify_and_convert_encrypted_need_the_key(cli, converted, tmp_path):
    enc, key_file = converted["key"], converted["key_file"]
    res = run(cli, "verify", enc)
    assert res.returncode == 1
    assert res.stderr == (
        f"tensorizer verify: {enc} is encrypted: give --key-file or --passphrase-env"
        " to decrypt it and check its hashes\n"
    )
    res = run(cli, "verify", "--all", "--key-file", key_file, enc)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == f"{enc}: OK: 20 tensors passed (0 CRC32, 20 SHA-256)\n"
    res = run(
        cli,
        "verify",
        "--passphrase-env",
        "TZR_PW",
        converted["passphrase"],
        env={"TZR_PW": PASSPHRASE},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(bytes(32))
    res = run(cli, "verify", "--key-file", wrong, enc)
    assert res.returncode == 1
    assert "FAILED: 19 of 20 tensors failed" in res.stdout  # the empty tensor has no MAC to fail
    # Decrypting back gives the original file, and the unencrypted conversion.
    out = tmp_path / "dec.safetensors"
    assert run(cli, "convert", "--key-file", key_file, enc, out).returncode == 0
    assert out.read_bytes() == converted["src"].read_bytes()
    out = tmp_path / "dec.tensors"
    assert run(cli, "convert", "--key-file", key_file, enc, out).returncode == 0
    assert out.read_bytes() == converted["plain"].read_bytes()
    # Without the key, or with a wrong one: no output.
    res = run(cli, "convert", enc, tmp_path / "x.safetensors")
    assert res.returncode == 1
    assert res.stderr == (
        f"tensorizer convert: {enc} is encrypted: converting it needs its key or passphrase\n"
    )
    res = run(cli, "convert", "--key-file", wrong, enc, tmp_path / "x.safetensors")
    assert res.returncode == 1
    assert "tensorizer convert: " in res.stderr
    assert listing(tmp_path) == ["dec.safetensors", "dec.tensors", "wrong.bin"]


# --- failures leave nothing behind ------------------------------------------------


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize(
    ("dtype", "shown"),
    [
        (torch.complex128, "<c16"),
        (torch.complex32, "torch.complex32"),
        (torch.float8_e4m3fnuz, "torch.float8_e4m3fnuz"),
        (torch.float8_e5m2fnuz, "torch.float8_e5m2fnuz"),
    ],
)
def test_unsupported_dtype_fails_without_output(cli, tmp_path, dtype, shown):
    path = tmp_path / "in.tensors"
    s = TensorSerializer(str(path))
    s.write_tensor(0, "fine", TensorType.PARAM, torch.ones(3))
    s.write_tensor(0, "odd", TensorType.PARAM, torch.zeros(2, dtype=dtype))
    s.close()
    res = run(cli, "convert", path, tmp_path / "out.safetensors")
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.startswith("tensorizer convert: ")
    assert f"tensor 'odd': dtype {shown} cannot be stored in a safetensors file" in res.stderr
    assert listing(tmp_path) == ["in.tensors"]


def test_hash_mismatch_with_verify_fails_without_output(cli, converted, tmp_path):
    doc = json.loads(run(cli, "inspect", "--json", converted["plain"]).stdout)
    offset = {t["name"]: t["data_offset"] for t in doc["tensors"]}["i64"]
    bad = tmp_path / "bad.tensors"
    blob = bytearray(converted["plain"].read_bytes())
    blob[offset + 3] ^= 0x10
    bad.write_bytes(bytes(blob))
    res = run(cli, "convert", "--verify", "--batch-bytes", "64", bad, tmp_path / "out.safetensors")
    assert res.returncode == 1
    assert "Tensor 'i64'" in res.stderr and "failed CRC32 verification" in res.stderr
    assert listing(tmp_path) == ["bad.tensors"]
    # Without --verify the bytes are converted as they are.
    res = run(cli, "convert", bad, tmp_path / "out.safetensors")
    assert res.returncode == 0


def test_unreadable_input_fails(cli, tmp_path):
    missing = tmp_path / "nope.safetensors"
    res = run(cli, "convert", missing, tmp_path / "out.tensors")
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == f"tensorizer convert: opening {missing}: No such file or directory\n"
    junk = tmp_path / "junk.tensors"
    junk.write_bytes(b"not a tensors file at all, not even close" * 3)
    res = run(cli, "convert", junk, tmp_path / "out.safetensors")
    assert res.returncode == 1 and str(junk) in res.stderr
    assert listing(tmp_path) == ["junk.tensors"]


# --- cp --------------------------------------------------------------------------


def test_cp_copies_bytes_exactly(cli, tmp_path):
    data = os.urandom((20 << 20) + 12345)  # more than one 16 MiB chunk
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    res = run(cli, "cp", src, tmp_path / "dst.bin")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert (tmp_path / "dst.bin").read_bytes() == data
    # Into an existing directory, and through file:// URIs.
    (tmp_path / "dir").mkdir()
    assert run(cli, "cp", f"file://{src}", tmp_path / "dir").returncode == 0
    assert (tmp_path / "dir" / "src.bin").read_bytes() == data
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert run(cli, "cp", empty, f"file://{tmp_path}/empty2").returncode == 0
    assert (tmp_path / "empty2").read_bytes() == b""


@pytest.mark.parametrize("command", ["cp", "convert"])
def test_unwritable_schemes_are_refused(cli, converted, tmp_path, command):
    # Remote sources and s3:// destinations work (tests/test_cli.py, against a
    # real S3 server); nothing writes to http(s):// or redis://.
    src = converted["plain"]
    for dst in ["https://example.com/m.tensors", "redis://localhost/m"]:
        scheme = dst.split(":", 1)[0]
        res = run(cli, command, src, dst)
        assert res.returncode == 1
        assert res.stdout == ""
        assert res.stderr == (
            f"tensorizer {command}: cannot write to '{scheme}' URIs ({dst}):"
            " only local paths and s3:// are writable\n"
        )
    assert listing(tmp_path) == []


def test_cp_into_a_missing_directory_fails(cli, tmp_path):
    (tmp_path / "src").write_bytes(b"x")
    res = run(cli, "cp", tmp_path / "src", f"{tmp_path}/nodir/")
    assert res.returncode == 1
    assert res.stderr == f"tensorizer cp: copying into {tmp_path}/nodir/: no such directory\n"
    assert listing(tmp_path) == ["src"]


def test_cp_missing_source(cli, tmp_path):
    res = run(cli, "cp", tmp_path / "nope", tmp_path / "dst")
    assert res.returncode == 1
    assert res.stderr == f"tensorizer cp: opening {tmp_path / 'nope'}: No such file or directory\n"
    assert listing(tmp_path) == []


def test_cp_progress_bar_only_on_a_terminal(cli, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1 << 20))
    master, slave = pty.openpty()
    try:
        res = subprocess.run(
            [cli, "cp", str(src), str(tmp_path / "dst.bin")],
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=60,
        )
        os.close(slave)
        slave = -1
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert res.returncode == 0
    assert res.stdout == b""
    assert b"100%" in shown and b"1.0 MiB / 1.0 MiB" in shown, shown
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()


# --- usage -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["convert"],
        ["convert", "a"],
        ["convert", "a", "b", "c"],
        ["convert", "--to", "npz", "a", "b"],
        ["convert", "--bogus", "a", "b"],
        ["convert", "--batch-bytes", "0", "a", "b"],
        ["convert", "--key-file", "k", "--passphrase-env", "P", "a", "b"],
        ["convert", "--encrypt-key-file", "k", "--encrypt-passphrase-env", "P", "a", "b"],
        ["convert", "--ops", "min", "a", "b"],
        ["convert", "--encrypt-passphrase-env", "P", "--mem", "lots", "a", "b"],
        ["convert", "--encrypt-passphrase-env", "P", "--ops", "0", "a", "b"],
        ["convert", "--to", "safetensors", "--encrypt-key-file", "k", "a", "b"],
        ["verify", "--key-file", "k", "--passphrase-env", "P", "a"],
        ["cp"],
        ["cp", "a"],
        ["cp", "a", "b", "c"],
        ["cp", "--progress", "a", "b"],
    ],
)
def test_usage_errors_exit_2(cli, args):
    res = run(cli, *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == ""
    assert res.stderr.startswith(f"tensorizer {args[0]}: ")
    assert res.stderr.endswith(f"Try 'tensorizer {args[0]} --help'.\n")


def test_key_problems_exit_1(cli, converted, tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes(b"x" * 31)
    src = converted["src"]
    for args, env, message in [
        (["--encrypt-key-file", short], None, f"key file {short} must hold exactly 32 raw bytes"),
        (["--encrypt-key-file", tmp_path / "none"], None, "No such file or directory"),
        (["--encrypt-passphrase-env", "TZR_UNSET_VAR"], None, "TZR_UNSET_VAR is not set"),
        (["--encrypt-passphrase-env", "TZR_PW"], {"TZR_PW": ""}, "TZR_PW is empty"),
    ]:
        env = {"TZR_UNSET_VAR": None, **(env or {})}
        full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        res = subprocess.run(
            [cli, "convert", *map(str, args), str(src), str(tmp_path / "o.tensors")],
            capture_output=True,
            text=True,
            env=full,
        )
        assert res.returncode == 1, (args, res.stderr)
        assert message in res.stderr
    res = run(cli, "convert", "--key-file", short, src, tmp_path / "o.tensors")
    assert res.returncode == 1
    # A key for a file that is not encrypted is refused.
    key = converted["key_file"]
    res = run(cli, "convert", "--key-file", key, src, tmp_path / "o.tensors")
    assert res.returncode == 1
    assert "is not encrypted, but a key or passphrase was given" in res.stderr
    assert listing(tmp_path) == ["short.bin"]


@pytest.mark.parametrize("command", ["convert", "cp"])
def test_help(cli, command):
    helps = [run(cli, command, "--help"), run(cli, command, "-h"), run(cli, "help", command)]
    for res in helps:
        assert res.returncode == 0 and res.stderr == ""
        assert res.stdout.startswith(f"usage: tensorizer {command} ")
        assert "exit status:" in res.stdout
    assert helps[0].stdout == helps[1].stdout == helps[2].stdout
    main = run(cli, "--help").stdout
    assert f"\n  {command} " in main
