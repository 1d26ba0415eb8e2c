"""safetensors input: files written by the `safetensors` package load through
the same engine and API as .tensors files, and hostile headers fail with a
format error that names the file and the problem."""

import json
import struct
import time

import pytest
import safetensors.torch
import torch

from tensorizer import TensorDeserializer


def u8(t):
    return t.reshape(-1).view(torch.uint8)


@pytest.fixture(scope="module")
def st_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "model.embed.weight": torch.randn(64, 32, generator=gen, dtype=torch.float32),
        "model.norm.weight": torch.randn(32, generator=gen).to(torch.bfloat16),
        "model.head.weight": torch.randn(16, 32, generator=gen).to(torch.float16),
        "f64": torch.randn(3, generator=gen, dtype=torch.float64),
        "i64": torch.arange(7),
        "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.arange(-3, 3, dtype=torch.int8),
        "u8": torch.arange(9, dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
        "f8a": torch.randn(5, generator=gen).to(torch.float8_e4m3fn),
        "f8b": torch.randn(5, generator=gen).to(torch.float8_e5m2),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
    }
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"lazy_load": True}, {"num_readers": 1}, {"num_readers": 4, "verify_hash": True}],
)
def test_safetensors_file_loads_like_the_package(st_file, kwargs):
    path, tensors = st_file
    d = TensorDeserializer(path, device="cpu", **kwargs)
    assert set(d) == set(tensors)
    reference = safetensors.torch.load_file(str(path))
    for name, t in reference.items():
        got = d[name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(u8(got), u8(t)), name


def test_safetensors_filter_and_state_dict_types(st_file):
    path, tensors = st_file
    d = TensorDeserializer(path, device="cpu", filter_func=lambda n: n.startswith("model."))
    assert sorted(d) == sorted(k for k in tensors if k.startswith("model."))
    assert d.total_bytes_read < path.stat().st_size
    types = {t for _, t, _, _ in TensorDeserializer(path, device="cpu").read_tensors()}
    assert types == {2}  # TensorType.STATE_DICT


def test_safetensors_dtype_cast_and_module_mapping(st_file):
    path, _ = st_file
    d = TensorDeserializer(path, device="cpu", dtype=torch.float16, cast_only_floating=True)
    assert d["model.embed.weight"].dtype == torch.float16
    assert d["i64"].dtype == torch.int64


def header_file(tmp_path, header, data=b"", raw_len=None):
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    n = len(body) if raw_len is None else raw_len
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


def expect_error(path, match):
    with pytest.raises(ValueError) as info:
        TensorDeserializer(path, device="cpu")
    message = str(info.value)
    assert str(path) in message, message
    assert match in message, message


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_oversized_header(tmp_path):
    path = header_file(tmp_path, b"{" + b" " * 64 + b"}", raw_len=200_000_000)
    expect_error(path, "exceeds the 100000000-byte limit")
    body = b'{"a":' + b" " * 100_000_100 + b'{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'
    path = header_file(tmp_path, body)
    expect_error(path, "exceeds the 100000000-byte limit")


def test_header_past_the_end_of_the_file(tmp_path):
    path = header_file(tmp_path, b'{"a": 1}', raw_len=50)
    expect_error(path, "runs past the end")


def test_bad_json(tmp_path):
    expect_error(header_file(tmp_path, b'{"a": {"dtype": "F32",'), "invalid JSON")
    expect_error(header_file(tmp_path, b"{} trailing"), "invalid JSON")


def test_wrong_shapes_of_json(tmp_path):
    expect_error(header_file(tmp_path, {"a": [1, 2]}), "is not an object")
    expect_error(header_file(tmp_path, {"a": {"dtype": "F32"}}), "needs")
    expect_error(header_file(tmp_path, {"__metadata__": {"k": 1}}), "must be strings")
    expect_error(
        header_file(tmp_path, {"a": t("F32", [-1], 0, 4)}, b"\0" * 4), "not a non-negative"
    )


def test_unknown_dtype(tmp_path):
    expect_error(header_file(tmp_path, {"a": t("Q7", [1], 0, 4)}, b"\0" * 4), "unsupported")


def test_out_of_range_offsets(tmp_path):
    expect_error(header_file(tmp_path, {"a": t("F32", [4], 0, 16)}, b"\0" * 8), "outside")
    expect_error(header_file(tmp_path, {"a": t("F32", [1], 8, 4)}, b"\0" * 8), "invalid")


def test_length_disagreeing_with_dtype_and_shape(tmp_path):
    expect_error(header_file(tmp_path, {"a": t("F32", [3], 0, 8)}, b"\0" * 8), "need 12")


def test_overlaps_and_holes(tmp_path):
    overlap = {"a": t("F32", [2], 0, 8), "b": t("F32", [2], 4, 12)}
    expect_error(header_file(tmp_path, overlap, b"\0" * 12), "overlapping")
    hole = {"a": t("F32", [1], 0, 4), "b": t("F32", [1], 8, 12)}
    expect_error(header_file(tmp_path, hole, b"\0" * 12), "hole")
    trailing = {"a": t("F32", [1], 0, 4)}
    expect_error(header_file(tmp_path, trailing, b"\0" * 12), "no tensor covers")


# Issue 12 #21: the header was parsed into a whole JSON tree before any check
# (a 38 MB nesting bomb cost 1.5 GB). The safetensors package refuses nesting
# past 128; so do we, at the first bracket past it, in an unknown field too.
def test_nesting_bomb_is_refused_at_once(tmp_path):
    depth = 4 << 20
    body = (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":'
        + b"[" * depth
        + b"]" * depth
        + b"}}"
    )
    path = header_file(tmp_path, body, b"\0" * 4)
    start = time.monotonic()
    expect_error(path, "nested deeper than 128 levels")
    assert time.monotonic() - start < 2
    with pytest.raises(Exception):
        safetensors.torch.load_file(str(path))  # the package refuses it too


def test_nesting_up_to_the_limit_in_unknown_fields_loads(tmp_path):
    body = (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":'
        + b"[" * 100
        + b"]" * 100
        + b"}}"
    )
    path = header_file(tmp_path, body, struct.pack("<f", 2.5))
    assert safetensors.torch.load_file(str(path))["a"].tolist() == [2.5]
    with TensorDeserializer(path, device="cpu") as d:
        assert d["a"].tolist() == [2.5]
