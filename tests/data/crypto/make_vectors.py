#!/usr/bin/env python3
"""Writes the encryption test vectors in tests/data/crypto/ with tensorizer 2.12.1.

Run with the reference interpreter, from the repository root:

    .venv-ref/bin/python tests/data/crypto/make_vectors.py

Outputs (read by tests/cpp/crypto_test.cc; commit them):

  ref_random_key.bin   an encrypted .tensors file, EncryptionParams.random()
                       (data version 4 with the encrypted flag, because it
                       holds a meta tensor)
  ref_passphrase.bin   an encrypted .tensors file, EncryptionParams.from_string()
                       with OpsLimit.MIN, MemLimit.MIN and a fixed salt
                       (data version 3)
  vectors.txt          keys, plaintexts and reference-encoded crypt-info blocks,
                       one record per line (format below)

The files are named .bin because .gitignore ignores *.tensors.

Both files hold:
  * "small": 3 float32 (12 bytes) in one 2 MiB crypt chunk: one MAC;
  * "chunked": 3000 bytes sealed in 1024-byte crypt chunks: three MACs. The
    reference writer always uses 2 MiB chunks; we lower its private
    `_crypt_chunk_size` for this one tensor so a multi-chunk tensor fits in a
    small file. Readers take the chunk size from the file, so this is a
    layout every reader must accept;
  * "empty": a zero-element tensor (shape (0,)). tensorizer 2.12.1 crashes
    writing it (IndexError on nonces[0]; shape (0, 4) fails earlier, in
    memoryview.cast); we patch its writer so it emits
    what our writer emits instead: an XSalsa20Parallel chunk with a fresh
    nonce and zero MACs. The script then checks that the unpatched reference
    reads the file back, with from_key and (passphrase file) from_string.
The random-key file also holds "meta", a meta tensor (empty crypt info).

vectors.txt records (hex for bytes, "-" for empty bytes):
  key <file> <key>
  passphrase <file> <passphrase, UTF-8>
  tensor <file> <name> <plaintext>
  cryptinfo <label> <block, u64 length prefix included>   (reference encoder)
  secretbox <key> <nonce> <plaintext> <mac> <ciphertext>    (libsodium via libnacl)
  pwhash <password> <opslimit> <memlimit> <salt> <key>      (reference PWHash)
"""

import os
import sys

import libnacl
import torch

import tensorizer
import tensorizer._crypt as _crypt
import tensorizer._crypt_info as _crypt_info
import tensorizer.serialization as _ser
from tensorizer import (
    DecryptionParams,
    EncryptionParams,
    TensorDeserializer,
    TensorSerializer,
)

assert tensorizer.__version__ == "2.12.1", tensorizer.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
PASSPHRASE = "tensorizer crypto test vectors"
SALT = bytes(range(0x40, 0x50))  # 16 fixed bytes


def h(b) -> str:
    b = bytes(b)
    return b.hex() if b else "-"


class _NoncesForEmpty(tuple):
    """An empty nonce tuple whose [0] is still a fresh nonce.

    The reference writer does `XSalsa20ParallelChunk(nonce=nonces[0], ...)`
    even when a tensor has no bytes to seal (no chunks, no nonces) and
    crashes there. Handing it this object instead lets it write a
    zero-MAC chunk with a nonce that seals nothing."""

    def __getitem__(self, i):
        if i == 0:
            return _crypt.ChunkedEncryption.random_nonce()
        return super().__getitem__(i)


def _patched_new_nonces(self, count):
    if count == 0:
        return _NoncesForEmpty()
    return _original_new_nonces(self, count)


_original_new_nonces = TensorSerializer._new_nonces


def tensors():
    g = torch.Generator().manual_seed(1234)
    return {
        "small": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float32),
        "chunked": torch.randint(0, 256, (3000,), dtype=torch.uint8, generator=g),
        "empty": torch.zeros((0,), dtype=torch.float32),
    }


def write(path, params, with_meta):
    ser = TensorSerializer(path, encryption=params)
    ts = tensors()
    ser.write_tensor(0, "small", _ser.TensorType.STATE_DICT, ts["small"])
    ser._crypt_chunk_size = 1024
    ser.write_tensor(0, "chunked", _ser.TensorType.STATE_DICT, ts["chunked"])
    ser._crypt_chunk_size = 2 << 20
    TensorSerializer._new_nonces = _patched_new_nonces
    try:
        ser.write_tensor(0, "empty", _ser.TensorType.STATE_DICT, ts["empty"])
    finally:
        TensorSerializer._new_nonces = _original_new_nonces
    if with_meta:
        meta = torch.empty((2, 2), dtype=torch.float32, device="meta")
        ser.write_tensor(0, "meta", _ser.TensorType.STATE_DICT, meta)
    ser.close()
    return ts


def check_reference_reads(path, params, expected):
    with TensorDeserializer(path, encryption=params, verify_hash=True) as d:
        got = {k: d[k] for k in d}
    for name, t in expected.items():
        assert torch.equal(got[name], t), name
    return got


def sized_pack(info) -> bytes:
    buf = bytearray(info.sized_size)
    end = info.sized_pack_into(buf, 0)
    assert end == len(buf)
    return bytes(buf)


