"""What a load checks when it cannot, or would not, verify (issue 12,
defects 25 and 26).

- verify_hash=True on a tensor that stores no hashes used to pass in
  silence: now it warns, naming the file and the tensor, and
  verify_hash="all" refuses it.
- An encrypted file loaded with verify_hash off (the default) accepted
  tampering that the MACs cannot see: two tensors' records swapped gave `a`
  the plaintext of `b`, and a tensor cut by its last chunk loaded shorter.
  Decrypting now always checks the stored SHA-256 of the plaintext.

The damaged files are made here from good ones by editing their bytes,
located with test_encryption's parser (independent of both
implementations).
"""

from __future__ import annotations

import struct
import warnings

import pytest
import safetensors.torch
import torch

from tensorizer import DecryptionParams, EncryptionParams, TensorDeserializer, TensorSerializer
from tensorizer.serialization import CryptographyError, HashMismatchError
from test_encryption import parse_tensors_file

CRYPT_CHUNK = 2 << 20
TENSOR_SIZE_AT = 41  # file header: total data bytes


def rewrite(data: bytes, patches, cuts) -> bytes:
    """`data` with each (offset, struct format, value) patch applied, then
    each [start, end) cut removed; all offsets are those of `data`."""
    out = bytearray(data)
    for offset, fmt, value in patches:
        struct.pack_into("<" + fmt, out, offset, value)
    for start, end in sorted(cuts, reverse=True):
        del out[start:end]
    return bytes(out)


def last_record(data: bytes, name: str):
    """The parsed index entry and header of the file's last tensor, which
    must be `name` (so that bytes cut from its header move nothing else)."""
    parsed = parse_tensors_file(data)
    entry, header = parsed["entries"][-1], parsed["tensors"][-1]
    assert entry["name"] == name == header["name"]
    return entry, header


def without_hashes(data: bytes, name: str) -> bytes:
    """The file with the hash list of its last tensor `name` emptied."""
    entry, t = last_record(data, name)
    section = t["hashes"][0]["range"][0] - 5  # u16 length, u8 count, entries
    (length,) = struct.unpack_from("<H", data, section)
    removed = length - 1
    h = t["header_range"][0]
    index_end = entry["range"][1]
    return rewrite(
        data,
        [
            (section, "H", 1),
            (section + 2, "B", 0),
            (h, "Q", t["header_range"][1] - h - removed),
            (index_end - 16, "Q", entry["data_offset"] - removed),
        ],
        [(section + 3, section + 2 + length)],
    )


def without_last_chunk(data: bytes, name: str, keep_shape: bool) -> bytes:
    """The encrypted last tensor `name` (1-D float32) cut by its last crypt
    chunk: its ciphertext, its MAC and its length in the header, the index
    and the file header. With keep_shape False the shape shrinks to match, so
    that every field agrees."""
    entry, t = last_record(data, name)
    cipher = t["cipher"]
    macs = cipher["mac_ranges"]
    assert cipher["type"] == 2 and len(macs) >= 2 and entry["dtype"] == "<f4"
    length = entry["data_length"]
    cut = length - CRYPT_CHUNK * (len(macs) - 1)
    h, header_end = t["header_range"]
    chunk_at = cipher["chunk_size_offset"] - 10  # u64 length, u16 type, body
    name_len = len(name.encode())
    header_dim = h + 13 + name_len + 1 + len(entry["dtype"]) + 1
    index_end = entry["range"][1]

    def u64(offset):
        return struct.unpack_from("<Q", data, offset)[0]

    patches = [
        (h, "Q", header_end - h - 16),
        (t["crypt_range"][0], "Q", u64(t["crypt_range"][0]) - 16),
        (chunk_at, "Q", u64(chunk_at) - 16),
        (cipher["chunk_size_offset"] + 32, "Q", len(macs) - 1),
        (header_end - 8, "q", length - cut),
        (index_end - 16, "Q", entry["data_offset"] - 16),
        (index_end - 8, "Q", length - cut),
        (TENSOR_SIZE_AT, "Q", u64(TENSOR_SIZE_AT) - cut),
    ]
    if not keep_shape:
        elements = (length - cut) // 4
        patches += [(header_dim, "I", elements), (index_end - 24 - 4, "I", elements)]
    return rewrite(data, patches, [macs[-1], (t["data_range"][1] - cut, t["data_range"][1])])


# --- defect 25: verify_hash on a tensor without hashes ------------------------


@pytest.fixture
def unhashed(tmp_path):
    """A file whose last tensor, 'last', stores no hashes."""
    good = tmp_path / "good.tensors"
    s = TensorSerializer(str(good))
    s.write_state_dict({"first": torch.arange(8.0), "last": torch.full((16,), 3.0)})
    s.close()
    path = tmp_path / "unhashed.tensors"
    path.write_bytes(without_hashes(good.read_bytes(), "last"))
    return path


