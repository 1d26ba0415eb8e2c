"""Hostile and damaged files: each must raise a clear exception of the
reference's type (ValueError for bad files, HashMismatchError for bad data)
that names the file and the problem, never crash, hang or over-allocate."""

import struct
import time

import pytest
import torch

from tensorizer import TensorDeserializer, TensorSerializer
from tensorizer.serialization import HashMismatchError

MAGIC_END = 5
VERSION_AT = 5
FLAGS_AT = 9
COUNT_AT = 57
METADATA_LENGTH_AT = 65
FIRST_ENTRY_AT = 73
FIRST_HEADER_AT = 262217


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.tensors"
    s = TensorSerializer(path)
    s.write_state_dict({"alpha": torch.arange(64, dtype=torch.float32), "beta": torch.ones(3, 5)})
    s.close()
    return path.read_bytes()


def load_bytes(tmp_path, data, name="bad.tensors", **kwargs):
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return TensorDeserializer(path, device="cpu", **kwargs), path


def expect_error(tmp_path, data, match, exc=ValueError, **kwargs):
    path = tmp_path / "bad.tensors"
    path.write_bytes(bytes(data))
    start = time.monotonic()
    with pytest.raises(exc) as info:
        TensorDeserializer(path, device="cpu", **kwargs)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert str(path) in message, message
    assert match.lower() in message.lower(), message
    return message


def patch(data, offset, fmt, value):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return out


def test_wrong_magic(tmp_path, good):
    expect_error(tmp_path, b"|TZX|" + good[5:], "not a tensorizer file")
    expect_error(tmp_path, b"PK\x03\x04" + b"\0" * 200, "not a tensorizer file")


@pytest.mark.parametrize("length", [0, 3, 5, 9, 40, 72])
def test_truncated_header(tmp_path, good, length):
    expect_error(tmp_path, good[:length], "bad magic" if length < 5 else "too small")


@pytest.mark.parametrize("length", [100, 262000])
def test_truncated_metadata(tmp_path, good, length):
    expect_error(tmp_path, good[:length], "past the end")


def test_file_ending_after_the_index(tmp_path, good):
    expect_error(tmp_path, good[:FIRST_HEADER_AT], "outside the file")


@pytest.mark.parametrize("cut_from_end", [9, 100, 300])
def test_truncated_tensor_data(tmp_path, good, cut_from_end):
    expect_error(tmp_path, good[:-cut_from_end], "outside the file")


def test_truncated_lazy_load_reports_end_of_file(tmp_path, good):
    # The index is intact but the file ends inside a record: found at load time.
    data = bytearray(good)
    d, path = load_bytes(tmp_path, data, lazy_load=True)
    path.write_bytes(bytes(data[: FIRST_HEADER_AT + 50]))
    with pytest.raises(ValueError) as info:
        d["beta"]
    assert str(path) in str(info.value)


@pytest.mark.parametrize("version", [0, 6, 0xFFFFFFFF])
def test_unknown_version(tmp_path, good, version):
    expect_error(tmp_path, patch(good, VERSION_AT, "<I", version), "unsupported data version")


def test_unknown_feature_flags(tmp_path, good):
    data = patch(patch(good, VERSION_AT, "<I", 4), FLAGS_AT, "<Q", 1 << 7)
    expect_error(tmp_path, data, "feature flags")
    data = patch(patch(good, VERSION_AT, "<I", 4), FLAGS_AT + 31, "<B", 1)
    expect_error(tmp_path, data, "feature flags")


def test_versioned_flag_before_version_5(tmp_path, good):
    data = patch(patch(good, VERSION_AT, "<I", 4), FLAGS_AT, "<Q", 2)
    expect_error(tmp_path, data, "feature flag")


def test_absurd_tensor_count(tmp_path, good):
    expect_error(tmp_path, patch(good, COUNT_AT, "<Q", 1 << 62), "cannot fit")
    expect_error(tmp_path, patch(good, COUNT_AT, "<Q", 0), "empty")


def test_absurd_metadata_length(tmp_path, good):
    expect_error(tmp_path, patch(good, METADATA_LENGTH_AT, "<Q", 1 << 60), "past the end")


def test_index_entry_pointing_outside_the_file(tmp_path, good):
    # First entry: u16 name len, "alpha", u8 type, u8 dtype len, "<f4",
    # u8 ndim, u32 dim, then u64 header offset, data offset, data length.
    entry_offsets = FIRST_ENTRY_AT + 2 + 5 + 1 + 1 + 3 + 1 + 4
    expect_error(tmp_path, patch(good, entry_offsets, "<Q", 1 << 40), "outside the file")
    expect_error(tmp_path, patch(good, entry_offsets + 8, "<Q", 1 << 40), "outside the file")
    expect_error(tmp_path, patch(good, entry_offsets + 16, "<Q", 1 << 60), "bytes")


def test_absurd_name_length(tmp_path, good):
    small_block = patch(good, METADATA_LENGTH_AT, "<Q", 200)
    expect_error(tmp_path, patch(small_block, FIRST_ENTRY_AT, "<H", 0xFFFF), "runs past the end")


def test_bad_dtype(tmp_path, good):
    data = bytearray(good)
    at = FIRST_ENTRY_AT + 2 + 5 + 1 + 1
    data[at : at + 3] = b"<x4"
    expect_error(tmp_path, data, "dtype")