def plaintext(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


def main():
    lines = []
    tensors_ = tensors()

    # --- encrypted files -------------------------------------------------
    random_params = EncryptionParams.random()
    path = os.path.join(HERE, "ref_random_key.bin")
    write(path, random_params, with_meta=True)
    got = check_reference_reads(path, DecryptionParams.from_key(random_params.key), tensors_)
    assert torch.equal(got["meta"], torch.zeros((2, 2))), got["meta"]
    lines.append(f"key ref_random_key.bin {h(random_params.key)}")
    lines.extend(
        f"tensor ref_random_key.bin {name} {h(plaintext(tensors_[name]))}"
        for name in ("small", "chunked", "empty")
    )
    lines.append("tensor ref_random_key.bin meta -")

    pass_params = EncryptionParams.from_string(
        PASSPHRASE,
        opslimit=EncryptionParams.OpsLimit.MIN,
        memlimit=EncryptionParams.MemLimit.MIN,
        salt=SALT,
    )
    path = os.path.join(HERE, "ref_passphrase.bin")
    write(path, pass_params, with_meta=False)
    check_reference_reads(path, DecryptionParams.from_string(PASSPHRASE), tensors_)
    check_reference_reads(path, DecryptionParams.from_key(pass_params.key), tensors_)
    lines.append(f"key ref_passphrase.bin {h(pass_params.key)}")
    lines.append(f"passphrase ref_passphrase.bin {h(PASSPHRASE.encode())}")
    lines.extend(
        f"tensor ref_passphrase.bin {name} {h(plaintext(tensors_[name]))}"
        for name in ("small", "chunked", "empty")
    )
    lines.append(f"pwhash {h(PASSPHRASE.encode())} 1 8192 {h(SALT)} {h(pass_params.key)}")

    # --- key derivation: more presets -------------------------------------
    for ops, mem, pw in (
        (2, 67108864, b"interactive"),  # OpsLimit/MemLimit.INTERACTIVE
        (3, 8192, "\u00fcnicode passphrase".encode("utf-8")),
        (1, 1 << 20, b"x"),
    ):
        salt = bytes((i * 7 + ops) & 0xFF for i in range(16))
        key = _crypt.PWHash(salt=salt, opslimit=ops, memlimit=mem).hash(pw)
        lines.append(f"pwhash {h(pw)} {ops} {mem} {h(salt)} {h(key)}")

    # --- crypt-info blocks, encoded by the reference -----------------------
    CI = _crypt_info
    nonce = bytes(range(24))
    macs = [bytes([0xA0 + i] * 16) for i in range(3)]
    kdf = CI.PWHashKeyDerivationChunk(opslimit=3, memlimit=268435456, alg=2, salt=SALT)
    blocks = {
        "empty": CI.CryptInfo(),
        "parallel_1mac": CI.CryptInfo([CI.XSalsa20ParallelChunk(2 << 20, nonce, macs[:1])]),
        "parallel_3macs": CI.CryptInfo([CI.XSalsa20ParallelChunk(1024, nonce, macs)]),
        "parallel_0macs": CI.CryptInfo([CI.XSalsa20ParallelChunk(2 << 20, nonce, [])]),
        "kdf_parallel": CI.CryptInfo([kdf, CI.XSalsa20ParallelChunk(2 << 20, nonce, macs[:1])]),
        "parallel_kdf": CI.CryptInfo([CI.XSalsa20ParallelChunk(2 << 20, nonce, macs[:2]), kdf]),
        "sequential": CI.CryptInfo([CI.XSalsa20SequentialChunk(nonce, macs[0])]),
        "kdf_sequential": CI.CryptInfo([kdf, CI.XSalsa20SequentialChunk(nonce, macs[1])]),
    }
    for label, block in blocks.items():
        encoded = sized_pack(block)
        # The reference's own parser reads back what it wrote. (It cannot
        # re-encode what it parsed: parsed MACs are memoryviews, which its
        # struct packing refuses.)
        parsed = CI.CryptInfo.unpack_from(encoded, 8)
        assert [type(c) for c in parsed.chunks] == [type(c) for c in block.chunks]
        lines.append(f"cryptinfo {label} {h(encoded)}")

    # --- the primitive, independent of tensorizer ---------------------------
    for n in (0, 1, 63, 64, 1000):
        key = bytes((i * 13 + n) & 0xFF for i in range(32))
        nonce = bytes((i * 29 + n + 1) & 0xFF for i in range(24))
        msg = bytes((i * 31 + 7) & 0xFF for i in range(n))
        boxed = libnacl.crypto_secretbox(msg, nonce, key)  # MAC || ciphertext
        mac, ct = boxed[:16], boxed[16:]
        lines.append(f"secretbox {h(key)} {h(nonce)} {h(msg)} {h(mac)} {h(ct)}")

    with open(os.path.join(HERE, "vectors.txt"), "w") as f:
        f.write(
            "# Generated by tests/data/crypto/make_vectors.py with tensorizer"
            f" {tensorizer.__version__}; see that script for the format.\n"
        )
        f.write("\n".join(lines) + "\n")
    print("wrote", HERE, file=sys.stderr)


if __name__ == "__main__":
    main()
