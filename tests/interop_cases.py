"""Deterministic payloads and load summaries for the interoperability suite.

This module is imported by two interpreters: the pytest process (where
``import tensorizer`` is our package) and ``ref_driver.py`` running in the
reference venv (where it is CoreWeave's tensorizer 2.12.1).  It therefore never
imports tensorizer itself: every function that needs the library takes the
``tensorizer`` module as its first argument.

Two halves:

* ``CASES``: named payloads, each with ``write(tz, path)`` that writes it
  through the public serializer API.  Payloads are built from seeded
  generators so both interpreters write the same bytes.
* ``summarize(tz, path, case, options)``: loads a file through the public
  deserializer API and returns a picklable description of everything that
  was observed (keys, nested mapping levels, ``tree()``, ``read_tensors()``
  tuples, ``load_into_module`` results, tensor bytes as digests).  Two
  summaries are equal iff both libraries behaved the same.

dtype coverage (probed against the reference with torch 2.13):

* Written and read back by the reference: float16/32/64, bfloat16,
  int8/16/32/64, uint8/16/32/64, bool, complex32/64/128, float8_e5m2,
  float8_e4m3fn, float8_e5m2fnuz, float8_e4m3fnuz, float8_e8m0fnu,
  float4_e2m1fn_x2, bits1x8, bits2x4, bits4x2, bits8, bits16, uint1..uint7,
  int1..int7.
* ``EXCLUDED_DTYPES``: rejected by the reference's writer.
* 0-dim meta tensors are left out: the reference writes them as a real
  one-element tensor of uninitialized memory (``torch.empty((0,) * ndim)`` is
  a scalar when ndim is 0), so its bytes and hashes change from run to run.
* Opaque dtypes (every dtype without a numpy equivalent) on the meta device
  or with zero elements are written by the reference but it cannot read them
  back (research §1.10: it feeds ``'<V2\\x00torch.bfloat16'`` to numpy).  Those
  cases have ``ref_reads=False``: we check our reader against the payload
  and our writer's bytes against the reference's, never the reference reader.
* Tensor names exclude "": the reference writes it, then refuses to read the
  file ("Invalid empty tensor path").

Reference behaviours the summaries pin down (a drop-in must match them):

* A filter that removes every leaf under a top-level branch leaves that
  branch's key visible, as an empty mapping.

Deliberate divergences from the reference (decided by the project; each is
marked "DIVERGENCE" where test_interop.py turns the reference's summary into
what ours must produce):

* D1 (retired) encryption: test_interop checks one file the reference
  encrypted (refused without a key, decrypted with it); the round trips
  both ways live in tests/test_encryption.py.
* D2 write_module(include_non_persistent_buffers=False): the reference drops
  every ROOT buffer, persistent or not (it compares "" + "." + name with
  state_dict names); ours drops only the non-persistent ones and keeps the
  persistent root buffers (stored as ".name").  ``Case.ours_also_writes``
  names them.
* D3 load_into_module: the reference re-registers every buffer with
  register_buffer's default, so non-persistent buffers join state_dict();
  ours keeps them non-persistent (state_dict() keys stay those of a fresh
  module).  Summaries record state_dict() keys and values.
* D4 verify_module with root tensors (stored as ".name"): the reference
  reports each of them as failed, twice; ours matches ".name" to the
  state_dict name "name" and reports every stored tensor once.

InteropNet has a root_tensors=False variant, so D2 and D4 do not touch it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

# --------------------------------------------------------------------------
# dtype inventory
# --------------------------------------------------------------------------

# dtypes with a numpy equivalent: stored as numpy's dtype.str, data version 1.
NUMPY_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "complex64",
    "complex128",
)

# dtypes without one: stored as "<V{n}\0torch.{name}" (opaque), data version 2.
OPAQUE_DTYPES = tuple(
    name
    for name in (
        "bfloat16",
        "complex32",
        "float8_e5m2",
        "float8_e4m3fn",
        "float8_e5m2fnuz",
        "float8_e4m3fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn_x2",
        "bits1x8",
        "bits2x4",
        "bits4x2",
        "bits8",
        "bits16",
        *(f"uint{i}" for i in range(1, 8)),
        *(f"int{i}" for i in range(1, 8)),
    )
    if isinstance(getattr(torch, name, None), torch.dtype)
)

# The reference raises NotImplementedError("Serialization for torch.qint8 is
# not implemented."): quantized tensors need scale/zero-point metadata that the
# format cannot store.
EXCLUDED_DTYPES = {
    name: "quantized dtype: the reference writer raises NotImplementedError"
    for name in ("quint8", "qint8", "qint32", "quint4x2", "quint2x4")
    if isinstance(getattr(torch, name, None), torch.dtype)
}


def _seed(label: str) -> int:
    return zlib.crc32(label.encode())


def random_bytes(label: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed(label))
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)


def filled(label: str, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """A tensor of ``dtype`` whose bytes are a seeded pseudo-random pattern.

    Every bit pattern is fair game (NaNs, infinities, subnormals): the suite
    compares raw bytes.  bool is the exception, as torch requires 0 or 1.
    """
    numel = 1
    for dim in shape:
        numel *= dim
    if dtype == torch.bool:
        g = torch.Generator().manual_seed(_seed(label))
        return torch.randint(0, 2, tuple(shape), generator=g).to(torch.bool)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = random_bytes(label, numel * itemsize)
    return raw.view(dtype).reshape(tuple(shape))


def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


# --------------------------------------------------------------------------
# Load options
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    lazy_load: bool = False
    num_readers: int = 1
    verify_hash: bool = False
    # Keep only tensors whose first path component starts with this string.
    filter_prefix: str | None = None

    @property
    def id(self) -> str:
        parts = ["lazy" if self.lazy_load else "eager", f"r{self.num_readers}"]
        if self.verify_hash:
            parts.append("verify")
        if self.filter_prefix is not None:
            parts.append(f"filter={self.filter_prefix}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BASIC_OPTIONS = (LoadOptions(verify_hash=True),)
FULL_OPTIONS = (
    LoadOptions(lazy_load=False, num_readers=1),
    LoadOptions(lazy_load=True, num_readers=1),
    LoadOptions(lazy_load=False, num_readers=4, verify_hash=True),
    LoadOptions(lazy_load=True, num_readers=4, verify_hash=True),
)


def make_filter(prefix: str | None) -> Callable[[Any], bool] | None:
    if prefix is None:
        return None

    def keep(name) -> bool:
        first = name if isinstance(name, str) else name[0]
        return str(first).startswith(prefix)

    return keep


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    write: Callable[[ModuleType, str], None]
    # Header data version the reference writes for this case.
    version: int
    # "state_dict": payload() is what write_state_dict got; "module": the
    # file came from write_module; "tensors": individual write_tensor calls.
    kind: str = "state_dict"
    payload: Callable[[], Any] | None = None
    options: tuple[LoadOptions, ...] = BASIC_OPTIONS
    # False where the reference cannot read its own file (research §1.10).
    ref_reads: bool = True
    # Fresh module for load_into_module (module cases).
    target_module: Callable[[], nn.Module] | None = None
    # The module that was written, for verify_module (module cases).
    source_module: Callable[[], nn.Module] | None = None
    # Expected exception type name when writing (then nothing is read).
    write_error: str | None = None
    # DIVERGENCE D2: tensors our writer stores that the reference's drops
    # (persistent root buffers under include_non_persistent_buffers=False).
    ours_also_writes: tuple[str, ...] = ()


def _state_dict_writer(payload: Callable[[], Any]):
    def write(tz: ModuleType, path: str) -> None:
        serializer = tz.TensorSerializer(path)
        serializer.write_state_dict(payload())
        serializer.close()

    return write


def _state_dict_case(name: str, payload: Callable[[], Any], version: int, **kw) -> Case:
    return Case(
        name=name,
        write=_state_dict_writer(payload),
        version=version,
        payload=payload,
        **kw,
    )


# -- golden -----------------------------------------------------------------


def golden_payload() -> dict:
    return {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


def golden_bytes() -> bytes:
    """The 262327-byte file of research §1.14 (verified with tensorizer 2.11.1)."""
    header = b"|TZR|" + struct.pack("<I", 1) + bytes(32) + struct.pack("<QQQ", 24, 0, 1)
    entry = bytes.fromhex(
        "0100 61 02 03 3c6634 02 02000000 03000000"
        " 4900040000000000 9700040000000000 1800000000000000"
    )
    metadata = entry + bytes(262144 - len(entry))
    tensor_header = bytes.fromhex(
        "4e00000000000000 0000 02 0100 61 03 3c6634 02 02000000 03000000"
        " 2900 02 00 04 2b57a458 01 20"
        " e8e3d014d48f732fb354e0362af5d6b75aa061cb5a911b2fc5f4a301948b1682"
        " 1800000000000000"
    )
    data = bytes.fromhex("00000000 0000803f 00000040 00004040 00008040 0000a040")
    out = header + struct.pack("<Q", 262144) + metadata + tensor_header + data + bytes(8)
    assert len(out) == 262327
    return out


# -- dtypes -----------------------------------------------------------------


def _dtype_payload(name: str) -> Callable[[], dict]:
    def payload() -> dict:
        return {name: filled(f"dtype:{name}", dtype_of(name), (3, 5))}

    return payload


def numpy_dtypes_payload() -> dict:
    return {n: filled(f"all:{n}", dtype_of(n), (2, 7)) for n in NUMPY_DTYPES}


def all_dtypes_payload() -> dict:
    return {n: filled(f"all:{n}", dtype_of(n), (2, 7)) for n in NUMPY_DTYPES + OPAQUE_DTYPES}


def quantized_payload(name: str) -> Callable[[], dict]:
    def payload() -> dict:
        base = torch.linspace(-1, 1, 8)
        return {"q": torch.quantize_per_tensor(base, 0.1, 0, dtype_of(name))}

    return payload


# -- shapes -----------------------------------------------------------------


def scalars_payload() -> dict:
    return {
        "f32": torch.tensor(1.5),
        "f64": torch.tensor(float("nan"), dtype=torch.float64),
        "f16": torch.tensor(-0.0, dtype=torch.float16),
        "i64": torch.tensor(-7),
        "u8": torch.tensor(200, dtype=torch.uint8),
        "bool": torch.tensor(True),
        "c64": torch.tensor(1 - 2j, dtype=torch.complex64),
    }


def opaque_scalars_payload() -> dict:
    return {
        "bf16": torch.tensor(3.25, dtype=torch.bfloat16),
        "f8": filled("scalar:f8", torch.float8_e4m3fn, ()),
        "c32": filled("scalar:c32", torch.complex32, ()),
        "f32": torch.tensor(2.0),
    }


def empty_payload() -> dict:
    return {
        "vec": torch.empty(0),
        "rows": torch.empty(0, 4),
        "middle": torch.empty(3, 0, 2),
        "i64": torch.empty(0, dtype=torch.int64),
        "bool": torch.empty(0, 3, dtype=torch.bool),
        "after": torch.arange(4, dtype=torch.float32),
    }


def empty_opaque_payload() -> dict:
    return {
        "before": torch.arange(3, dtype=torch.int16),
        "bf16": torch.empty(0, dtype=torch.bfloat16),
        "c32": torch.empty(0, 4, dtype=torch.complex32),
        "f8": torch.empty(2, 0, dtype=torch.float8_e5m2),
    }


LARGE_SHAPE = (4096, 4096)  # 64 MiB of float32


def large_payload() -> dict:
    g = torch.Generator().manual_seed(_seed("large"))
    return {
        "head": torch.arange(10, dtype=torch.int32),
        "big": torch.randn(LARGE_SHAPE, generator=g),
        "tail": filled("large:tail", torch.bfloat16, (33,)),
    }


def noncontiguous_payload() -> dict:
    base = filled("nc:base", torch.float32, (6, 8))
    base4 = filled("nc:base4", torch.float32, (2, 3, 4, 5))
    half = filled("nc:half", torch.bfloat16, (4, 6))
    return {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "expanded": torch.arange(3, dtype=torch.int64).unsqueeze(0).expand(4, 3),
        "permuted": base4.permute(3, 1, 0, 2),
        "channels_last": base4.contiguous(memory_format=torch.channels_last),
        "offset_view": base.reshape(-1)[5:17],
        "column": base[:, 2],
        "shared_a": base[1],
        "shared_b": base[1:3],
        "bf16_transposed": half.t(),
    }


# -- nested structures ------------------------------------------------------


def nested_payload() -> dict:
    def t(label: str, shape=(3,), dtype=torch.float32):
        return filled(f"nested:{label}", dtype, shape)

    return {
        "model": {
            "layers": [
                {"weight": t("l0w", (2, 3)), "bias": t("l0b")},
                {"weight": t("l1w", (2, 3)), "bias": t("l1b")},
            ],
            "embed": t("embed", (4, 2)),
        },
        "optimizer": [t("opt0", (), torch.int64), t("opt1", (2,), torch.float64)],
        "step": t("step", (), torch.int32),
        "deep": {"a": {"b": {"c": [[t("deep0")], (t("deep1"),)]}}},
    }


def top_list_payload() -> list:
    def t(label: str, shape=(2,), dtype=torch.float32):
        return filled(f"toplist:{label}", dtype, shape)

    return [
        t("0"),
        {"a": t("1a"), "b": [t("1b0"), t("1b1", (2, 2), torch.int16)]},
        (t("2_0"), t("2_1", (0,))),
        t("3", (), torch.bool),
    ]


def names_payload() -> dict:
    # The empty name is left out on purpose: the reference writes it but then
    # refuses to read the file ("Invalid empty tensor path").
    return {
        "ключ": torch.ones(2),
        "emoji 🙂": torch.full((1,), 2.0),
        "a.b.c": torch.full((1,), 3.0),
        "tab\tnew\nline": torch.full((1,), 4.0),
        "[0]": torch.full((1,), 5.0),
        "x" * 300: torch.full((1,), 6.0),
    }


# -- meta tensors ---------------------------------------------------------


def meta_payload() -> dict:
    return {
        "real": filled("meta:real", torch.float32, (2, 2)),
        "meta_f32": torch.empty(3, 4, device="meta"),
        "meta_i64": torch.empty(5, dtype=torch.int64, device="meta"),
        "meta_empty": torch.empty(0, 3, device="meta"),
        "after": filled("meta:after", torch.int8, (4,)),
    }


def meta_opaque_payload() -> dict:
    return {
        "real": filled("metaop:real", torch.float32, (2,)),
        "meta_bf16": torch.empty(2, 3, dtype=torch.bfloat16, device="meta"),
        "meta_f8": torch.empty(4, dtype=torch.float8_e4m3fn, device="meta"),
        "meta_c32": torch.empty(2, dtype=torch.complex32, device="meta"),
        "real_bf16": filled("metaop:bf16", torch.bfloat16, (3,)),
    }


# -- modules ----------------------------------------------------------------


class InteropBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("cache", torch.zeros(dim), persistent=False)


class InteropNet(nn.Module):
    """A ModuleList, persistent and non-persistent buffers, a tied weight and,
    optionally, root parameters and buffers (stored with a leading dot: the
    reference mishandles them in verify_module and drops root buffers when
    include_non_persistent_buffers=False, so the suite also has modules
    without them), a meta parameter, a meta buffer and a bfloat16 parameter."""

    def __init__(self, *, seed: str, with_meta: bool, root_tensors: bool = True):
        super().__init__()
        if root_tensors:
            self.w = nn.Parameter(torch.empty(4, 6))
            self.register_buffer("buf", torch.empty(6))
            self.register_buffer("mask", torch.empty(6, dtype=torch.bool), persistent=False)
            self.ids = nn.Parameter(torch.empty(3, dtype=torch.int32), requires_grad=False)
        self.blocks = nn.ModuleList([InteropBlock(6), InteropBlock(6)])
        self.head = nn.Linear(6, 3, bias=False)
        self.tied = nn.Linear(6, 3, bias=False)
        self.tied.weight = self.head.weight
        if with_meta:
            self.ghost = nn.Parameter(torch.empty(5, 6, device="meta"))
            self.bf16 = nn.Parameter(torch.empty(2, 3, dtype=torch.bfloat16))
            self.register_buffer("meta_buf", torch.empty(4, device="meta"))
        with torch.no_grad():
            for name, tensor in [*self.named_parameters(), *self.named_buffers()]:
                if tensor.device.type != "meta":
                    tensor.copy_(filled(f"{seed}:{name}", tensor.dtype, tensor.shape))


def _module_writer(shape: dict, include_non_persistent_buffers: bool | None):
    def write(tz: ModuleType, path: str) -> None:
        serializer = tz.TensorSerializer(path)
        module = InteropNet(seed="source", **shape)
        if include_non_persistent_buffers is None:
            serializer.write_module(module)
        else:
            serializer.write_module(
                module, include_non_persistent_buffers=include_non_persistent_buffers
            )
        serializer.close()

    return write


def _module_case(
    name: str,
    *,
    include_npb: bool | None,
    version: int,
    with_meta: bool = False,
    root_tensors: bool = True,
):
    shape = {"with_meta": with_meta, "root_tensors": root_tensors}
    # DIVERGENCE D2: only include_non_persistent_buffers=False differs, and
    # only where the root module has persistent buffers.
    root_persistent_buffers: tuple[str, ...] = ()
    if include_npb is False:
        source = InteropNet(seed="source", **shape)
        persistent = source.state_dict().keys()
        root_persistent_buffers = tuple(
            f".{n}" for n, _ in source.named_buffers(recurse=False) if n in persistent
        )
    return Case(
        name=name,
        write=_module_writer(shape, include_npb),
        version=version,
        kind="module",
        options=(
            *FULL_OPTIONS,
            LoadOptions(lazy_load=True, filter_prefix="blocks"),
            LoadOptions(
                lazy_load=False, num_readers=4, filter_prefix=".w" if root_tensors else "head"
            ),
        ),
        target_module=lambda: InteropNet(seed="target", **shape),
        source_module=lambda: InteropNet(seed="source", **shape),
        ours_also_writes=root_persistent_buffers,
    )


# -- write_tensor / mixed calls ------------------------------------------


def write_tensors(tz: ModuleType, path: str) -> None:
    serializer = tz.TensorSerializer(path)
    serializer.write_tensor(0, "p", tz.TensorType.PARAM, filled("wt:p", torch.float32, (3, 2)))
    serializer.write_tensor(1, "b", tz.TensorType.BUFFER, filled("wt:b", torch.int64, (4,)))
    serializer.write_tensor(7, "sd", tz.TensorType.STATE_DICT, filled("wt:sd", torch.float16, (2,)))
    serializer.write_tensor(
        65535,
        "np_f32",
        tz.TensorType.PARAM,
        np.arange(6, dtype=np.float32).reshape(2, 3),
    )
    serializer.write_tensor(
        3, "np_i16", tz.TensorType.BUFFER, np.array([-1, 0, 1, 32767], dtype=np.int16)
    )
    serializer.write_tensor(2, "bf16", tz.TensorType.PARAM, filled("wt:bf16", torch.bfloat16, (5,)))
    serializer.close()


def write_mixed(tz: ModuleType, path: str) -> None:
    serializer = tz.TensorSerializer(path)
    serializer.write_state_dict({"first": filled("mixed:first", torch.float32, (4,))})
    serializer.write_tensor(
        9, "single", tz.TensorType.BUFFER, filled("mixed:single", torch.int32, (2, 2))
    )
    serializer.write_state_dict(
        {
            "second": filled("mixed:second", torch.float64, (3,)),
            "third": torch.tensor(1),
        }
    )
    serializer.close()


# -- encryption -----------------------------------------------------------
# One file the reference encrypts with a random key; test_interop checks
# that ours refuses it without the key and decrypts it with the key.


def encrypted_payload() -> dict:
    return {
        "small": filled("enc:small", torch.float32, (3,)),
        "bf16": filled("enc:bf16", torch.bfloat16, (4, 4)),
    }


def write_encrypted_random_key(tz: ModuleType, path: str) -> bytes:
    """Write encrypted_payload() with a random key; return the key."""
    encryption = tz.EncryptionParams.random()
    serializer = tz.TensorSerializer(path, encryption=encryption)
    serializer.write_state_dict(encrypted_payload())
    serializer.close()
    return bytes(encryption.key)


# -- the list -----------------------------------------------------------------


def _build_cases() -> list[Case]:
    cases = [
        _state_dict_case("golden", golden_payload, 1, options=FULL_OPTIONS),
        _state_dict_case("numpy_dtypes", numpy_dtypes_payload, 1, options=FULL_OPTIONS),
        _state_dict_case("all_dtypes", all_dtypes_payload, 2, options=FULL_OPTIONS),
    ]
    cases += [_state_dict_case(f"dtype_{n}", _dtype_payload(n), 1) for n in NUMPY_DTYPES]
    cases += [_state_dict_case(f"dtype_{n}", _dtype_payload(n), 2) for n in OPAQUE_DTYPES]
    cases += [
        Case(
            name=f"rejected_{n}",
            write=_state_dict_writer(quantized_payload(n)),
            version=1,
            payload=quantized_payload(n),
            write_error="NotImplementedError",
            options=(),
        )
        for n in EXCLUDED_DTYPES
    ]
    cases += [
        _state_dict_case("scalars", scalars_payload, 1, options=FULL_OPTIONS),
        _state_dict_case("scalars_opaque", opaque_scalars_payload, 2),
        _state_dict_case("empty", empty_payload, 1, options=FULL_OPTIONS),
        _state_dict_case("empty_opaque", empty_opaque_payload, 2, ref_reads=False),
        _state_dict_case("large", large_payload, 2, options=FULL_OPTIONS),
        _state_dict_case("noncontiguous", noncontiguous_payload, 2, options=FULL_OPTIONS),
        _state_dict_case(
            "nested",
            nested_payload,
            1,
            options=(
                *FULL_OPTIONS,
                LoadOptions(lazy_load=True, filter_prefix="model"),
                LoadOptions(lazy_load=False, num_readers=4, filter_prefix="o"),
            ),
        ),
        _state_dict_case(
            "top_list",
            top_list_payload,
            1,
            options=(*FULL_OPTIONS, LoadOptions(lazy_load=True, filter_prefix="1")),
        ),
        _state_dict_case("names", names_payload, 1, options=FULL_OPTIONS),
        _state_dict_case("meta", meta_payload, 4, options=FULL_OPTIONS),
        _state_dict_case("meta_opaque", meta_opaque_payload, 4, ref_reads=False),
        _module_case("module", include_npb=None, version=1),
        _module_case("module_persistent_only", include_npb=False, version=1),
        _module_case("module_no_root", include_npb=True, version=1, root_tensors=False),
        _module_case(
            "module_no_root_persistent_only",
            include_npb=False,
            version=1,
            root_tensors=False,
        ),
        _module_case("module_meta", with_meta=True, include_npb=True, version=4),
        _module_case("module_meta_persistent_only", with_meta=True, include_npb=False, version=4),
        Case(
            name="write_tensor",
            write=write_tensors,
            version=2,
            kind="tensors",
            options=FULL_OPTIONS,
        ),
        Case(
            name="mixed_calls",
            write=write_mixed,
            version=1,
            kind="tensors",
            options=FULL_OPTIONS,
        ),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


CASES: list[Case] = _build_cases()
CASES_BY_NAME: dict[str, Case] = {c.name: c for c in CASES}


# --------------------------------------------------------------------------
# Header helpers (no tensorizer needed)
# --------------------------------------------------------------------------


def read_file_header(path: str) -> dict:
    with open(path, "rb") as f:
        head = f.read(73)
    return {
        "magic": head[:5],
        "version": struct.unpack_from("<I", head, 5)[0],
        "flags": int.from_bytes(head[9:41], "little"),
        "tensor_size": struct.unpack_from("<Q", head, 41)[0],
        "tensor_count": struct.unpack_from("<Q", head, 57)[0],
        "metadata_length": struct.unpack_from("<Q", head, 65)[0],
    }


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------

ERROR = "!error"


def error_record(exc: BaseException) -> tuple:
    """How an exception appears in a summary: its class name and the names
    along its MRO.  Ours matches the reference's error if the reference's
    class name is anywhere in our MRO (ours may raise a subclass)."""
    return (ERROR, type(exc).__name__, tuple(c.__name__ for c in type(exc).__mro__))


def is_error(value) -> bool:
    return isinstance(value, tuple) and value[:1] == (ERROR,)


def same_error(ours: tuple, want: tuple) -> bool:
    return want[1] in ours[2]


class _TensorRecorder:
    """Describes tensors; digests are memoized per object (kept alive so that
    ids are not reused) because the same cached Parameter is reached through
    the mapping, tree() and the module."""

    def __init__(self):
        self._memo: dict[int, tuple[torch.Tensor, dict]] = {}

    def __call__(self, t: torch.Tensor) -> dict:
        hit = self._memo.get(id(t))
        if hit is not None:
            return hit[1]
        record = describe_tensor(t)
        self._memo[id(t)] = (t, record)
        return record


def tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def describe_tensor(t: torch.Tensor) -> dict:
    record = {
        "class": type(t).__name__,
        "dtype": str(t.dtype),
        "shape": tuple(t.shape),
        "requires_grad": bool(t.requires_grad),
        "device": t.device.type,
    }
    if t.device.type == "meta":
        record["sha256"] = None
    else:
        data = tensor_bytes(t)
        record["nbytes"] = len(data)
        record["sha256"] = hashlib.sha256(data).hexdigest()
        record["head"] = data[:16].hex()
    return record


def _walk(value, rec: _TensorRecorder):
    if isinstance(value, torch.Tensor):
        return {"tensor": rec(value)}
    if isinstance(value, Mapping):
        return {
            "mapping": type(value).__name__,
            "items": [(k, _walk(value[k], rec)) for k in list(value.keys())],
        }
    if isinstance(value, (list, tuple)):
        return {
            "sequence": type(value).__name__,
            "items": [_walk(v, rec) for v in value],
        }
    return {"other": type(value).__name__, "repr": repr(value)}


def _guard(summary: dict, key: str, fn: Callable[[], Any]) -> Any:
    try:
        summary[key] = fn()
    except Exception as exc:
        summary[key] = error_record(exc)
        summary.setdefault("_errors", []).append(f"{key}: {type(exc).__name__}: {exc}")
    return summary[key]


def summarize(tz: ModuleType, path: str, case: Case, options: LoadOptions) -> dict:
    """Load ``path`` with ``tz`` and describe everything observable.

    Keys starting with "_" hold diagnostics only and are not compared.
    """
    rec = _TensorRecorder()
    keep = make_filter(options.filter_prefix)

    def open_deserializer(lazy_load: bool):
        return tz.TensorDeserializer(
            path,
            device="cpu",
            filter_func=keep,
            lazy_load=lazy_load,
            num_readers=options.num_readers,
            verify_hash=options.verify_hash,
        )

    summary: dict = {}

    def attempt(label: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            summary.setdefault("_errors", []).append(f"{label}: {type(exc).__name__}: {exc}")
            return error_record(exc)

    def mapping_view() -> dict:
        d = open_deserializer(options.lazy_load)
        try:
            keys = list(d.keys())
            view = {
                "keys": keys,
                "iter": list(d),
                "len": len(d),
                "contains": [k in d for k in keys],
                "contains_absent": "__absent__" in d,
                "get_absent": attempt("get", lambda: repr(d.get("__absent__"))),
                "getitem_absent": attempt("getitem", lambda: repr(d["__absent__"])),
            }
            # Keys are visited in file order: the reference's lazy mode only
            # reads forward (research §2.3).
            view["items"] = [(k, _walk(d[k], rec)) for k in keys]
            view["tree"] = attempt("tree", lambda: _walk(d.tree(), rec))
            view["subtrees"] = [
                (k, attempt(f"tree({k!r})", lambda k=k: _walk(d.tree((k,)), rec)))
                for k in keys
                if isinstance(d[k], Mapping)
            ]
            view["tree_absent"] = attempt(
                "tree(absent)", lambda: repr(d.tree(("__absent__",), default="DEFAULT"))
            )
            view["total_file_bytes"] = attempt("total_file_bytes", lambda: d.total_file_bytes)
            if case.source_module is not None and not options.lazy_load:

                def verify():
                    ok, results = d.verify_module(case.source_module())
                    # The reference reports in set order: sort.
                    return bool(ok), sorted((n, bool(r)) for n, r in results)

                view["verify_module"] = attempt("verify_module", verify)
            return view
        finally:
            d.close()

    def read_tensors() -> list:
        d = open_deserializer(True)
        try:
            return [
                (int(idx), int(ttype), name, rec(t)) for idx, ttype, name, t in d.read_tensors()
            ]
        finally:
            d.close()

    def module_view() -> dict:
        d = open_deserializer(options.lazy_load)
        m = case.target_module()
        try:
            count = d.load_into_module(m)
        finally:
            d.close()
        return {
            "count": count,
            "parameters": [(n, rec(p)) for n, p in m.named_parameters(remove_duplicate=False)],
            "buffers": [(n, rec(b)) for n, b in m.named_buffers(remove_duplicate=False)],
            # DIVERGENCE D3 shows here: keys and values, in order.
            "state_dict": [(k, rec(v)) for k, v in m.state_dict().items()],
        }

    _guard(summary, "mapping", mapping_view)
    _guard(summary, "read_tensors", read_tensors)
    if case.target_module is not None:
        _guard(summary, "module", module_view)
    return summary


# --------------------------------------------------------------------------
# Expectations derived from payloads (no reader involved)
# --------------------------------------------------------------------------


def _flatten(obj, path: tuple, out: list) -> None:
    if isinstance(obj, torch.Tensor):
        out.append((path, obj))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, (*path, k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, (*path, i), out)
    else:
        raise TypeError(f"unexpected payload leaf {type(obj).__name__}")


def expected_read_tensors(case: Case) -> list:
    """What read_tensors() must yield for a write_state_dict case: module
    index 0, STATE_DICT (2), normalized names, meta tensors as zeros, every
    tensor a Parameter that requires grad iff floating point or complex."""
    assert case.kind == "state_dict" and case.payload is not None
    flat: list = []
    _flatten(case.payload(), (), flat)
    out = []
    for path, t in flat:
        name = path[0] if len(path) == 1 and isinstance(path[0], str) else path
        if t.device.type == "meta":
            t = torch.zeros(t.shape, dtype=t.dtype)
        record = describe_tensor(t)
        record["class"] = "Parameter"
        record["requires_grad"] = t.dtype.is_floating_point or t.dtype.is_complex
        out.append((0, 2, name, record))
    return out