def test_verify_hash_warns_about_a_tensor_without_hashes(unhashed):
    with pytest.warns(UserWarning) as caught:
        d = TensorDeserializer(str(unhashed), device="cpu", verify_hash=True)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "'last'" in messages[0] and str(unhashed) in messages[0], messages
    assert "'first'" not in messages[0]
    assert torch.equal(d["last"], torch.full((16,), 3.0))


def test_verify_hash_all_refuses_a_tensor_without_hashes(unhashed):
    with pytest.raises(HashMismatchError) as info:
        TensorDeserializer(str(unhashed), device="cpu", verify_hash="all")
    message = str(info.value)
    assert "'last'" in message and str(unhashed) in message and "no hashes" in message
    # Lazily, the hashed tensor still loads; the other does not.
    d = TensorDeserializer(str(unhashed), device="cpu", lazy_load=True, verify_hash="all")
    assert torch.equal(d["first"], torch.arange(8.0))
    with pytest.raises(HashMismatchError):
        d["last"]


def test_no_warning_without_verify_hash(unhashed):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = TensorDeserializer(str(unhashed), device="cpu")
    assert torch.equal(d["last"], torch.full((16,), 3.0))


def test_verify_hash_on_safetensors_says_there_is_nothing_to_check(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({"a": torch.ones(4), "b": torch.zeros(2)}, str(path))
    with pytest.warns(UserWarning, match="safetensors file, which stores no hashes") as caught:
        TensorDeserializer(str(path), device="cpu", verify_hash=True)
    assert len(caught) == 1 and str(path) in str(caught[0].message)
    with pytest.raises(HashMismatchError, match="no hashes"):
        TensorDeserializer(str(path), device="cpu", verify_hash="all")


# --- defect 26: tampering with encrypted files, verify_hash off ---------------


@pytest.fixture
def encrypted(tmp_path):
    """A randomly keyed file: 'a' and 'b' of one shape, then 'big' (three
    crypt chunks, the last one short)."""
    enc = EncryptionParams.random()
    path = tmp_path / "enc.tensors"
    s = TensorSerializer(str(path), encryption=enc)
    s.write_state_dict(
        {
            "a": torch.full((256,), 1.0),
            "b": torch.full((256,), 2.0),
            "big": torch.arange((2 * CRYPT_CHUNK + 4096) // 4, dtype=torch.float32),
        }
    )
    s.close()
    return path, DecryptionParams.from_key(enc.key)


def test_untampered_encrypted_file_loads_by_default(encrypted):
    path, dec = encrypted
    d = TensorDeserializer(str(path), device="cpu", encryption=dec)
    assert torch.equal(d["a"], torch.full((256,), 1.0))
    assert d["big"].shape == ((2 * CRYPT_CHUNK + 4096) // 4,)


@pytest.mark.parametrize("lazy", [False, True])
def test_swapped_encrypted_records_are_refused(encrypted, lazy):
    path, dec = encrypted
    data = path.read_bytes()
    parsed = parse_tensors_file(data)
    a, b = parsed["tensors"][0], parsed["tensors"][1]
    out = bytearray(data)
    for field in ("crypt_range", "data_range"):
        (a0, a1), (b0, b1) = a[field], b[field]
        assert a1 - a0 == b1 - b0
        out[a0:a1], out[b0:b1] = data[b0:b1], data[a0:a1]
    path.write_bytes(out)
    with pytest.raises(HashMismatchError) as info:
        d = TensorDeserializer(str(path), device="cpu", encryption=dec, lazy_load=lazy)
        d["a"]
    message = str(info.value)
    assert "'a'" in message or "'b'" in message, message
    assert str(path) in message


def test_encrypted_tensor_cut_by_its_last_chunk_is_refused(encrypted):
    path, dec = encrypted
    path.write_bytes(without_last_chunk(path.read_bytes(), "big", keep_shape=False))
    with pytest.raises(HashMismatchError) as info:
        TensorDeserializer(str(path), device="cpu", encryption=dec)
    assert "'big'" in str(info.value) and str(path) in str(info.value)


def test_decrypted_length_must_match_the_shape(encrypted):
    path, dec = encrypted
    path.write_bytes(without_last_chunk(path.read_bytes(), "big", keep_shape=True))
    with pytest.raises(ValueError, match="dtype and shape need") as info:
        TensorDeserializer(str(path), device="cpu", encryption=dec)
    assert "'big'" in str(info.value) and str(path) in str(info.value)


def test_encrypted_tensor_without_a_sha256_is_refused(encrypted):
    path, dec = encrypted
    path.write_bytes(without_hashes(path.read_bytes(), "big"))
    with pytest.raises(CryptographyError, match="stores no SHA-256") as info:
        TensorDeserializer(str(path), device="cpu", encryption=dec)
    assert "'big'" in str(info.value) and str(path) in str(info.value)