def test_header_disagreeing_with_index(tmp_path, good):
    data = bytearray(good)
    name_at = FIRST_HEADER_AT + 8 + 2 + 1 + 2
    assert data[name_at : name_at + 5] == b"alpha"
    data[name_at : name_at + 5] = b"alpho"
    expect_error(tmp_path, data, "does not match")


def test_hash_mismatch(tmp_path, good):
    data = bytearray(good)
    data[-9] ^= 0xFF
    message = expect_error(
        tmp_path, data, "failed CRC32 verification", HashMismatchError, verify_hash=True
    )
    assert "'beta'" in message
    expect_error(tmp_path, data, "verification", HashMismatchError, verify_hash="all")


def test_stored_hash_corrupted(tmp_path, good):
    # Corrupt the stored SHA-256 itself: only the full check sees it.
    data = bytearray(good)
    sha_at = len(good) - 8 - 12 * 4 - 8 - 32
    data[sha_at] ^= 0xFF
    expect_error(tmp_path, data, "SHA256", HashMismatchError, verify_hash="all")


def _with_first_name(good, name: bytes):
    """Rewrites the first tensor's name (same length) in index and header."""
    data = bytearray(good)
    assert len(name) == 5
    data[FIRST_ENTRY_AT + 2 : FIRST_ENTRY_AT + 7] = name
    at = FIRST_HEADER_AT + 8 + 2 + 1 + 2
    data[at : at + 5] = name
    return data


@pytest.mark.parametrize("name", [b"\x1e[1.5]", b"\x1e{}xx", b"\x1e[-1]", b"\x1e[{}]", b"\x1e[\n]"])
def test_malformed_structured_names(tmp_path, good, name):
    name = (name + b"     ")[:5] if len(name) < 5 else name[:5]
    if not name.endswith(b"]"):
        name = name[:4] + b"]"
    expect_error(tmp_path, _with_first_name(good, name), "entry 0")


def test_opaque_dtype_with_the_wrong_width(tmp_path):
    path = tmp_path / "w.tensors"
    s = TensorSerializer(path)
    s.write_state_dict({"x": torch.ones(2, dtype=torch.bfloat16)})
    s.write_state_dict({"m": torch.empty(2, dtype=torch.bfloat16, device="meta")})
    s.close()
    data = path.read_bytes()
    # Stored data no longer matches dtype x shape: caught by the index check.
    expect_error(
        tmp_path, data.replace(b"<V2\x00torch.bfloat16", b"<V4\x00torch.bfloat16", 1), "need 8"
    )
    # A meta tensor has no data to compare: caught by the dtype width check.
    first = data.index(b"<V2\x00torch.bfloat16")
    second = data.index(b"<V2\x00torch.bfloat16", first + 1)
    meta = data[:second] + b"<V4" + data[second + 3 :]
    expect_error(tmp_path, meta, "wrong width")


def test_unknown_flag_bits_rejected_in_any_version(tmp_path, good):
    expect_error(tmp_path, patch(good, FLAGS_AT, "<Q", 1 << 9), "feature flags")


# Issue 12 #19: the file chooses the Argon2id cost. opslimit 2^32 - 1 hung a
# passphrase load for hours, memlimit 4 GiB allocated 4.1 GB. Loads refuse
# more than the strongest preset (sensitive: 4, 1 GiB) unless the caller
# raises the cap.
def _passphrase_file(tmp_path, opslimit=1):
    from tensorizer import EncryptionParams

    path = tmp_path / "pw.tensors"
    enc = EncryptionParams.from_string("pw", opslimit=opslimit, memlimit=8192)
    s = TensorSerializer(path, encryption=enc)
    s.write_state_dict({"a": torch.arange(8.0)})
    s.close()
    data = path.read_bytes()
    stored = struct.pack("<QQ", opslimit, 8192)
    assert data.count(stored) == 1
    return data, data.index(stored)


@pytest.mark.parametrize(
    "opslimit, memlimit, match",
    [
        (0xFFFFFFFF, 8192, "opslimit 4294967295, more than the allowed 4"),
        (1, 4 << 30, "4294967296 bytes of memory, more than the allowed 1073741824"),
    ],
)
def test_passphrase_load_refuses_a_hostile_argon2_cost(tmp_path, opslimit, memlimit, match):
    from tensorizer import DecryptionParams
    from tensorizer.serialization import CryptographyError

    data, at = _passphrase_file(tmp_path)
    hostile = patch(patch(data, at, "<Q", opslimit), at + 8, "<Q", memlimit)
    expect_error(
        tmp_path, hostile, match, CryptographyError, encryption=DecryptionParams.from_string("pw")
    )


def test_argon2_cost_cap_can_be_raised_for_a_trusted_file(tmp_path):
    from tensorizer import DecryptionParams
    from tensorizer.serialization import CryptographyError

    data, _ = _passphrase_file(tmp_path, opslimit=5)
    expect_error(
        tmp_path, data, "opslimit 5", CryptographyError, encryption=DecryptionParams.from_string("pw")
    )
    trusted = DecryptionParams.from_string("pw")
    trusted.max_opslimit = 5
    d, _ = load_bytes(tmp_path, data, encryption=trusted)
    assert torch.equal(d["a"], torch.arange(8.0))
