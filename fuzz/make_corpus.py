#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_index into fuzz/corpus/.

Two kinds of seed:
  * files written by a real tensorizer (the reference in .venv-ref when it is
    there, else whatever `import tensorizer` finds). Writers always reserve a
    256 KiB metadata block, so these are all ~262 KiB.
  * small files encoded here by hand with a metadata block only as long as
    its entries (the format allows any length). Most mutations of a 262 KiB
    seed land in zero padding; these keep the fuzzer on the structures.

Hand-made files carry correct CRC32 and SHA-256 values, so a load with
verify_hash gets past the hash check and into the paths behind it.

Usage: python3 fuzz/make_corpus.py            (from the repository root)
"""

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
MAGIC = b"|TZR|"


# --- a hand encoder, independent of the engine under test ----------------


class T:
    """One tensor record."""

    def __init__(
        self,
        name,
        dtype,
        shape,
        data=b"",
        ttype=2,
        meta=False,
        long_shape=False,
        crypt=None,
        module_idx=0,
    ):
        self.name = name.encode() if isinstance(name, str) else name
        self.dtype = dtype.encode() if isinstance(dtype, str) else dtype
        self.shape = shape
        self.data = b"" if meta else data
        self.ttype = ttype
        self.long_shape = long_shape
        self.crypt = crypt  # crypt-info body (after its u64 length), or None
        self.module_idx = module_idx


def _shape(t):
    fmt = "<Q" if t.long_shape else "<I"
    return struct.pack("<B", len(t.shape)) + b"".join(struct.pack(fmt, d) for d in t.shape)


def _header(t, with_crypt):
    body = struct.pack("<HB", t.module_idx, t.ttype)
    body += struct.pack("<H", len(t.name)) + t.name
    body += struct.pack("<B", len(t.dtype)) + t.dtype + _shape(t)
    hash_at = len(body) + 8
    hashes = b"\x02" + b"\x00\x04" + b"\0" * 4 + b"\x01\x20" + b"\0" * 32
    body += struct.pack("<H", len(hashes)) + hashes
    crypt = b""
    if with_crypt:
        c = t.crypt if t.crypt is not None else b"\x00\x00"
        crypt = struct.pack("<Q", len(c)) + c
    tail = struct.pack("<q", len(t.data))
    size = 8 + len(body) + len(crypt) + len(tail)
    zeroed = struct.pack("<Q", size) + body + tail  # what the hashes cover
    crc = zlib.crc32(zeroed + t.data) & 0xFFFFFFFF
    sha = hashlib.sha256(zeroed + t.data).digest()
    hdr = bytearray(struct.pack("<Q", size) + body + crypt + tail)
    crc_at = hash_at + 2 + 1 + 2
    hdr[crc_at : crc_at + 4] = struct.pack("<I", crc)
    sha_at = crc_at + 4 + 2
    hdr[sha_at : sha_at + 32] = sha
    return bytes(hdr)


def encode(tensors, version=1, flags=0, metadata_length=None, versioned=False):
    with_crypt = version == 3 or (version >= 4 and flags & 1)
    headers = [_header(t, with_crypt) for t in tensors]
    entries_len = 0
    for t in tensors:
        entries_len += (4 if versioned else 0) + 29 + len(t.name) + len(t.dtype)
        entries_len += len(t.shape) * (8 if t.long_shape else 4)
    L = entries_len if metadata_length is None else metadata_length
    pos = 73 + L
    entries = b""
    records = b""
    for t, h in zip(tensors, headers):
        e = struct.pack("<I", 5 if t.long_shape else 1) if versioned else b""
        e += struct.pack("<H", len(t.name)) + t.name
        e += struct.pack("<BB", t.ttype, len(t.dtype)) + t.dtype + _shape(t)
        e += struct.pack("<QQQ", pos, pos + len(h), len(t.data))
        entries += e
        records += h + t.data
        pos += len(h) + len(t.data)
    meta = entries.ljust(L, b"\0")
    head = MAGIC + struct.pack("<I", version)
    head += struct.pack("<Q", flags) + b"\0" * 24
    head += struct.pack("<QQQ", sum(len(t.data) for t in tensors), 0, len(tensors))
    head += struct.pack("<Q", L)
    return head + meta + records + b"\0" * 8


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)


def hand_made():
    golden = T("a", "<f4", (2, 3), f32(0, 1, 2, 3, 4, 5))
    # An XSalsa20Parallel crypt-info with one made-up MAC: readable structure,
    # ciphertext nobody can open.
    par = struct.pack("<H", 1) + struct.pack("<Q", 42 + 16) + struct.pack("<H", 2)
    par += struct.pack("<Q", 2 << 20) + bytes(range(24)) + struct.pack("<Q", 1) + b"\x5a" * 16
    yield "small_v1_golden", encode([golden])
    yield (
        "small_v1_mixed",
        encode(
            [
                T("w", "<f2", (4,), bytes(range(8)), ttype=0, module_idx=1),
                T("scalar", "<i8", (), struct.pack("<q", -7), ttype=1),
                T("empty", "<f4", (0, 4)),
                T("mask", "|b1", (3,), b"\x01\x00\x01"),
                T("z", "<c8", (1,), f32(1.5, -2.5)),
            ]
        ),
    )
    yield "small_v1_padded_index", encode([golden], metadata_length=200)
    yield (
        "small_v2_opaque",
        encode(
            [
                T("bf", b"<V2\0torch.bfloat16", (2, 2), bytes(8)),
                T("f8", b"|V1\0torch.float8_e4m3fn", (3,), b"\x01\x02\x03"),
            ],
            version=2,
        ),
    )
    yield (
        "small_v4_meta",
        encode(
            [
                T("m", "<f4", (2, 3), meta=True),
                T("x", "|u1", (5,), b"hello"),
                T("mb", b"<V2\0torch.bfloat16", (4,), meta=True),
            ],
            version=4,
        ),
    )
    yield (
        "small_v5_versioned",
        encode(
            [
                T("a", "<f4", (1,), f32(1)),
                T("long", "|i1", (2, 1), b"\x07\x08", long_shape=True),
                T("b", "<i2", (2,), b"\x01\x00\x02\x00"),
            ],
            version=5,
            flags=2,
            versioned=True,
        ),
    )
    yield (
        "small_v3_crypt",
        encode(
            [
                T("plain", "<f4", (1,), f32(3)),
                T("sealed", "<f4", (2,), f32(1, 2), crypt=par),
            ],
            version=3,
        ),
    )
    yield (
        "small_v4_encrypted_meta",
        encode(
            [
                T("m", "<f8", (2,), meta=True),
                T("e", "<u2", (0,)),
            ],
            version=4,
            flags=1,
        ),
    )
    yield (
        "small_v1_paths",
        encode(
            [
                T(
                    "\x1e" + json.dumps(["model", "layer", 0], separators=(",", ":")),
                    "<f4",
                    (1,),
                    f32(2),
                ),
                T('\x1e["model","bias"]', "<i4", (1,), struct.pack("<i", 9)),
            ]
        ),
    )


# --- seeds from a real tensorizer -----------------------------------------

REFERENCE_SCRIPT = r"""
import sys, torch
from tensorizer import TensorSerializer, EncryptionParams
out = sys.argv[1]
def save(name, sd, **kw):
    s = TensorSerializer(f"{out}/{name}", **kw)
    s.write_state_dict(sd)
    s.close()
