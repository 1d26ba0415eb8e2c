"""Mapping between torch dtypes and the dtype strings stored in .tensors files.

Files store numpy's ``dtype.str`` ("<f4", "|b1"). Torch dtypes numpy cannot
name ("opaque": bfloat16, float8 variants, complex32, ...) are stored as the
same-width void type plus NUL plus the torch name, e.g. "<V2\\0torch.bfloat16".
"""

from typing import Optional, Tuple

import numpy as np
import torch

OPAQUE_DTYPE_SEP = "\0"

# Stored strings for dtypes numpy can represent, as numpy spells them.
_NUMPY_STRS = {
    torch.float16: "<f2",
    torch.float32: "<f4",
    torch.float64: "<f8",
    torch.int8: "|i1",
    torch.uint8: "|u1",
    torch.int16: "<i2",
    torch.int32: "<i4",
    torch.int64: "<i8",
    torch.bool: "|b1",
    torch.complex64: "<c8",
    torch.complex128: "<c16",
}
for _name, _s in (("uint16", "<u2"), ("uint32", "<u4"), ("uint64", "<u8")):
    if hasattr(torch, _name):
        _NUMPY_STRS[getattr(torch, _name)] = _s

_FROM_NUMPY = {v: k for k, v in _NUMPY_STRS.items()}
# Other spellings numpy may produce for the same types.
_FROM_NUMPY.update(
    {"<b1": torch.bool, "?": torch.bool, "|?": torch.bool, "<i1": torch.int8, "<u1": torch.uint8}
)

_QUANTIZED = {
    getattr(torch, n)
    for n in ("quint8", "qint8", "qint32", "quint4x2", "quint2x4")
    if hasattr(torch, n)
}

_VOID_BY_SIZE = {1: "|V1", 2: "<V2", 4: "<V4", 8: "<V8", 16: "<V16"}


def dtype_to_str(dtype: torch.dtype) -> str:
    s = _NUMPY_STRS.get(dtype)
    if s is not None:
        return s
    if dtype in _QUANTIZED:
        raise NotImplementedError(f"Serialization of quantized tensors ({dtype}) is not supported")
    size = torch.empty((), dtype=dtype, device="meta").element_size()
    void = _VOID_BY_SIZE.get(size)
    if void is None:
        raise TypeError(f"Cannot serialize tensors of dtype {dtype}")
    return f"{void}{OPAQUE_DTYPE_SEP}{dtype}"


def str_to_dtype(s: str) -> Tuple[torch.dtype, bool]:
    """Returns (torch dtype, is_opaque) for a stored dtype string."""
    if OPAQUE_DTYPE_SEP in s:
        _base, _, name = s.partition(OPAQUE_DTYPE_SEP)
        if OPAQUE_DTYPE_SEP in name:
            raise ValueError(f"Too many separators in dtype string {s!r}")
        attr = name[len("torch.") :] if name.startswith("torch.") else None
        dtype = getattr(torch, attr, None) if attr else None
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"Unknown torch dtype {name!r} in dtype string {s!r}")
        return dtype, True
    dtype = _FROM_NUMPY.get(s)
    if dtype is None:
        raise ValueError(f"Unsupported dtype string {s!r}")
    return dtype, False


def is_quantized(dtype: torch.dtype) -> bool:
    return dtype in _QUANTIZED


def opaque_width(s: str) -> int:
    """The element width in bytes that an opaque dtype string stores."""
    base = s.partition(OPAQUE_DTYPE_SEP)[0]
    try:
        return np.dtype(base).itemsize
    except TypeError:
        raise ValueError(f"Unknown storage type {base!r} in dtype string {s!r}") from None


def numpy_dtype_for(s: str) -> Optional[str]:
    """The numpy dtype string to view raw bytes as: for opaque data the
    same-width int where numpy has one ("<V2" -> "<i2"), else the void type
    itself ("<V16"), as raw bytes."""
    if OPAQUE_DTYPE_SEP not in s:
        return s
    base = s.partition(OPAQUE_DTYPE_SEP)[0]
    as_int = base.replace("V", "i")
    try:
        np.dtype(as_int)
    except TypeError:
        return base
    return as_int
