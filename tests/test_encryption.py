"""Encryption beside tensorizer 2.12.1 (issue 4, part 1).

* EncryptionParams / DecryptionParams: for a table of valid and invalid
  inputs, ours and the reference give the same result or raise the same
  exception type with the same message.
* Files the reference encrypts (random key; passphrase with OpsLimit.MIN,
  MemLimit.MIN and a fixed salt; with and without a meta tensor; several
  dtypes including bfloat16; tensors spanning several 2 MiB crypt chunks)
  load in ours bit-exact, eager and lazy, with every verify_hash level and
  1 or 4 readers.
* Ours encrypts the same payloads: the reference loads them bit-exact, and our
  file has the reference's layout byte for byte except nonces, MACs and
  ciphertext (ranges computed from the headers by `parse_tensors_file`).
* Zero-element tensors (the reference cannot write them encrypted): ours
  writes them, ours and the reference read them.
* Errors: missing key, key for an unencrypted file, wrong key or passphrase,
  passphrase for a random-key file, tampered ciphertext, MACs, nonces and
  crypt headers. The reference's outcome on its own files is the truth; the
  load raises the same exception type at the same stage and never yields the
  tampered tensor.

The reference runs in two subprocesses (importing torch dominates their
cost): the first writes its files and evaluates everything that needs only
them, the second loads the files ours wrote. Both import this module, so the
payloads, the digests and the file parser are the same code on both sides;
nothing at module level may depend on which tensorizer is importable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import struct
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REF_VERSION = "2.12.1"

PASSPHRASE = "correct horse battery staple \N{CHECK MARK}"
SALT = bytes(range(0x10, 0x20))  # fixed 16-byte salt, so layouts compare
MIB = 1 << 20
CRYPT_CHUNK = 2 * MIB
MEMLIMIT_MAX = 4398046510080

# --------------------------------------------------------------------------
# Shared by both interpreters: payloads, digests, loads, the file parser
# --------------------------------------------------------------------------


def payload(meta: bool = False, zero: bool = False, opaque_empty: bool = False) -> dict:
    """A state dict; deterministic, so both interpreters build the same one."""
    g = torch.Generator().manual_seed(20251129)
    d = {
        # 5 MiB + 12 bytes of float32: three crypt chunks, the last short.
        "big": torch.randn((5 * MIB + 12) // 4, generator=g),
        "w.f16": torch.randn(17, 3, generator=g).half(),
        "w.bf16": torch.randn(33, generator=g).bfloat16(),
    }
    if meta:
        d["meta.f32"] = torch.empty(4, 5, device="meta")
    d.update(
        {
            # Exactly two full crypt chunks.
            "exact": torch.randint(-(2**15), 2**15, (2 * MIB,), dtype=torch.int16, generator=g),
            "i64": torch.arange(-50, 50, dtype=torch.int64) * 1_000_000_007,
            "u8": torch.randint(0, 256, (31,), dtype=torch.uint8, generator=g),
            "flags": torch.tensor([True, False, True]),
            "scalar": torch.tensor(3.5, dtype=torch.float64),
            "c64": torch.randn(5, dtype=torch.complex64, generator=g),
        }
    )
    if meta:
        d["meta.i32"] = torch.empty(7, dtype=torch.int32, device="meta")
    if zero:
        d["empty"] = torch.empty(0)
        d["empty.2d"] = torch.empty(0, 4, dtype=torch.float16)
    if opaque_empty:
        d["empty.bf16"] = torch.empty(3, 0, dtype=torch.bfloat16)
    return d


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def digest(t: torch.Tensor) -> list:
    return [str(t.dtype), list(t.shape), hashlib.sha256(tensor_bytes(t)).hexdigest()]


def expected_digests(**payload_kwargs) -> dict:
    """What a load must return: meta tensors read back as zeros."""
    out = {}
    for name, t in payload(**payload_kwargs).items():
        if t.device.type == "meta":
            t = torch.zeros(t.shape, dtype=t.dtype)
        out[name] = digest(t)
    return out


PAYLOADS = {
    # file stem -> (payload kwargs, "random" | "passphrase")
    "random": ({}, "random"),
    "passphrase": ({}, "passphrase"),
    "random_meta": ({"meta": True}, "random"),
    "passphrase_meta": ({"meta": True}, "passphrase"),
}
ZERO_PAYLOADS = {
    "random_zero": ({"zero": True}, "random"),
    "passphrase_zero": ({"zero": True}, "passphrase"),
    "random_zero_bf16": ({"zero": True, "opaque_empty": True}, "random"),
}
# The reference cannot read an empty tensor of an opaque dtype, encrypted or
# not (TypeError "data type '<V2\x00torch.bfloat16' not understood"; see
# interop_cases.empty_opaque_payload): only ours reads that file.
REF_CANNOT_READ = {"random_zero_bf16"}


def write_encrypted(tz, path: str, kind: str, payload_kwargs: dict) -> str:
    """Write payload(**payload_kwargs) encrypted; return the key (hex)."""
    if kind == "random":
        encryption = tz.EncryptionParams.random()
    else:
        encryption = tz.EncryptionParams.from_string(
            PASSPHRASE,
            opslimit=tz.EncryptionParams.OpsLimit.MIN,
            memlimit=tz.EncryptionParams.MemLimit.MIN,
            salt=SALT,
        )
    serializer = tz.TensorSerializer(path, encryption=encryption)
    serializer.write_state_dict(payload(**payload_kwargs))
    serializer.close()
    return bytes(encryption.key).hex()


def decryption(tz, dec):
    """dec: None, {"key": hex} or {"source": str}."""
    if dec is None:
        return None
    if "key" in dec:
        return tz.DecryptionParams.from_key(bytes.fromhex(dec["key"]))
    return tz.DecryptionParams.from_string(dec["source"])


def error_record(exc: BaseException) -> list:
    """[type name, message, names of the type and its bases]."""
    return [type(exc).__name__, str(exc), [c.__name__ for c in type(exc).__mro__]]


def load_digests(tz, path: str, dec, lazy=False, verify_hash=False, num_readers=None) -> dict:
    """Load every tensor; {"ok": {name: digest}} or {"error": [...], "stage": ...}.

    The stage is where the load raised: "init" (the constructor, which loads
    everything when eager) or "read" (iterating the Mapping).
    """
    kwargs = {"device": "cpu", "lazy_load": lazy, "verify_hash": verify_hash}
    if num_readers is not None:
        kwargs["num_readers"] = num_readers
    stage = "init"
    try:
        d = tz.TensorDeserializer(path, encryption=decryption(tz, dec), **kwargs)
        try:
            stage = "read"
            out = {name: digest(t) for name, t in d.items()}
        finally:
            d.close()
    except Exception as exc:
        return {"error": error_record(exc), "stage": stage}
    return {"ok": out}


def parse_tensors_file(data: bytes) -> dict:
    """Parse a .tensors file down to every field's byte range.

    Independent of both implementations; follows the format notes
    (shared/research/tensorizer.md §1.1-1.9). Raises on anything unexpected.
    """

    def u(fmt, off):
        return struct.unpack_from("<" + fmt, data, off)[0]

    assert data[:5] == b"|TZR|", data[:5]
    version = u("I", 5)
    flags = int.from_bytes(data[9:41], "little")
    has_crypt = version == 3 or (version >= 4 and flags & 1)
    versioned = bool(flags & 2)
    out = {
        "version": version,
        "flags": flags,
        "tensor_size": u("Q", 41),
        "count": u("Q", 57),
        "metadata_length": u("Q", 65),
        "entries": [],
        "tensors": [],
    }
    off = 73
    for _ in range(out["count"]):
        tag = 1
        if versioned:
            tag = u("I", off)
            off += 4
        dim = "Q" if tag == 5 else "I"
        start = off
        n = u("H", off)
        name = data[off + 2 : off + 2 + n].decode()
        off += 2 + n
        ttype = data[off]
        dlen = data[off + 1]
        dtype = data[off + 2 : off + 2 + dlen].decode()
        off += 2 + dlen
        ndim = data[off]
        shape = list(struct.unpack_from(f"<{ndim}{dim}", data, off + 1))
        off += 1 + ndim * struct.calcsize(dim)
        header_off, data_off, data_len = struct.unpack_from("<QQQ", data, off)
        off += 24
        out["entries"].append(
            {
                "range": (start, off),
                "name": name,
                "type": ttype,
                "dtype": dtype,
                "shape": shape,
                "header_offset": header_off,
                "data_offset": data_off,
                "data_length": data_len,
                "dim": dim,
            }
        )
    assert off <= 73 + out["metadata_length"]
    for entry in out["entries"]:
        out["tensors"].append(_parse_tensor_header(data, entry, has_crypt))
    last = out["tensors"][-1]
    assert u("Q", last["data_range"][1]) == 0, "no end-of-tensors marker"
    assert last["data_range"][1] + 8 == len(data), "bytes after the end marker"
    return out


def _parse_tensor_header(data: bytes, entry: dict, has_crypt: bool) -> dict:
    def u(fmt, off):
        return struct.unpack_from("<" + fmt, data, off)[0]

    h = entry["header_offset"]
    size = u("Q", h)
    off = h + 11
    n = u("H", off)
    name = data[off + 2 : off + 2 + n].decode()
    off += 2 + n
    off += 1 + data[off]  # dtype
    ndim = data[off]
    off += 1 + ndim * struct.calcsize(entry["dim"])
    hash_len = u("H", off)
    hashes = []
    p = off + 3
    for _ in range(data[off + 2]):
        hashes.append({"type": data[p], "range": (p + 2, p + 2 + data[p + 1])})
        p += 2 + data[p + 1]
    assert p == off + 2 + hash_len, name
    off = p
    t = {
        "name": name,
        "header_range": (h, h + size),
        "data_range": (h + size, h + size + u("q", h + size - 8)),
        "hashes": hashes,
        "kdf": None,
        "cipher": None,
        "crypt_range": None,
    }
    assert name == entry["name"] and h + size == entry["data_offset"], name
    assert t["data_range"][1] - t["data_range"][0] == entry["data_length"], name
    if has_crypt:
        cl = u("Q", off)
        t["crypt_range"] = (off, off + 8 + cl)
        p = off + 10
        for _ in range(u("H", off + 8)):
            chunk_len = u("Q", p)
            body = p + 10  # after chunk_len and chunk_type
            kind = u("H", p + 8)
            if kind == 1:
                assert u("H", body) == 1, "derivation method"
                salt_len = u("H", body + 22)
                t["kdf"] = {
                    "opslimit": u("Q", body + 2),
                    "opslimit_offset": body + 2,
                    "memlimit": u("Q", body + 10),
                    "memlimit_offset": body + 10,
                    "alg": u("i", body + 18),
                    "salt_range": (body + 24, body + 24 + salt_len),
                }
            elif kind == 2:
                num_macs = u("Q", body + 32)
                t["cipher"] = {
                    "type": 2,
                    "chunk_size": u("Q", body),
                    "chunk_size_offset": body,
                    "nonce_range": (body + 8, body + 32),
                    "mac_ranges": [
                        (body + 40 + 16 * i, body + 56 + 16 * i) for i in range(num_macs)
                    ],
                }
            elif kind == 3:
                t["cipher"] = {
                    "type": 3,
                    "nonce_range": (body, body + 24),
                    "mac_ranges": [(body + 24, body + 40)],
                }
            else:
                raise AssertionError(f"{name}: crypt chunk type {kind}")
            p += 8 + chunk_len
        assert p == off + 8 + cl, name
        off = p
    assert off == h + size - 8, name
    return t


def masked(data: bytes, parsed: dict) -> bytearray:
    """data with nonces, MACs and ciphertext zeroed: what may differ between
    two encryptions of the same tensors with the same salt."""
    out = bytearray(data)
    for t in parsed["tensors"]:
        c = t["cipher"]
        if c is None:
            continue
        ranges = [c["nonce_range"], *c["mac_ranges"], t["data_range"]]
        for a, b in ranges:
            out[a:b] = bytes(b - a)
    return out


# --------------------------------------------------------------------------
# The params API table
# --------------------------------------------------------------------------

PARAM_CASES = [
    # EncryptionParams(key)
    "E(b'k' * 32)",
    "E(bytearray(b'k' * 32))",
    "E(memoryview(b'k' * 32))",
    "E(b'k' * 32).key",
    "type(E(bytearray(b'k' * 32)).key)",
    "E('k' * 32)",
    "E(None)",
    "E(list(range(32)))",
    "E(b'k' * 31)",
    "E(b'k' * 33)",
    "E(b'')",
    "E()",
    "E(key=b'k' * 32)",
    "E(b'k' * 32).salt",
    "E(b'k' * 32) == E(b'k' * 32)",
    "E(b'k' * 32) == E(b'j' * 32)",
    "hash(E(b'k' * 32))",
    "setattr(E(b'k' * 32), 'extra', 1)",
    "[f.name for f in dataclasses.fields(E)]",
    # random()
    "type(E.random())",
    "type(E.random().key)",
    "len(E.random().key)",
    "E.random().key != E.random().key",
    "E.random()._algorithm",
    "E.random().salt",
    # from_string: valid
    "E.from_string('pw', E.OpsLimit.MIN, E.MemLimit.MIN, S)",
    "E.from_string('pw', 1, 8192, S)",
    "E.from_string(b'pw', 1, 8192, salt=S)",
    "E.from_string('pw', True, 8192, S)",
    "E.from_string('pw', 2, 16384, bytearray(S))",
    "E.from_string('pw', 1, 8192, S).key",
    "E.from_string('pw', 1, 8192, memoryview(S)).key",
    "E.from_string('pw', 1, 8192, memoryview(bytearray(S)))",
    "E.from_string('p\\u00e4ss', 1, 8192, S)",
    "E.from_string('p\\u00e4ss', 1, 8192, S, encoding='latin-1')",
    "E.from_string('pw', 1, 8192, S, encoding='utf-16')",
    "E.from_string('pw', opslimit=1, memlimit=8192, salt=S).salt",
    "E.from_string('pw', 1, 8192, S).key",
    "len(E.from_string('pw', 1, 8192).salt)",
    "E.from_string('pw', 1, 8192).salt != E.from_string('pw', 1, 8192).salt",
    "E.from_string('pw', salt=S)",  # MODERATE defaults: ~0.5 s
    "E.from_string('pw', 1, 8192, S) == E.from_string('pw', 1, 8192, S)",
    "E.from_string('pw', 1, 8192, S) == E.from_string('pw', 1, 8192, S[::-1])",
    "(p := E.from_string('pw', 1, 8192, S)) == E(p.key)",
    # from_string: invalid
    "E.from_string('')",
    "E.from_string(b'')",
    "E.from_string(None)",
    "E.from_string(0)",
    "E.from_string(5, 1, 8192, S)",
    "E.from_string(bytearray(b'pw'), 1, 8192, S)",
    "E.from_string(['pw'], 1, 8192, S)",
    "E.from_string('pw', E.MemLimit.MIN, 8192)",
    "E.from_string('pw', 1, E.OpsLimit.MIN)",
    "E.from_string('pw', 1.0, 8192)",
    "E.from_string('pw', 1, '8192')",
    "E.from_string('pw', 0, 8192)",
    "E.from_string('pw', -1, 8192)",
    "E.from_string('pw', 2**32, 8192)",
    "E.from_string('pw', False, 8192)",
    "E.from_string('pw', 1, 8191)",
    "E.from_string('pw', 1, 0)",
    f"E.from_string('pw', 1, {MEMLIMIT_MAX + 1})",
    "E.from_string('pw', 1, 8192, 'sixteen chars!!!')",
    "E.from_string('pw', 1, 8192, 5)",
    "E.from_string('pw', 1, 8192, b'short')",
    "E.from_string('pw', 1, 8192, b'x' * 17)",
    "E.from_string('pw', 1, 8192, b'')",
    "E.from_string('pw', 0, 8192, b'short')",
    "E.from_string('', 'bad', 'bad', 'bad')",
    "E.from_string('p\\u00e4ss', 1, 8192, encoding='ascii')",
    "E.from_string('pw', 1, 8192, encoding='no-such-codec')",
    "E.from_string('pw', 1, 8192, S, 'utf-8')",
    # the enums
    "list(E.OpsLimit)",
    "list(E.MemLimit)",
    "E.OpsLimit.__qualname__",
    "E.MemLimit.__qualname__",
    "E.OpsLimit(3)",
    "E.MemLimit(8192)",
    "E.OpsLimit(5)",
    "E.MemLimit.SENSITIVE == 1 << 30",
    "issubclass(E.OpsLimit, int) and issubclass(E.MemLimit, int)",
    # signatures
    "str(inspect.signature(E))",
    "str(inspect.signature(E.random))",
    "str(inspect.signature(E.from_string))",
    "str(inspect.signature(D))",
    "str(inspect.signature(D.from_string))",
    "str(inspect.signature(D.from_key))",
    # DecryptionParams
    "D()",
    "D(b'k' * 32)",
    "D.from_key(b'k' * 32)",
    "D.from_key(bytearray(b'k' * 32))",
    "D.from_key('k' * 32)",
    "D.from_key(b'')",
    "D.from_key(None)",
    "D.from_key(b'k' * 31)",
    "D.from_key(b'k' * 33)",
    "D.from_key(5)",
    "D.from_string('pw')",
    "D.from_string(b'pw')",
    "D.from_string('p\\u00e4ss')",
    "D.from_string('pw', encoding='utf-16')",
    "D.from_string('pw', 'utf-8')",
    "D.from_string('')",
    "D.from_string(b'')",
    "D.from_string(None)",
    "D.from_string(bytearray(b'pw'))",
    "D.from_string(5)",
    "D.from_string('p\\u00e4ss', encoding='ascii')",
    "D.from_key(b'k' * 32) == D.from_key(b'k' * 32)",
    "D.from_key(b'k' * 32) == D.from_string('k' * 32)",
    "D() == D()",
    "hash(D())",
    "[f.name for f in dataclasses.fields(D)]",
    "D.from_key(b'k' * 32).source",
    "D.from_string('pw').key",
]
# Argon2id cannot allocate 4 TiB: libsodium fails fast, unless the kernel
# overcommits without limit (vm.overcommit_memory=1) and tries to fill it.
OOM_CASE = f"E.from_string('pw', 1, {MEMLIMIT_MAX}, S)"


def _normalize(text: str) -> str:
    return re.sub(r"0x[0-9a-fA-F]+", "0x?", text)


def evaluate_params_cases(tz, cases: list) -> list:
    ns = {
        "E": tz.EncryptionParams,
        "D": tz.DecryptionParams,
        "dataclasses": dataclasses,
        "inspect": inspect,
        "S": SALT,
    }
    table = []
    for expr in cases:
        try:
            value = eval(expr, dict(ns))
        except Exception as exc:
            table.append(["raise", type(exc).__name__, _normalize(str(exc))])
        else:
            table.append(["value", _normalize(repr(value))])
    return table


# --------------------------------------------------------------------------
# The reference side (runs in the reference interpreter)
# --------------------------------------------------------------------------

# Load options for ours on the reference's files.
LOAD_OPTIONS = [
    {"lazy": lazy, "verify_hash": vh, "num_readers": nr}
    for lazy in (False, True)
    for vh in (True, "all")
    for nr in (1, 4)
]


def tamper_specs(parsed: dict, huge_memlimit: bool) -> dict:
    """name -> (file stem, [(offset, xor mask)]), offsets from the headers.

    huge_memlimit adds a KDF chunk asking Argon2id for 2 TiB, which the
    reference tries (and fails) to allocate; only where such a malloc fails
    rather than overcommits.
    """
    rnd, pw = parsed["random"], parsed["passphrase"]

    def tensor(p, name):
        return next(t for t in p["tensors"] if t["name"] == name)

    big = tensor(rnd, "big")
    assert len(big["cipher"]["mac_ranges"]) == 3, big["cipher"]
    chunk_size_off = big["cipher"]["chunk_size_offset"]
    specs = {
        # A ciphertext byte in the second crypt chunk of a 3-chunk tensor.
        "ciphertext_chunked": ("random", [(big["data_range"][0] + CRYPT_CHUNK + 12345, 0x01)]),
        # A ciphertext byte in a single-chunk tensor.
        "ciphertext_small": ("random", [(tensor(rnd, "w.f16")["data_range"][0] + 5, 0x80)]),
        # The last ciphertext byte of the file's last chunked tensor.
        "ciphertext_last": ("random", [(tensor(rnd, "exact")["data_range"][1] - 1, 0x10)]),
        "mac_chunked": ("random", [(big["cipher"]["mac_ranges"][2][0] + 7, 0x01)]),
        "mac_small": ("random", [(tensor(rnd, "i64")["cipher"]["mac_ranges"][0][1] - 1, 0x40)]),
        "nonce_chunked": ("random", [(big["cipher"]["nonce_range"][0], 0x01)]),
        "nonce_small": ("random", [(tensor(rnd, "u8")["cipher"]["nonce_range"][1] - 1, 0x02)]),
        # The crypt chunk size of a 3-chunk tensor halved (1 MiB: still valid).
        "chunk_size": ("random", [(chunk_size_off + 2, 0x30)]),
        # The KDF salt and opslimit of one tensor: another key for it.
        "salt": ("passphrase", [(tensor(pw, "w.bf16")["kdf"]["salt_range"][0] + 3, 0x04)]),
        "opslimit": ("passphrase", [(tensor(pw, "scalar")["kdf"]["opslimit_offset"], 0x03)]),
    }
    if huge_memlimit:
        # Bit 41: 2 TiB + 8 KiB, inside libsodium's range.
        offset = tensor(pw, "u8")["kdf"]["memlimit_offset"] + 5
        specs["memlimit"] = ("passphrase", [(offset, 0x02)])
    return specs


def error_cases(files: dict, keys: dict, plain: dict, tampered: dict) -> dict:
    """name -> load_digests arguments that must fail."""
    rnd_key = {"key": keys["random"]}
    pw = {"source": PASSPHRASE}
    cases = {}
    for lazy in (False, True):
        suffix = "lazy" if lazy else "eager"
        cases[f"no_key-{suffix}"] = (files["random"], None, lazy)
        cases[f"no_key_passphrase-{suffix}"] = (files["passphrase"], None, lazy)
        cases[f"v1_with_key-{suffix}"] = (plain["v1"], rnd_key, lazy)
        cases[f"v1_with_passphrase-{suffix}"] = (plain["v1"], pw, lazy)
        cases[f"v4_unflagged_with_key-{suffix}"] = (plain["v4"], rnd_key, lazy)
        cases[f"wrong_key-{suffix}"] = (files["random"], {"key": "00" * 32}, lazy)
        cases[f"wrong_key_passphrase_file-{suffix}"] = (
            files["passphrase"],
            {"key": keys["random"]},
            lazy,
        )
        cases[f"wrong_passphrase-{suffix}"] = (files["passphrase"], {"source": "wrong"}, lazy)
        cases[f"passphrase_for_random_key-{suffix}"] = (files["random"], pw, lazy)
        for name, path in tampered.items():
            stem = "random" if "passphrase" not in path else "passphrase"
            dec = rnd_key if stem == "random" else pw
            cases[f"tampered_{name}-{suffix}"] = (path, dec, lazy)
    return cases


def ref_phase_write(workdir: str, oom_case: bool) -> dict:
    import tensorizer as tz

    work = Path(workdir)
    files, keys = {}, {}
    for stem, (kwargs, kind) in PAYLOADS.items():
        files[stem] = str(work / f"ref_{stem}.tensors")
        keys[stem] = write_encrypted(tz, files[stem], kind, kwargs)
    # Unencrypted files: data version 1, and 4 without the encrypted flag.
    plain = {"v1": str(work / "ref_plain_v1.tensors"), "v4": str(work / "ref_plain_v4.tensors")}
    for which, kwargs in (("v1", {}), ("v4", {"meta": True})):
        serializer = tz.TensorSerializer(plain[which])
        serializer.write_state_dict(payload(**kwargs))
        serializer.close()
    parsed = {stem: parse_tensors_file(Path(path).read_bytes()) for stem, path in files.items()}
    tampered = {}
    for name, (stem, edits) in tamper_specs(parsed, huge_memlimit=oom_case).items():
        data = bytearray(Path(files[stem]).read_bytes())
        for offset, mask in edits:
            data[offset] ^= mask
        tampered[name] = str(work / f"tampered_{name}_{stem}.tensors")
        Path(tampered[name]).write_bytes(data)
    # The reference's own reads: of its files (the truth for ours), and the
    # failures.
    reads = {}
    for stem, (_, kind) in PAYLOADS.items():
        reads[f"{stem}-key"] = load_digests(tz, files[stem], {"key": keys[stem]}, verify_hash=True)
        if kind == "passphrase":
            reads[f"{stem}-source"] = load_digests(
                tz, files[stem], {"source": PASSPHRASE}, lazy=True, verify_hash=True
            )
    errors = {
        name: load_digests(tz, path, dec, lazy=lazy)
        for name, (path, dec, lazy) in error_cases(files, keys, plain, tampered).items()
    }
    cases = PARAM_CASES + ([OOM_CASE] if oom_case else [])
    return {
        "files": files,
        "keys": keys,
        "plain": plain,
        "tampered": tampered,
        "reads": reads,
        "errors": errors,
        "params": evaluate_params_cases(tz, cases),
    }


def ref_phase_read(jobs: list) -> list:
    import tensorizer as tz

    return [load_digests(tz, **job) for job in jobs]


def _ref_main() -> None:
    warnings.filterwarnings("ignore")
    import tensorizer

    job = json.loads(Path(sys.argv[1]).read_text())
    info = {"version": tensorizer.__version__, "file": tensorizer.__file__}
    if job["op"] == "write":
        result = ref_phase_write(job["workdir"], job["oom_case"])
    else:
        result = ref_phase_read(job["jobs"])
    Path(sys.argv[2]).write_text(json.dumps({"tensorizer": info, "result": result}))


def run_reference(ref_python: str, job: dict, workdir: Path, label: str):
    job_path = workdir / f"{label}.job.json"
    out_path = workdir / f"{label}.out.json"
    job_path.write_text(json.dumps(job))
    script = (
        f"import sys; sys.path.insert(0, {str(HERE)!r});"
        " import test_encryption; test_encryption._ref_main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [ref_python, "-c", script, str(job_path), str(out_path)],
        cwd=workdir,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"reference side failed ({label}, rc={proc.returncode}):\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    data = json.loads(out_path.read_text())
    info = data["tensorizer"]
    if info["version"] != REF_VERSION or "site-packages" not in info["file"]:
        pytest.fail(f"the reference side imported {info}, not tensorizer {REF_VERSION}")
    return data["result"]


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def _overcommits_without_limit() -> bool:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1"
    except OSError:
        return True


@pytest.fixture(scope="module")
def ours():
    import tensorizer

    return tensorizer


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("encryption")


@pytest.fixture(scope="module")
def reference(ref_python, workdir) -> dict:
    """The reference writes its files, tampers copies, and records its reads."""
    job = {"op": "write", "workdir": str(workdir), "oom_case": not _overcommits_without_limit()}
    return run_reference(ref_python, job, workdir, "reference")


@pytest.fixture(scope="module")
def ours_written(ours, workdir) -> dict:
    """Ours writes every payload: stem -> {"path", "key"} or {"error"}."""
    out = {}
    for stem, (kwargs, kind) in {**PAYLOADS, **ZERO_PAYLOADS}.items():
        path = str(workdir / f"ours_{stem}.tensors")
        try:
            out[stem] = {"path": path, "key": write_encrypted(ours, path, kind, kwargs)}
        except Exception as exc:
            out[stem] = {"error": error_record(exc), "trace": traceback.format_exc()}
    return out


def _reads_of_ours(stem: str, written: dict) -> list:
    """The loads the reference makes of one of our files."""
    kind = {**PAYLOADS, **ZERO_PAYLOADS}[stem][1]
    decs = [{"key": written["key"]}] + ([{"source": PASSPHRASE}] if kind == "passphrase" else [])
    return [
        {"path": written["path"], "dec": dec, "lazy": lazy, "verify_hash": True}
        for dec in decs
        for lazy in (False, True)
    ]


@pytest.fixture(scope="module")
def reference_on_ours(ref_python, workdir, ours_written) -> dict:
    """The reference loads every file ours wrote: stem -> list of results."""
    jobs, owners = [], []
    for stem, written in ours_written.items():
        if "error" in written or stem in REF_CANNOT_READ:
            continue
        for job in _reads_of_ours(stem, written):
            jobs.append(job)
            owners.append(stem)
    results = run_reference(ref_python, {"op": "read", "jobs": jobs}, workdir, "reference_on_ours")
    out = {}
    for stem, job, result in zip(owners, jobs, results):
        out.setdefault(stem, []).append((job, result))
    return out


def _require_written(ours_written: dict, stem: str) -> dict:
    written = ours_written[stem]
    if "error" in written:
        pytest.fail(
            f"ours could not write the {stem} payload: {written['error']}\n{written['trace']}",
            pytrace=False,
        )
    return written


# --------------------------------------------------------------------------
# The params API
# --------------------------------------------------------------------------


# DIVERGENCE: a read-only memoryview salt passes the reference's own type
# check and then fails in ctypes (TypeError "underlying buffer is not
# writable"); ours takes it like the bytes it views.
PARAMS_DIVERGENCES = {
    "E.from_string('pw', 1, 8192, memoryview(S)).key": "E.from_string('pw', 1, 8192, S).key",
}


# DIVERGENCE: the reference's reprs print the raw key and passphrase; ours
# print <redacted> in their place (issue 12, #28).
_LITERAL = r"""(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
_BYTES_REPR = rf"bytearray\(b{_LITERAL}\)|b?{_LITERAL}|<memory at 0x\?>"


def _redact_secrets(text: str) -> str:
    return re.sub(rf"\b(key|source)=(?:{_BYTES_REPR})", r"\1=<redacted>", text)


def test_params_api_matches_reference(ours, reference):
    cases = PARAM_CASES + ([OOM_CASE] if not _overcommits_without_limit() else [])
    theirs = dict(zip(cases, reference["params"]))
    for expr, instead in PARAMS_DIVERGENCES.items():
        assert theirs[expr][:2] == ["raise", "TypeError"], theirs[expr]
        theirs[expr] = theirs[instead]
    theirs = {
        expr: [kind, _redact_secrets(text), *rest] if kind == "value" else [kind, text, *rest]
        for expr, (kind, text, *rest) in theirs.items()
    }
    mine = evaluate_params_cases(ours, cases)
    diffs = [
        f"{expr}\n    ours: {m}\n    ref:  {theirs[expr]}"
        for expr, m in zip(cases, mine)
        if m != theirs[expr]
    ]
    assert not diffs, f"{len(diffs)} of {len(cases)} differ:\n" + "\n".join(diffs)


def test_params_key_length_counts_bytes(ours):
    """DIVERGENCE: the reference measures a memoryview key in items and keeps
    bytes(view), so it rejects 8 uint32 (32 bytes, "got 8 bytes") and keeps
    a 128-byte key from 32 uint32. Ours counts bytes."""
    import array

    E = ours.EncryptionParams
    assert E(memoryview(array.array("I", range(8)))).key == array.array("I", range(8)).tobytes()
    with pytest.raises(ValueError, match="got 128 bytes instead"):
        E(memoryview(array.array("I", range(32))))
    salt = memoryview(array.array("I", range(4)))
    assert E.from_string("pw", 1, 8192, salt).salt == salt.tobytes()


def test_params_classes_are_the_packages(ours):
    from tensorizer import _crypto, serialization

    assert ours.EncryptionParams is _crypto.EncryptionParams is serialization.EncryptionParams
    assert ours.DecryptionParams is _crypto.DecryptionParams is serialization.DecryptionParams
    assert issubclass(ours.CryptographyError, Exception)


def test_kdf_parameters_for_the_engine(ours):
    E = ours.EncryptionParams
    params = E.from_string("pw", E.OpsLimit.INTERACTIVE, E.MemLimit.MIN, bytearray(SALT))
    ops, mem, salt = params._kdf
    assert (ops, mem, salt) == (2, 8192, SALT)
    assert (type(ops), type(mem), type(salt)) == (int, int, bytes)
    # Derived with those parameters: from_string is deterministic.
    assert params.key == E.from_string(b"pw", 2, 8192, SALT).key
    assert params.key != E.from_string("pw", 1, 8192, SALT).key
    assert E.random()._kdf is None
    assert E(b"k" * 32)._kdf is None
    # The salt stored for the file is the one the key was derived with, even
    # if the caller's buffer changes afterwards.
    buffer = bytearray(SALT)
    params = E.from_string("pw", 1, 8192, buffer)
    buffer[0] ^= 0xFF
    assert params._kdf[2] == SALT
    assert params.salt == SALT


def test_kdf_matches_reference_key(ours, reference):
    """Keys derived by ours equal those the reference derived (file keys)."""
    E = ours.EncryptionParams
    key = E.from_string(PASSPHRASE, E.OpsLimit.MIN, E.MemLimit.MIN, SALT).key
    assert key.hex() == reference["keys"]["passphrase"]


# --------------------------------------------------------------------------
# The reference's files (harness checks, then ours reading them)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("stem", list(PAYLOADS))
def test_reference_files_have_the_expected_layout(reference, stem):
    kwargs, kind = PAYLOADS[stem]
    parsed = parse_tensors_file(Path(reference["files"][stem]).read_bytes())
    meta = kwargs.get("meta", False)
    assert (parsed["version"], parsed["flags"]) == ((4, 1) if meta else (3, 0))
    for t in parsed["tensors"]:
        if t["name"].startswith("meta."):
            assert t["cipher"] is None and t["kdf"] is None, t
            assert len(t["hashes"]) == 2, t
            continue
        size = t["data_range"][1] - t["data_range"][0]
        assert t["cipher"]["type"] == 2 and t["cipher"]["chunk_size"] == CRYPT_CHUNK, t
        assert len(t["cipher"]["mac_ranges"]) == max(1, -(-size // CRYPT_CHUNK)), t
        assert [h["type"] for h in t["hashes"]] == [1], t  # SHA-256 only
        if kind == "passphrase":
            kdf = t["kdf"]
            assert (kdf["opslimit"], kdf["memlimit"], kdf["alg"]) == (1, 8192, 2), kdf
            a, b = kdf["salt_range"]
            assert Path(reference["files"][stem]).read_bytes()[a:b] == SALT
        else:
            assert t["kdf"] is None


def test_reference_reads_its_own_files(reference):
    """Harness: the reference reads its files back bit-exact."""
    for name, result in reference["reads"].items():
        stem = name.rsplit("-", 1)[0]
        assert result == {"ok": expected_digests(**PAYLOADS[stem][0])}, name


def _ours_load_params():
    for stem, (_, kind) in PAYLOADS.items():
        yield pytest.param(stem, "key", id=f"{stem}-from_key")
        if kind == "passphrase":
            yield pytest.param(stem, "source", id=f"{stem}-from_string")


@pytest.mark.parametrize(("stem", "how"), list(_ours_load_params()))
def test_ours_reads_reference_file(ours, reference, stem, how):
    path = reference["files"][stem]
    dec = {"key": reference["keys"][stem]} if how == "key" else {"source": PASSPHRASE}
    expected = {"ok": expected_digests(**PAYLOADS[stem][0])}
    failures = []
    for options in LOAD_OPTIONS:
        result = load_digests(ours, path, dec, **options)
        if result != expected:
            failures.append(f"{options}: {str(result)[:600]}")
    assert not failures, "\n".join(failures)


def test_from_key_takes_any_bytes_like_key(ours, reference):
    """from_key keeps the key object it is given (as the reference does, for
    its repr); a bytearray key decrypts in the reference, so it must in ours.
    A read-only memoryview fails in the reference (ctypes: "underlying buffer
    is not writable"), a reference bug; ours takes it too."""
    key = bytes.fromhex(reference["keys"]["random"])
    expected = expected_digests()
    for key_object in (bytearray(key), memoryview(key)):
        encryption = ours.DecryptionParams.from_key(key_object)
        assert encryption.key is key_object
        with ours.TensorDeserializer(
            reference["files"]["random"], device="cpu", encryption=encryption
        ) as d:
            assert {name: digest(t) for name, t in d.items()} == expected, type(key_object)


# --------------------------------------------------------------------------
# Our files: the reference reads them, and their layout is the reference's
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stem", [s for s in [*PAYLOADS, *ZERO_PAYLOADS] if s not in REF_CANNOT_READ]
)
def test_reference_reads_our_file(ours_written, reference_on_ours, stem):
    _require_written(ours_written, stem)
    expected = {"ok": expected_digests(**{**PAYLOADS, **ZERO_PAYLOADS}[stem][0])}
    results = reference_on_ours[stem]
    failures = [
        f"{job['dec']} lazy={job['lazy']}: {str(result)[:600]}"
        for job, result in results
        if result != expected
    ]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("stem", list(ZERO_PAYLOADS))
def test_ours_reads_our_zero_element_file(ours, ours_written, stem):
    written = _require_written(ours_written, stem)
    kwargs, kind = ZERO_PAYLOADS[stem]
    expected = {"ok": expected_digests(**kwargs)}
    decs = [{"key": written["key"]}] + ([{"source": PASSPHRASE}] if kind == "passphrase" else [])
    failures = []
    for dec in decs:
        for options in LOAD_OPTIONS:
            result = load_digests(ours, written["path"], dec, **options)
            if result != expected:
                failures.append(f"{dec} {options}: {str(result)[:600]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("stem", list(PAYLOADS))
def test_our_file_has_reference_layout(ours_written, reference, stem):
    """Same size, version, flags, metadata and headers as the reference's file
    for the same tensors; only nonces, MACs and ciphertext differ (with the
    same salt, a passphrase file's KDF chunks are identical too)."""
    written = _require_written(ours_written, stem)
    our_data = Path(written["path"]).read_bytes()
    ref_data = Path(reference["files"][stem]).read_bytes()
    assert len(our_data) == len(ref_data)
    ours_parsed, ref_parsed = parse_tensors_file(our_data), parse_tensors_file(ref_data)
    for key in ("version", "flags", "tensor_size", "count", "metadata_length", "entries"):
        assert ours_parsed[key] == ref_parsed[key], key
    for mine, theirs in zip(ours_parsed["tensors"], ref_parsed["tensors"]):
        assert mine == theirs, mine["name"]
    a, b = masked(our_data, ours_parsed), masked(ref_data, ref_parsed)
    if a != b:
        first = next(i for i in range(len(a)) if a[i] != b[i])
        pytest.fail(f"first difference outside nonces, MACs and ciphertext at offset {first}")
    # And the masked ranges really were encrypted differently (fresh nonces).
    for mine in ours_parsed["tensors"]:
        if mine["cipher"] is not None:
            r = mine["cipher"]["nonce_range"]
            assert our_data[r[0] : r[1]] != ref_data[r[0] : r[1]], mine["name"]


def test_writing_encrypted_leaves_the_tensors_alone(ours, tmp_path):
    """Sealing happens in a copy: the caller's tensors keep their plaintext."""
    tensors = payload(zero=True)
    before = {name: digest(t) for name, t in tensors.items() if t.device.type != "meta"}
    serializer = ours.TensorSerializer(
        str(tmp_path / "x.tensors"), encryption=ours.EncryptionParams.random()
    )
    serializer.write_state_dict(tensors)
    serializer.close()
    assert {name: digest(t) for name, t in tensors.items()} == before


@pytest.mark.parametrize("stem", list(ZERO_PAYLOADS))
def test_our_zero_element_file_layout(ours_written, stem):
    """Every tensor of an encrypted file carries a cipher chunk, zero-element
    ones included (the reference has no layout for them; it reads this one)."""
    written = _require_written(ours_written, stem)
    parsed = parse_tensors_file(Path(written["path"]).read_bytes())
    assert (parsed["version"], parsed["flags"]) == (3, 0)
    for t in parsed["tensors"]:
        assert t["cipher"] is not None, t["name"]
        if t["data_range"][0] == t["data_range"][1]:
            assert t["cipher"]["mac_ranges"] == [], t


def test_nonces_are_never_reused(ours_written):
    nonces = []
    for stem in ("random", "random_meta"):
        written = _require_written(ours_written, stem)
        data = Path(written["path"]).read_bytes()
        for t in parse_tensors_file(data)["tensors"]:
            if t["cipher"] is not None:
                first = int.from_bytes(data[slice(*t["cipher"]["nonce_range"])], "little")
                nonces += [first + i for i in range(max(1, len(t["cipher"]["mac_ranges"])))]
    assert len(nonces) == len(set(nonces)) > 10


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def _error_case_names():
    names = [
        "no_key",
        "no_key_passphrase",
        "v1_with_key",
        "v1_with_passphrase",
        "v4_unflagged_with_key",
        "wrong_key",
        "wrong_key_passphrase_file",
        "wrong_passphrase",
        "passphrase_for_random_key",
        "tampered_ciphertext_chunked",
        "tampered_ciphertext_small",
        "tampered_ciphertext_last",
        "tampered_mac_chunked",
        "tampered_mac_small",
        "tampered_nonce_chunked",
        "tampered_nonce_small",
        "tampered_chunk_size",
        "tampered_salt",
        "tampered_opslimit",
    ]
    if not _overcommits_without_limit():
        names.append("tampered_memlimit")
    return [f"{n}-{s}" for n in names for s in ("eager", "lazy")]


# The reference's own messages that users and docs rely on.
MESSAGE_FRAGMENTS = {
    "no_key": "decryption was not requested",
    "v1_with_key": "predating encryption",
    "v1_with_passphrase": "predating encryption",
    "v4_unflagged_with_key": "not flagged",
    "passphrase_for_random_key": "from_key() must be used instead",
}


# DIVERGENCE: the reference refuses a crypt chunk size that disagrees with
# the MAC count with ChunkedEncryption's ValueError ("Number of MACs provided
# (3) does not match the number of chunks (6)"), but a bug turns it into an
# UnboundLocalError (`del crypto` in _stream_decrypt's finally). Ours must
# raise what the reference means: a ValueError (or a subclass).
REFERENCE_ERROR_BUGS = {"tampered_chunk_size": ("UnboundLocalError", "ValueError")}


def _reference_error(reference, case: str) -> dict:
    ref_result = dict(reference["errors"][case])
    assert "error" in ref_result, f"harness: the reference read {case} without error"
    bug = REFERENCE_ERROR_BUGS.get(case.rsplit("-", 1)[0])
    if bug is not None:
        raised, meant = bug
        assert ref_result["error"][0] == raised, ref_result
        ref_result["error"] = [meant, "(reference bug)", [meant]]
    return ref_result


@pytest.mark.parametrize("case", _error_case_names())
def test_error_matches_reference(ours, reference, case):
    ref_result = _reference_error(reference, case)
    files, keys = reference["files"], reference["keys"]
    path, dec, lazy = error_cases(files, keys, reference["plain"], reference["tampered"])[case]
    result = load_digests(ours, path, dec, lazy=lazy)
    assert "error" in result, f"ours loaded it: {str(result)[:300]}"
    # The reference's type, or a subclass of it (ours adds the builtin bases).
    assert ref_result["error"][0] in result["error"][2], (result, ref_result)
    assert result["stage"] == ref_result["stage"], (result, ref_result)
    assert result["error"][1], "empty message"
    fragment = MESSAGE_FRAGMENTS.get(case.rsplit("-", 1)[0])
    if fragment is not None:
        assert fragment in result["error"][1], result["error"][1]


def test_reference_error_types(reference):
    """Harness and documentation: what the reference raises for each case."""
    for case in reference["errors"]:
        if case.rsplit("-", 1)[0] not in REFERENCE_ERROR_BUGS:
            result = _reference_error(reference, case)
            assert result["error"][0] == "CryptographyError", (case, result)


PASSPHRASE_TAMPERS = ("salt", "opslimit", "memlimit")
TAMPERED_NAMES = [
    "ciphertext_chunked",
    "ciphertext_small",
    "ciphertext_last",
    "mac_chunked",
    "mac_small",
    "nonce_chunked",
    "nonce_small",
    "chunk_size",
    "salt",
    "opslimit",
    *([] if _overcommits_without_limit() else ["memlimit"]),
]


def _tampered_tensor(reference, name: str) -> str:
    path = reference["tampered"][name]
    clean = reference["files"]["passphrase" if name in PASSPHRASE_TAMPERS else "random"]
    a, b = Path(path).read_bytes(), Path(clean).read_bytes()
    offset = next(i for i in range(len(a)) if a[i] != b[i])
    for t in parse_tensors_file(b)["tensors"]:
        if t["header_range"][0] <= offset < t["data_range"][1]:
            return t["name"]
    raise AssertionError(f"{name}: offset {offset} in no tensor")


@pytest.mark.parametrize("name", TAMPERED_NAMES)
def test_tampered_tensor_never_yields_data(ours, reference, name):
    """The tampered tensor is never returned, whichever way it is asked for;
    the other tensors still load lazily."""
    path = reference["tampered"][name]
    if name in PASSPHRASE_TAMPERS:
        dec = {"source": PASSPHRASE}
    else:
        dec = {"key": reference["keys"]["random"]}
    target = _tampered_tensor(reference, name)
    encryption = decryption(ours, dec)
    error = ValueError if name == "chunk_size" else ours.CryptographyError
    for num_readers in (1, 4):
        with pytest.raises(error):
            ours.TensorDeserializer(
                path, device="cpu", encryption=encryption, num_readers=num_readers
            )
        d = ours.TensorDeserializer(
            path, device="cpu", encryption=encryption, lazy_load=True, num_readers=num_readers
        )
        try:
            with pytest.raises(error):
                d[target]
            with pytest.raises(error):
                d[target]  # and not on a second try either
            with pytest.raises(error):
                dict(d.items())
            other = next(n for n in d if n != target)
            assert digest(d[other]) == expected_digests()[other]
        finally:
            d.close()


if __name__ == "__main__":
    _ref_main()