save("ref_v1_golden", {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
save("ref_v2_bfloat16", {"bf": torch.ones(3, dtype=torch.bfloat16),
                         "i": torch.tensor(5, dtype=torch.int64)})
save("ref_v4_meta", {"m": torch.empty(2, 2, device="meta"), "b": torch.tensor([True, False])})
try:
    save("ref_v3_encrypted", {"s": torch.arange(4, dtype=torch.float32)},
         encryption=EncryptionParams.random())
except Exception as e:  # no libsodium: the hand-made v3 seed stands in
    print("skipping the encrypted seed:", e, file=sys.stderr)
"""


def reference_python():
    ref = os.path.join(ROOT, ".venv-ref", "bin", "python")
    return ref if os.path.exists(ref) else sys.executable


def main():
    os.makedirs(CORPUS, exist_ok=True)
    golden = encode([T("a", "<f4", (2, 3), f32(0, 1, 2, 3, 4, 5))], metadata_length=262144)
    assert len(golden) == 262327, len(golden)
    for name, data in hand_made():
        with open(os.path.join(CORPUS, name), "wb") as f:
            f.write(data)
    subprocess.run([reference_python(), "-c", REFERENCE_SCRIPT, CORPUS], check=True)
    # The hand encoder must agree with a real writer byte for byte.
    with open(os.path.join(CORPUS, "ref_v1_golden"), "rb") as f:
        assert f.read() == golden, "hand encoder disagrees with tensorizer on the golden file"
    total = 0
    for name in sorted(os.listdir(CORPUS)):
        size = os.path.getsize(os.path.join(CORPUS, name))
        assert size < 300 * 1024, name
        total += size
        print(f"{size:8d}  {name}")
    assert total < 3 << 20, total
    print(f"{total:8d}  total")


if __name__ == "__main__":
    main()
