"""TensorSerializer and TensorDeserializer: tensorizer 2.12's API over the
C++ engine.

The engine does the I/O, hashing and layout (tensorizer._core). This module
is the torch glue: it turns tensors into byte views for the writer, and
views on the engine's load arena back into tensors, without copying on CPU.
"""

import atexit
import collections.abc
import contextlib
import dataclasses
import enum
import io
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from . import _core, _paths, _staging, stream_io, utils
from ._crypto import (
    MEMLIMIT_SENSITIVE,
    OPSLIMIT_SENSITIVE,
    DecryptionParams,
    EncryptionParams,
    Secret,
)
from ._dtypes import (  # OPAQUE_DTYPE_SEP: public here, as in tensorizer
    OPAQUE_DTYPE_SEP,  # noqa: F401
    dtype_to_str,
    is_quantized,
    numpy_dtype_for,
    opaque_width,
    str_to_dtype,
)
from ._errors import (
    CryptographyError,
    HashMismatchError,
    TensorizerFormatError,
    TensorNotFoundError,
)

__all__ = [
    "CryptographyError",
    "DecryptionParams",
    "EncryptionParams",
    "FilterFuncType",
    "HashMismatchError",
    "HashType",
    "TensorDeserializer",
    "TensorEntry",
    "TensorHash",
    "TensorSerializer",
    "TensorType",
]

logger = logging.getLogger(__name__)

TENSORIZER_MAGIC = b"|TZR|"
NON_OPAQUE_TENSORIZER_VERSION = 1
OPAQUE_TENSORIZER_VERSION = 2
ENCRYPTION_TENSORIZER_VERSION = 3
META_TENSOR_TENSORIZER_VERSION = 4
LONG_TENSOR_TENSORIZER_VERSION = 5
TENSORIZER_VERSION = 5

FilterFuncType = Callable[[Union[str, Tuple[Union[str, int], ...]]], bool]

# A batch of writes copies device and non-contiguous tensors to host memory
# first; flush before the copies pass this many bytes, so host memory stays
# bounded for models larger than RAM.
_WRITE_BATCH_COPY_BYTES = 1 << 30
# TensorSerializer(align=...): the engine's kMaxDataAlignment.
_MAX_ALIGN = 4096


class TensorType(enum.IntEnum):
    PARAM = 0
    BUFFER = 1
    STATE_DICT = 2


class HashType(enum.IntEnum):
    CRC32 = 0
    SHA256 = 1


@dataclasses.dataclass(order=True)
class TensorHash:
    """A stored hash as tensorizer holds it: the CRC32 as its 4 stored
    (little-endian) bytes, the SHA-256 as its 32-byte digest."""

    __slots__ = ("type", "hash")
    type: HashType
    hash: bytes


@dataclasses.dataclass(order=True)
class TensorEntry:
    """One tensor's index entry, with tensorizer's fields in tensorizer's
    order. ``hashes`` is filled in once the tensor is loaded."""

    __slots__ = (
        "metadata_version",
        "name",
        "type",
        "dtype",
        "shape",
        "offset",
        "data_offset",
        "data_length",
        "hashes",
        "header_hashes",
    )
    metadata_version: int
    name: Union[str, Tuple[Union[str, int], ...]]
    type: TensorType
    dtype: str
    shape: Tuple[int, ...]
    offset: int
    data_offset: int
    data_length: int
    hashes: Optional[List[TensorHash]]
    header_hashes: Optional[Dict[HashType, Any]]


class _FileFeatureFlags(enum.IntFlag):
    """The header's feature flags (data version 4 and up; zero below)."""

    encrypted = 1
    versioned_headers = 2


@dataclasses.dataclass
class _FileHeader:
    """The file header as tensorizer exposes it on a deserializer
    (``_file_header``). ``tensor_size`` is the stored total, which tensorizer
    also reports as ``total_file_bytes``."""

    version_number: int
    feature_flags: _FileFeatureFlags
    tensor_size: int
    tensor_count: int


@dataclasses.dataclass
class _PerfStats:
    file_readinto_ns: int = 0
    file_readinto_bytes: int = 0
    tensor_to_device_ns: int = 0
    tensor_to_device_bytes: int = 0
    lock: threading.Lock = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=threading.Lock
    )


# Load timings, as in tensorizer: set TENSORIZER_ENABLE_PERF_STATS before
# import, then read them with _get_perf_stats(). "file_readinto" is the time
# the engine's reads took (waiting for the load) and the bytes it read;
# "tensor_to_device" is the time and bytes of copies to another device.
_enable_perf_stats: bool = bool(os.environ.get("TENSORIZER_ENABLE_PERF_STATS"))
_perf_stats: Optional[_PerfStats] = _PerfStats() if _enable_perf_stats else None


def _get_perf_stats() -> Dict[str, Union[int, float]]:
    if _perf_stats is None:
        raise RuntimeError("Performance stats are not enabled")
    with _perf_stats.lock:
        return dict(
            tensor_to_device_secs=_perf_stats.tensor_to_device_ns * 1e-9,
            tensor_to_device_bytes=_perf_stats.tensor_to_device_bytes,
            file_readinto_secs=_perf_stats.file_readinto_ns * 1e-9,
            file_readinto_bytes=_perf_stats.file_readinto_bytes,
        )


def _checked_dtype(dtype_str: str, shape, data_length: int) -> Tuple[torch.dtype, bool]:
    """The torch dtype of a stored dtype string, checking that an opaque
    dtype's stored width matches the torch type it names."""
    dtype, opaque = str_to_dtype(dtype_str)
    if is_quantized(dtype):
        # A view of the bytes as a quantized dtype has no quantizer (scale,
        # zero point): torch cannot use it. Neither writer stores these.
        raise ValueError(
            f"dtype {dtype} is quantized; .tensors files do not store the scale and"
            " zero point it needs, so it cannot be loaded"
        )
    if opaque:
        width = opaque_width(dtype_str)
        if width != torch.empty((), dtype=dtype, device="meta").element_size():
            raise ValueError(
                f"dtype string {dtype_str!r} has the wrong width for {dtype}"
                f" ({width} bytes per element)"
            )
    _check_torch_shape(shape)
    return dtype, opaque


_INT64_MAX = (1 << 63) - 1


def _check_torch_shape(shape) -> None:
    """Torch sizes and contiguous strides are int64: a shape beyond that
    (possible for a zero-element tensor, whose data length stays 0) would
    fail inside torch with "Stride calculation overflowed"."""
    if any(d > _INT64_MAX for d in shape):
        raise ValueError(f"shape {tuple(shape)} has a dimension over 2**63 - 1")
    stride = 1  # of the first dimension: the product of the others
    for d in shape[1:]:
        stride *= max(d, 1)
        if stride > _INT64_MAX:
            raise ValueError(
                f"shape {tuple(shape)} is too large for torch: its strides overflow int64"
            )


def _as_bytes(value) -> Optional[bytes]:
    """Keys and passphrases as the engine takes them (callers may hand over
    bytearray or memoryview, as tensorizer allows)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _hash_check(verify_hash) -> int:
    """Engine hash policy: 0 none; 1 CRC32 where stored (else SHA-256), at
    memory speed; 2 every stored hash, as tensorizer checks them."""
    if isinstance(verify_hash, str):
        if verify_hash.lower() == "all":
            return 2
        raise ValueError(f"verify_hash must be a bool or 'all', got {verify_hash!r}")
    return 1 if verify_hash else 0


def _report_unhashed(uri: str, paths: list, check: int, safetensors: bool) -> None:
    """verify_hash cannot check a tensor that stores no hashes (a .tensors
    record without any, every tensor of a safetensors file): True warns and
    "all" refuses it (HashMismatchError), naming the file and the tensors."""
    if not paths:
        return
    if safetensors:
        what = f"{uri} is a safetensors file, which stores no hashes"
    else:
        names = ", ".join(repr(_paths.display(p)) for p in paths[:5])
        if len(paths) > 5:
            names += f" and {len(paths) - 5} more"
        noun = "tensor" if len(paths) == 1 else "tensors"
        verb = "stores" if len(paths) == 1 else "store"
        what = f"{noun} {names} in {uri} {verb} no hashes"
    if check == 2:
        raise HashMismatchError(f"verify_hash='all': {what}, so the data cannot be verified")
    warnings.warn(f"verify_hash: {what}; the data was not verified", stacklevel=4)


def _effective_cpu_count() -> int:
    """tensorizer's count of the CPUs a process may use: a CFS quota, rounded
    up, read where tensorizer reads it (cgroup v1's cpu,cpuacct controller,
    else cgroup v2's /sys/fs/cgroup/user.slice/cpu.max); os.cpu_count() when
    none is set or it cannot be read. Kept to tensorizer's places so that
    serialization.cpu_count has its value on every machine."""
    root = "/sys/fs/cgroup"
    v1 = os.path.join(root, "cpu,cpuacct")
    v2 = os.path.join(root, "user.slice", "cpu.max")
    try:
        if os.path.isdir(v1):
            fields = []
            for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"):
                with open(os.path.join(v1, name)) as f:
                    fields.append(f.read().strip())
        elif os.path.isfile(v2):
            with open(v2) as f:
                fields = f.read().split()
        else:
            fields = []
        if len(fields) == 2 and fields[0] != "max":
            quota, period = int(fields[0]), int(fields[1])
            if quota > 0 and period > 0:
                return -(-quota // period)
    except (OSError, ValueError):
        pass
    return os.cpu_count() or 1


# As in tensorizer: the default number of threads a TensorSerializer uses.
cpu_count: int = _effective_cpu_count()


def _file_name(file_obj) -> str:
    name = getattr(file_obj, "name", None)
    if isinstance(name, (str, bytes, os.PathLike)):
        return os.fsdecode(name)
    return f"<{type(file_obj).__name__}>"


def _fileno(file_obj) -> Optional[int]:
    try:
        fd = file_obj.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _byte_view(tensor: torch.Tensor) -> Tuple[Optional[np.ndarray], Optional[torch.Tensor]]:
    """A flat uint8 numpy view of a tensor's bytes, and the host tensor that
    owns them (a copy only when the tensor is on a device or not contiguous)."""
    t = tensor.detach()
    if t.is_meta:
        return None, None
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.resolve_conj().resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy(), t


def _checked_align(align) -> int:
    if align is None:
        return 0
    if not isinstance(align, int) or isinstance(align, bool):
        raise TypeError(f"align: expected int or None, got {align.__class__.__name__}")
    if not 1 <= align <= _MAX_ALIGN or align & (align - 1):
        raise ValueError(f"align must be a power of two from 1 to {_MAX_ALIGN}, got {align}")
    return align


class TensorSerializer:
    """Writes tensors, state dicts and modules to a .tensors file.

    A path destination is written under a temporary name and renamed into
    place by close(); a failed write leaves nothing at the path. The file is
    a valid .tensors file after every write call, as with tensorizer.

    As a context manager it closes (commits) on success and aborts on an
    exception, leaving whatever the destination held before. A serializer
    that is collected without close() commits what its completed write calls
    wrote (tensorizer's file is valid after every write, and some callers,
    vLLM among them, never call close()), unless it wrote nothing, or the
    interpreter is exiting after an unhandled exception (a script that died
    between write calls): then it is aborted and the previous file stays.

    align (extension): pad each tensor header with zero bytes so that every
    tensor's data starts at a file offset that is a multiple of ``align`` (a
    power of two up to 4096; 64 suits every dtype), so that
    TensorDeserializer(..., mmap=True) maps every tensor in place instead of
    copying the unaligned ones. Readers skip the padding, tensorizer 2.12.1
    included; None (the default) writes the same bytes as tensorizer.
    """

    @dataclasses.dataclass
    class _WriteSpec:
        idx: int
        path: Tuple[Union[str, int], ...]
        tensor_type: TensorType
        tensor: Union[torch.Tensor, np.ndarray]
        callback: Optional[Callable[[], Any]] = None

    def __init__(
        self,
        file_obj,
        compress_tensors: bool = False,
        *,
        encryption: Optional[EncryptionParams] = None,
        limit_cpu_concurrency: Optional[int] = None,
        align: Optional[int] = None,
    ) -> None:
        self._writer = None
        self._file = None
        self._mirror = None
        if encryption is not None and not isinstance(encryption, EncryptionParams):
            raise TypeError(
                "encryption parameter: expected EncryptionParams instance"
                f" or None, {encryption.__class__.__name__} found"
            )
        self._encryption = encryption
        # Held redacted: tracebacks that show locals must not show the key.
        key = Secret(_as_bytes(encryption.key)) if encryption is not None else None
        kdf = encryption._kdf if encryption is not None else None
        if limit_cpu_concurrency is not None:
            if not isinstance(limit_cpu_concurrency, int):
                raise TypeError("limit_cpu_concurrency: expected int or None")
            if limit_cpu_concurrency < 1:
                raise ValueError("limit_cpu_concurrency must be positive or None")
        self.cpu_limit = cpu_count if limit_cpu_concurrency is None else limit_cpu_concurrency
        align = _checked_align(align)
        self.compress_tensors = compress_tensors
        self.total_compressed_tensor_bytes = 0
        self._registry = _paths.PathRegistry()

        if isinstance(file_obj, (str, bytes, os.PathLike)):
            path = os.fsdecode(file_obj)
            stream_io.check_local_write(path)
            if stream_io._is_remote(path):
                self._writer = _core.Writer.create_uri(
                    path, {}, self.cpu_limit, Secret.reveal(key), kdf, align=align
                )
            else:
                parent = os.path.dirname(os.path.abspath(path))
                os.makedirs(parent, exist_ok=True)
                self._writer = _core.Writer.create(
                    path, self.cpu_limit, Secret.reveal(key), kdf, align=align
                )
            self.name = path
        elif isinstance(file_obj, int):
            self._writer = _core.Writer.from_fd(
                file_obj, f"<fd {file_obj}>", self.cpu_limit, Secret.reveal(key), kdf, align=align
            )
            self.name = f"<fd {file_obj}>"
        elif isinstance(file_obj, stream_io._S3WriteStream):
            # A stream from open_stream("s3://...", "wb"): the writer streams
            # the multipart upload itself, with the stream's credentials.
            uri, options = file_obj._take_for_serializer(self)
            self._writer = _core.Writer.create_uri(
                uri, options, self.cpu_limit, Secret.reveal(key), kdf, align=align
            )
            self._file = file_obj
            self.name = uri
        else:
            self._check_file_object(file_obj)
            self._file = file_obj
            self.name = _file_name(file_obj)
            fd = _fileno(file_obj)
            if fd is not None:
                file_obj.flush()
                self._writer = _core.Writer.from_fd(
                    fd, self.name, self.cpu_limit, Secret.reveal(key), kdf, align=align
                )
            else:
                # A file object without a descriptor (BytesIO): write to an
                # anonymous temporary file and mirror it after each call.
                self._mirror = tempfile.TemporaryFile()
                self._writer = _core.Writer.from_fd(
                    self._mirror.fileno(),
                    self.name,
                    self.cpu_limit,
                    Secret.reveal(key),
                    kdf,
                    align=align,
                )
                self._sync_mirror()
        _unclosed.add(self)

    def __enter__(self) -> "TensorSerializer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    @staticmethod
    def _check_file_object(file_obj) -> None:
        if isinstance(file_obj, io.TextIOBase):
            raise ValueError("file_obj must be opened in binary mode (mode 'wb+')")
        readable = getattr(file_obj, "readable", None)
        writable = getattr(file_obj, "writable", None)
        if not (callable(readable) and readable() and callable(writable) and writable()):
            raise ValueError("file_obj must be readable and writable (open it with mode 'wb+')")
        seekable = getattr(file_obj, "seekable", None)
        if not (callable(seekable) and seekable()):
            raise ValueError("file_obj must support seeking for TensorSerializer")

    def _sync_mirror(self) -> None:
        if self._mirror is None:
            return
        self._mirror.seek(0)
        self._file.seek(0)
        while chunk := self._mirror.read(1 << 24):
            self._file.write(chunk)
        self._file.truncate()
        self._file.flush()

    @property
    def total_tensor_bytes(self) -> int:
        return self._writer.tensor_size if self._writer is not None else 0

    def _write(self, specs) -> None:
        if self._writer is None or self._writer.closed:
            raise ValueError(f"TensorSerializer for {self.name} is closed")
        try:
            self._write_batches(specs)
        except BaseException:
            # A failed write call fails the whole save: remove the temporary
            # file now rather than leave a file without the caller's tensors.
            self._writer.abort()
            raise

    def _write_batches(self, specs) -> None:
        batch: List[tuple] = []
        owners: List[Any] = []
        callbacks: List[Callable[[], Any]] = []
        copied = 0

        def flush():
            nonlocal copied
            if batch:
                self._writer.write(batch)
                self._sync_mirror()
            for cb in callbacks:
                cb()
            batch.clear()
            owners.clear()
            callbacks.clear()
            copied = 0

        for spec in specs:
            if not 0 <= spec.idx <= 0xFFFF:
                raise ValueError(f"Module index {spec.idx} does not fit in 16 bits")
            tensor = spec.tensor
            if isinstance(tensor, np.ndarray):
                # Like tensorizer, accept only dtypes torch can represent.
                torch.from_numpy(np.empty(0, dtype=tensor.dtype))
                dtype_str = tensor.dtype.str
                arr = tensor if tensor.flags.c_contiguous else tensor.copy(order="C")
                data = arr.reshape(-1).view(np.uint8)
                owner = arr
                shape = tuple(tensor.shape)
            elif isinstance(tensor, torch.Tensor):
                dtype_str = dtype_to_str(tensor.dtype)
                data, owner = _byte_view(tensor)
                shape = tuple(tensor.shape)
                if owner is not None and owner.data_ptr() != tensor.data_ptr():
                    copied += data.nbytes
            else:
                raise TypeError(
                    f"Expected a torch.Tensor or numpy.ndarray for"
                    f" {_paths.display(spec.path)!r}, got {type(tensor).__name__}"
                )
            self._registry.add(spec.path)
            batch.append(
                (
                    _paths.encode_path(spec.path),
                    int(spec.tensor_type),
                    spec.idx,
                    dtype_str.encode("utf-8"),
                    shape,
                    data,
                )
            )
            owners.append(owner)
            if spec.callback is not None:
                callbacks.append(spec.callback)
            if copied >= _WRITE_BATCH_COPY_BYTES:
                flush()
        flush()

    def write_tensor(
        self,
        idx: int,
        name,
        tensor_type: TensorType,
        tensor: Union[torch.Tensor, np.ndarray],
    ) -> None:
        if isinstance(name, str):
            path = (name,)
        elif isinstance(name, (tuple, list)):
            path = tuple(name)
        else:
            raise TypeError(f"Tensor name must be a str, got {type(name).__name__}")
        tensor_type = TensorType(tensor_type)
        if tensor_type != TensorType.STATE_DICT and not isinstance(_paths.normalize(path), str):
            raise ValueError(
                "Structured tensor names are only valid for TensorType.STATE_DICT"
                " (tensorizer refuses to read them for parameters and buffers)"
            )
        _paths.encode_path(path)  # a name that cannot be read back fails here
        self._write([self._WriteSpec(idx, path, tensor_type, tensor)])

    def write_module(
        self,
        m: torch.nn.Module,
        remove_tensors: bool = False,
        *,
        include_non_persistent_buffers: bool = True,
    ) -> None:
        modules = tuple(m.named_modules())
        non_persistent = set()
        if not include_non_persistent_buffers:
            for module_name, module in modules:
                for b in getattr(module, "_non_persistent_buffers_set", ()):
                    non_persistent.add((module_name, b))

        def specs():
            for idx, (module_name, module) in enumerate(modules):
                members = [
                    (name, t, TensorType.PARAM)
                    for name, t in module.named_parameters(recurse=False)
                ] + [
                    (name, t, TensorType.BUFFER) for name, t in module.named_buffers(recurse=False)
                ]
                for name, t, ttype in members:
                    # Unlike tensorizer 2.12, which compares "module.name" with
                    # state_dict-style names and so drops every persistent
                    # buffer of the root module here, match per module.
                    if ttype is TensorType.BUFFER and (module_name, name) in non_persistent:
                        continue
                    cb = (
                        (lambda mod=module, n=name: setattr(mod, n, None))
                        if remove_tensors
                        else None
                    )
                    yield self._WriteSpec(idx, (f"{module_name}.{name}",), ttype, t, cb)

        self._write(specs())

    def write_state_dict(self, state_dict: Union[Dict, List, Tuple]) -> None:
        def walk(obj, prefix):
            if isinstance(obj, torch.Tensor):
                if not prefix:
                    raise TypeError("write_state_dict needs a dict or a list of tensors")
                yield self._WriteSpec(0, prefix, TensorType.STATE_DICT, obj)
            elif isinstance(obj, collections.abc.Mapping):
                for k, v in obj.items():
                    if not isinstance(k, str):
                        raise TypeError(
                            f"Invalid key type: {type(k).__name__!r}"
                            " (state dict keys must be strings)"
                        )
                    yield from walk(v, (*prefix, k))
            elif isinstance(obj, collections.abc.Sequence) and not isinstance(obj, (str, bytes)):
                for i, v in enumerate(obj):
                    yield from walk(v, (*prefix, i))
            else:
                raise TypeError(
                    f"Cannot serialize {type(obj).__name__} at"
                    f" {_paths.display(prefix)!r}: leaves must be torch.Tensor"
                )

        # Every name is checked before anything is written: a key that
        # cannot be read back fails the call, not the save.
        specs = list(walk(state_dict, ()))
        for spec in specs:
            _paths.encode_path(spec.path)
        self._write(specs)

    def close(self) -> None:
        _unclosed.discard(self)
        if self._writer is not None and not self._writer.closed:
            self._writer.close()
            self._sync_mirror()
        self._release_file()

    def _abort(self) -> None:
        """Abandons the save: the destination keeps what it held before."""
        _unclosed.discard(self)
        if self._writer is not None and not self._writer.closed:
            self._writer.abort()
        self._release_file()

    def _release_file(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self):
        # Collected unclosed: commit the completed writes (see the class
        # docstring), but never a file without tensors, which no reader
        # accepts. A serializer whose write failed was already aborted.
        with contextlib.suppress(Exception):
            if self._writer is not None and self._writer.tensor_count == 0:
                self._abort()
            else:
                self.close()


# Serializers not yet closed or aborted, for the exit policy below.
_unclosed: "weakref.WeakSet[TensorSerializer]" = weakref.WeakSet()


def _abort_unclosed_after_crash() -> None:
    """At interpreter exit after an unhandled exception (sys.last_value is
    set once the traceback is printed), abort every serializer still open,
    before module teardown would collect and so commit them. An interactive
    session survives its exceptions, so there this does nothing."""
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return
    if getattr(sys, "last_exc", None) is None and getattr(sys, "last_value", None) is None:
        return
    for serializer in list(_unclosed):
        with contextlib.suppress(Exception):
            serializer._abort()


atexit.register(_abort_unclosed_after_crash)


def _check_mappable(file_obj, device, dtype, encryption, direct_io) -> None:
    """The TensorDeserializer arguments mmap=True cannot honour."""
    if isinstance(file_obj, (str, bytes)) and stream_io._is_remote(os.fsdecode(file_obj)):
        raise ValueError(
            f"mmap=True needs a local file, not {_core.redact_uri(os.fsdecode(file_obj))}"
        )
    if isinstance(file_obj, stream_io._EngineReadStream) or not (
        isinstance(file_obj, (str, bytes, os.PathLike, int)) or _fileno(file_obj) is not None
    ):
        raise ValueError(
            "mmap=True needs a local file: a path, a descriptor or a file object on one"
        )
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(
            f"mmap=True loads to the CPU only, not {device!r}: a device load copies anyway"
        )
    if dtype is not None:
        raise ValueError("mmap=True cannot cast (dtype=...): a cast makes a copy of every tensor")
    if encryption is not None:
        raise ValueError("mmap=True cannot decrypt: encrypted tensors are decrypted into memory")
    if direct_io:
        raise ValueError("mmap=True reads through the page cache; it cannot use direct_io=True")


class TensorDeserializer(collections.abc.Mapping, contextlib.AbstractContextManager):
    """Loads a .tensors file as a mapping of names to tensors.

    Eager mode (the default) loads every selected tensor in the constructor
    with the C++ engine: parallel reads straight into one arena, each tensor a
    zero-copy view on it for CPU loads. lazy_load=True loads each tensor on
    first access, in any order.

    Extensions beyond tensorizer 2.12:

    - cast_only_floating: with dtype=..., cast only floating-point tensors,
      leaving integer, complex and bool tensors as stored (tensorizer #206).
    - verify_hash=True checks each tensor's CRC32 (SHA-256 where no CRC32 is
      stored), which runs at memory speed; verify_hash="all" also checks
      SHA-256, as tensorizer does, at about 2 GB/s per core. The file does not
      authenticate its hashes, so both guard against corruption, not forgery.
      A tensor that stores no hashes (every tensor of a safetensors file)
      cannot be checked: True warns, naming the file and the tensors, and
      "all" raises HashMismatchError.
    - Encrypted tensors are always checked against the SHA-256 of their
      plaintext, verify_hash or not: decryption alone does not notice
      swapped records or a missing last chunk.
    - direct_io: how a local file is read. None (auto): each range with
      O_DIRECT unless it is mostly in the page cache already; True: O_DIRECT
      throughout, which leaves the page cache as it was; False: through the
      page cache. File systems without direct I/O (tmpfs) are read buffered
      whatever is asked. read_stats says what was done.
    - mmap=True: CPU tensors are views on a private (copy-on-write) mapping
      of a local file instead of copies, so loading takes no memory of its
      own and processes that map one file share its pages through the page
      cache; writing to a tensor changes only this process's copy, never the
      file. Data not aligned for its dtype is copied (mmap_stats counts it;
      write files with TensorSerializer(..., align=64) to map everything).
      The file must not be truncated while mapped (SIGBUS). Refused, with
      ValueError: encryption, remote URIs and streams, non-CPU devices,
      dtype casts, direct_io=True. device=None means CPU here.
    """

    def __init__(
        self,
        file_obj,
        device: Optional[Union[torch.device, str, int]] = None,
        filter_func: Optional[FilterFuncType] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        lazy_load: bool = False,
        plaid_mode: Optional[bool] = None,
        plaid_mode_buffers: Optional[int] = None,
        num_readers: Optional[int] = None,
        verify_hash: bool = False,
        encryption: Optional[DecryptionParams] = None,
        cast_only_floating: bool = False,
        direct_io: Optional[bool] = None,
        mmap: bool = False,
    ):
        self._reader = None
        self._mmap_stats = None
        self._read_stats = None
        self._file = None
        self._stream = None  # an open_stream stream handed over, for its counters
        self._response_headers = None  # of the HTTP response that opened the file
        self._cache: Dict[tuple, torch.Tensor] = {}
        self._loaded_info: Dict[tuple, tuple] = {}
        # For total_bytes_read: bytes the engine fetched (header, index and
        # every load), and where a sequential reader would stand.
        self._bytes_fetched = 0
        self._read_position = 0
        self.read_bytes = 0
        self.total_compressed_tensor_bytes = 0

        if not isinstance(mmap, bool):
            raise TypeError(f"mmap: expected bool, got {mmap.__class__.__name__}")
        if mmap:
            _check_mappable(file_obj, device, dtype, encryption, direct_io)
            device = "cpu" if device is None else device
            direct_io = False  # no descriptor for O_DIRECT, no residency probe
            self._mmap_stats = {"mapped": 0, "copied": 0, "mapped_bytes": 0, "copied_bytes": 0}
        self._device = utils.get_device() if device is None else torch.device(device)
        if self._device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(
                    "Cannot deserialize to CUDA device because CUDA is not available"
                )
            if self._device.index is None and not lazy_load:
                self._device = torch.device("cuda", torch.cuda.current_device())
        if encryption is not None and not isinstance(encryption, DecryptionParams):
            raise TypeError(
                "encryption parameter: expected DecryptionParams instance"
                f" or None, {encryption.__class__.__name__} found"
            )
        if encryption is not None and encryption.key is None and encryption.source is None:
            raise ValueError("Invalid DecryptionParams, no key or source string provided")
        self._decryption = encryption
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
        if num_readers is not None:
            if not isinstance(num_readers, int) or isinstance(num_readers, bool):
                raise TypeError(
                    f"num_readers: expected int or None, got {num_readers.__class__.__name__}"
                )
            if num_readers < 1:
                raise ValueError("num_readers must be positive")
        if direct_io is not None and not isinstance(direct_io, bool):
            raise TypeError(
                f"direct_io: expected bool or None, got {direct_io.__class__.__name__}"
            )
        self._direct_io = {None: "auto", True: "on", False: "off"}[direct_io]
        self._dtype = dtype
        self._cast_only_floating = cast_only_floating
        self._lazy_load = lazy_load
        self._verify_hash = verify_hash
        # GPU loads stream through the engine's staging ring (_staging.py);
        # plaid_mode_buffers, when given, is its buffers per reader.
        self._plaid_mode_buffers = (
            plaid_mode_buffers
            if isinstance(plaid_mode_buffers, int) and plaid_mode_buffers > 0
            else None
        )
        self._copy_device = None  # kept between the loads of a lazy deserializer
        self._staging_stats = None  # of the last staged load (tests)

        self._reader = self._open(file_obj)
        self._uri = self._reader.uri  # for messages once the source is closed
        version = self._reader.version
        self._file_header = _FileHeader(
            version_number=version,
            feature_flags=_FileFeatureFlags(self._reader.flags),
            tensor_size=self._reader.tensor_size,
            tensor_count=self._reader.tensor_count,
        )
        has_crypt = self._reader.has_crypt_info
        if mmap:
            if has_crypt:
                raise ValueError(
                    f"mmap=True cannot load {self._reader.uri}: it is encrypted, and its"
                    " tensors must be decrypted into memory; load it without mmap"
                )
            self._reader.map()
        if encryption is not None:
            if version < ENCRYPTION_TENSORIZER_VERSION:
                raise CryptographyError(
                    "Tensor decryption was requested, but the file provided comes"
                    " from a tensorizer version predating encryption, so it must"
                    " not be encrypted. Either set encryption=None on the"
                    " TensorDeserializer, or ensure that the correct file was"
                    f" provided ({self._reader.uri})."
                )
            if not has_crypt:
                raise CryptographyError(
                    "Tensor decryption was requested, but the file provided is"
                    " not flagged as encrypted. Either set encryption=None on the"
                    " TensorDeserializer, or ensure that the correct file was"
                    f" provided ({self._reader.uri})."
                )
        elif has_crypt:
            raise CryptographyError(
                f"Tensor is encrypted, but decryption was not requested ({self._reader.uri})"
            )
        self.total_file_bytes = self._reader.tensor_size
        self._count_read(self._reader.prefix_length, self._reader.prefix_length)

        # Index: decode names and dtypes, then apply the filter.
        # A safetensors file loads through the same engine; its names are
        # plain keys and every tensor counts as a state_dict entry.
        is_safetensors = self._reader.format == "safetensors"
        registry = _paths.PathRegistry()
        self._entries: Dict[tuple, TensorEntry] = {}
        self._entry_index: Dict[tuple, int] = {}
        self._dtypes: Dict[tuple, Tuple[torch.dtype, bool]] = {}
        for i, (name, ttype, dtype_b, shape, hoff, doff, dlen, mver) in enumerate(
            self._reader.entries()
        ):
            path = None
            try:
                path = (name.decode("utf-8"),) if is_safetensors else _paths.decode_name(name)
                registry.add(path, path)
                dtype_str = dtype_b.decode("utf-8")
                if ttype != TensorType.STATE_DICT and not isinstance(_paths.normalize(path), str):
                    raise ValueError(
                        f"tensor {_paths.display(path)!r} has a structured name"
                        " but is not a state_dict entry"
                    )
                self._dtypes[path] = _checked_dtype(dtype_str, shape, dlen)
            except (ValueError, UnicodeDecodeError) as e:
                label = repr(name) if path is None else repr(_paths.display(path))
                raise TensorizerFormatError(
                    f"reading the index of {self._reader.uri}: entry {i} ({label}): {e}"
                ) from None
            self._entries[path] = TensorEntry(
                metadata_version=mver,
                name=_paths.normalize(path),
                type=TensorType(ttype),
                dtype=dtype_str,
                shape=tuple(shape),
                offset=hoff,
                data_offset=doff,
                data_length=dlen,
                hashes=None,
                header_hashes=None,
            )
            self._entry_index[path] = i
        if filter_func is not None:
            self._entries = {
                p: e for p, e in self._entries.items() if filter_func(_paths.normalize(p))
            }
            registry.filter(self._entries.__contains__)
        self._structure = registry.root
        if num_readers is None:
            # The engine's choice for this source: one per usable core, at
            # least 4 for remote sources and direct reads.
            num_readers = self._reader.default_threads()
        self._num_threads = min(num_readers, max(1, len(self._entries)))
        self._last_yielded: Optional[int] = None
        self._order = list(self._entries)
        self._position = {p: i for i, p in enumerate(self._order)}
        self.total_tensor_bytes = sum(self._expected_length(e) for e in self._entries.values())

        if not lazy_load:
            self._load(self._order, verify_hash)
            self.total_tensor_bytes = sum(e.data_length for e in self._entries.values())
            self._close_source()

    @property
    def _file_flags(self) -> _FileFeatureFlags:
        return self._file_header.feature_flags

    # --- opening ----------------------------------------------------------

    def _open(self, file_obj):
        if isinstance(file_obj, (str, bytes, os.PathLike)):
            path = os.fsdecode(file_obj)
            stream_io.check_local_read(path)
            if isinstance(file_obj, os.PathLike) or not stream_io._is_remote(path):
                return _core.Reader.open_path(path, direct_io=self._direct_io)
            source = _core.Source.open(path)
            self._response_headers = stream_io._header_message(source.response_headers)
            return _core.Reader.open_source(source)
        if isinstance(file_obj, int):
            return _core.Reader.open_fd(file_obj, f"<fd {file_obj}>", direct_io=self._direct_io)
        if isinstance(file_obj, stream_io._EngineReadStream):
            # Already-open remote source with its options: load through it.
            self._file = self._stream = file_obj
            self._response_headers = getattr(file_obj, "response_headers", None)
            return _core.Reader.open_source(file_obj._source)
        if isinstance(file_obj, io.TextIOBase):
            raise ValueError("file_obj must be opened in binary mode")
        readable = getattr(file_obj, "readable", None)
        if not (callable(readable) and readable()):
            raise ValueError("file_obj must be readable")
        self._file = file_obj
        name = _file_name(file_obj)
        fd = _fileno(file_obj)
        if fd is not None:
            return _core.Reader.open_fd(fd, name, direct_io=self._direct_io)
        # No descriptor: the whole stream is read into memory once.
        if callable(getattr(file_obj, "seekable", None)) and file_obj.seekable():
            file_obj.seek(0)
        return _core.Reader.open_bytes(file_obj.read(), name)

    # --- byte counts, as tensorizer reports them ----------------------------

    def _count_read(self, fetched: int, position: int) -> None:
        self._bytes_fetched += fetched
        self._read_position = position
        if self._stream is not None:
            # The loads go around the stream's read(); count them in it, as
            # tensorizer's reads through its stream count there.
            self._stream.bytes_read += fetched
            self._stream.read_operations += 1

    @property
    def total_bytes_read(self) -> int:
        """tensorizer's count: for a remote source, the bytes fetched so far
        (through an open_stream stream: that stream's ``bytes_read``, reads
        made before it was handed over included); for a local file, the
        position a sequential reader would have reached (the end of the last
        tensor read, bytes skipped over included) while it is open, and
        ``total_tensor_bytes`` once it is closed (after an eager load or
        load_into_module)."""
        if self._stream is not None:
            return self._stream.bytes_read
        if stream_io._is_remote(self._uri):
            return self._bytes_fetched
        if self._reader is None:
            return self.total_tensor_bytes
        return self._read_position

    def _close_source(self):
        if self._reader is not None:
            self._read_stats = self._reader.read_stats
        self._reader = None
        self._copy_device = None
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_source()

    def __exit__(self, *exc):
        self.close()
        return None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    @property
    def read_stats(self) -> Optional[dict]:
        """How a local file was read so far (extension): ``{"mode": "direct" |
        "buffered" | "mixed" | "none", "direct_bytes", "in_place_bytes",
        "buffered_bytes", "direct_block_bytes", "buffered_reason"}``, the
        index included (``in_place_bytes``: direct bytes that landed in the
        tensors without a staging copy);
        ``direct_block_bytes`` is 0 when the file is read buffered only, and
        ``buffered_reason`` says why. ``None`` for remote and in-memory
        sources."""
        stats = self._reader.read_stats if self._reader is not None else self._read_stats
        if stats is None:
            return None
        block, reason, direct, buffered, in_place = stats
        mode = (
            ("mixed" if buffered else "direct")
            if direct
            else ("buffered" if buffered else "none")
        )
        return {
            "mode": mode,
            "direct_bytes": direct,
            "in_place_bytes": in_place,
            "buffered_bytes": buffered,
            "direct_block_bytes": block,
            "buffered_reason": reason,
        }

    # --- loading ----------------------------------------------------------

    def _expected_length(self, e: TensorEntry) -> int:
        if e.data_length:
            return e.data_length
        base = numpy_dtype_for(e.dtype)
        itemsize = np.dtype(base).itemsize
        n = itemsize
        for d in e.shape:
            n *= d
        return n

    def _target_device(self) -> torch.device:
        if self._device.type == "cuda" and self._device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return self._device

    def _load(self, paths, verify_hash: Optional[bool]) -> None:
        """Loads the given paths (those not cached) in one engine pass."""
        verify = self._verify_hash if verify_hash is None else verify_hash
        pending = sorted(
            (p for p in paths if p not in self._cache), key=self._entry_index.__getitem__
        )
        if not pending:
            return
        if self._reader is None:
            raise RuntimeError("TensorDeserializer is closed; its file is no longer open")
        if self._mmap_stats is not None:
            self._load_mapped(pending, verify)
            return
        device = self._target_device()
        copy_device = self._copy_device or _staging.copy_device(device)
        staged = None
        staging = {}
        if copy_device is not None:
            if self._lazy_load:
                self._copy_device = copy_device
            entries = [self._entries[p] for p in pending]
            staged = _staging.destinations(
                [(e.shape, self._dtypes[p][0]) for p, e in zip(pending, entries)],
                device,
                [e.data_length == 0 for e in entries],
            )
            count, size = _staging.ring_shape(self._plaid_mode_buffers, self._num_threads)
            staging = dict(
                staging_device=copy_device,
                destinations=[t.data_ptr() for t in staged],
                buffer_count=count,
                buffer_bytes=size,
            )
        load = self._reader.start_load(
            [self._entry_index[p] for p in pending],
            verify=_hash_check(verify),
            num_threads=self._num_threads,
            key=_as_bytes(self._decryption.key) if self._decryption is not None else None,
            passphrase=(
                _as_bytes(self._decryption.source) if self._decryption is not None else None
            ),
            max_pwhash_opslimit=getattr(self._decryption, "max_opslimit", OPSLIMIT_SENSITIVE),
            max_pwhash_memlimit=getattr(self._decryption, "max_memlimit", MEMLIMIT_SENSITIVE),
            **staging,
        )
        started = time.perf_counter_ns() if _perf_stats else 0
        arena = load.arena()
        if staged is not None:
            # Each tensor is on its device once its copies landed. On an
            # error, stop the load and drop its buffers and destinations
            # before raising (the traceback would keep them alive).
            tensors = []
            try:
                for i in range(len(staged)):
                    load.wait_tensor(i)
                    tensors.append(self._finish_tensor(staged[i], device))
            except BaseException:
                load.cancel()
                with contextlib.suppress(Exception):
                    load.wait()
                del load, staged, tensors
                raise
            self._staging_stats = load.staging_stats()
        elif device.type == "cpu" and self._dtype is None:
            # Zero-copy views need no data yet: build them while the workers
            # read, then wait once.
            tensors = [
                self._to_tensor(arena, offset, nbytes, path, device)
                for (offset, nbytes), path in zip(load.layout(), pending)
            ]
            load.wait()
        else:
            # Casts and device copies need the bytes: take each tensor as soon
            # as it is published.
            tensors = []
            for i, ((offset, nbytes), path) in enumerate(zip(load.layout(), pending)):
                load.wait_tensor(i)
                tensors.append(self._to_tensor(arena, offset, nbytes, path, device))
        infos = [load.tensor_info(i) for i in range(len(pending))]
        check = _hash_check(verify)
        if check:
            _report_unhashed(
                self._uri,
                [p for p, info in zip(pending, infos) if not info[3]],
                check,
                self._reader.format == "safetensors",
            )
        for path, tensor, info in zip(pending, tensors, infos):
            _, _, module_idx, hashes, hashed_header = info
            entry = self._entries[path]
            entry.hashes = [TensorHash(HashType(t), bytes(v)) for t, v in hashes]
            self._loaded_info[path] = (module_idx, hashed_header)
            self._cache[path] = tensor
        self._count_read(
            load.bytes_read,
            max(e.data_offset + e.data_length for e in map(self._entries.__getitem__, pending)),
        )
        self.read_bytes += load.bytes_read
        if _perf_stats:
            # Wall time of the whole load, including the tensors' hand-off.
            with _perf_stats.lock:
                _perf_stats.file_readinto_ns += time.perf_counter_ns() - started
                _perf_stats.file_readinto_bytes += load.bytes_read

    def _load_mapped(self, pending, verify) -> None:
        """_load for mmap=True: views on the file's mapping, copies of the
        tensors whose data is not aligned for their dtype."""
        check = _hash_check(verify)
        load = self._reader.start_mapped_load(
            [self._entry_index[p] for p in pending], verify=check, num_threads=self._num_threads
        )
        mapping, arena, cpu = load.mapping(), load.arena(), torch.device("cpu")
        for i, ((mapped, offset, nbytes), path) in enumerate(zip(load.layout(), pending)):
            tensor = self._to_tensor(mapping if mapped else arena, offset, nbytes, path, cpu)
            _, _, module_idx, hashes, hashed_header = load.tensor_info(i)
            self._entries[path].hashes = [TensorHash(HashType(t), bytes(v)) for t, v in hashes]
            self._loaded_info[path] = (module_idx, hashed_header)
            self._cache[path] = tensor
        if check:
            _report_unhashed(
                self._uri,
                [p for p in pending if not self._entries[p].hashes],
                check,
                self._reader.format == "safetensors",
            )
        stats = self._mmap_stats
        stats["mapped"] += sum(1 for mapped, _, _ in load.layout() if mapped)
        stats["copied"] += load.copied_count
        stats["mapped_bytes"] += load.mapped_bytes
        stats["copied_bytes"] += load.copied_bytes
        if load.copied_count:
            logger.info(
                "mmap: %s: copied %d of %d tensors (%d bytes) whose data is not aligned"
                " for its dtype; files written with TensorSerializer(..., align=64) map"
                " every tensor",
                self._uri,
                load.copied_count,
                len(pending),
                load.copied_bytes,
            )
        fetched = load.mapped_bytes + load.copied_bytes
        self._count_read(
            fetched,
            max(e.data_offset + e.data_length for e in map(self._entries.__getitem__, pending)),
        )
        self.read_bytes += fetched

    @property
    def mmap_stats(self) -> Optional[dict]:
        """With mmap=True (extension): tensors loaded so far as views on the
        mapping (``mapped``, ``mapped_bytes``) and as copies because their
        data is not aligned for their dtype (``copied``, ``copied_bytes``);
        meta tensors, zero-filled, count in neither. ``None`` without mmap."""
        return None if self._mmap_stats is None else dict(self._mmap_stats)

    def _to_tensor(self, arena, offset, nbytes, path, device) -> torch.Tensor:
        entry = self._entries[path]
        dtype, _ = self._dtypes[path]
        if nbytes:
            t = torch.from_numpy(arena[offset : offset + nbytes]).view(dtype).reshape(entry.shape)
        else:
            t = torch.empty(entry.shape, dtype=dtype)
        return self._finish_tensor(t, device)

    def _finish_tensor(self, t: torch.Tensor, device) -> torch.Tensor:
        """Casts (on the device) and moves `t` as asked; wraps it as a Parameter."""
        cast = self._dtype is not None and t.dtype not in (torch.bool, self._dtype)
        if cast and (not self._cast_only_floating or t.is_floating_point()):
            t = t.to(device=device, dtype=self._dtype)
        if t.device != device:
            start = time.perf_counter_ns() if _perf_stats else 0
            t = t.to(device)
            if _perf_stats:
                with _perf_stats.lock:
                    _perf_stats.tensor_to_device_ns += time.perf_counter_ns() - start
                    _perf_stats.tensor_to_device_bytes += t.untyped_storage().nbytes()
        return torch.nn.Parameter(t, requires_grad=t.dtype.is_floating_point or t.dtype.is_complex)

    def _get(self, path, verify_hash=None) -> torch.Tensor:
        if path not in self._cache:
            self._load([path], verify_hash)
        return self._cache[path]

    # --- Mapping ----------------------------------------------------------

    def __getitem__(self, key):
        try:
            node = self._structure[key]
        except (KeyError, TypeError):
            raise KeyError(f"Tensor {key} not found") from None
        if _paths.is_leaf(node):
            return self._get(node.value)
        self._load(list(_paths.leaves(node)), None)
        return _paths.build(node, self._get, as_proxy=True)

    def __iter__(self) -> Iterator:
        return iter(self._structure)

    def __len__(self) -> int:
        return len(self._structure)

    def __contains__(self, key) -> bool:
        return key in self._structure

    def keys(self):
        return self._structure.keys()

    def tree(self, prefix=None, *, default=None, filter_func: Optional[FilterFuncType] = None):
        if prefix is None:
            prefix = ()
        elif isinstance(prefix, (str, bytes, int)) or not isinstance(
            prefix, collections.abc.Sequence
        ):
            raise TypeError("prefix must be a sequence of keys (e.g. a tuple)")
        node = self._structure
        for part in prefix:
            if _paths.is_leaf(node) or part not in node:
                return default
            node = node[part]
        if _paths.is_leaf(node):
            return self._get(node.value)
        paths = [
            p
            for p in _paths.leaves(node)
            if filter_func is None or filter_func(_paths.normalize(p))
        ]
        if not paths:
            return default
        keep = set(paths)
        pruned = _paths.prune(node, keep)
        self._load(paths, None)
        return _paths.build(pruned, self._get, as_proxy=False)

    # --- iteration APIs ---------------------------------------------------

    def _iter_paths(self, filter_func, num_tensors):
        if num_tensors != -1 and (not isinstance(num_tensors, int) or num_tensors < 0):
            raise ValueError("num_tensors must be -1 or a non-negative int")
        start = 0 if self._last_yielded is None else self._last_yielded + 1
        count = 0
        for i in range(start, len(self._order)):
            if num_tensors != -1 and count >= num_tensors:
                return
            path = self._order[i]
            if filter_func is not None and not filter_func(_paths.normalize(path)):
                continue
            self._last_yielded = i
            count += 1
            yield path

    def read_tensors(
        self,
        filter_func: Optional[FilterFuncType] = None,
        num_tensors: int = -1,
        verify_hash: Optional[bool] = None,
    ) -> Iterator[Tuple[int, int, Any, torch.Tensor]]:
        paths = list(self._iter_paths(filter_func, num_tensors))
        self._load(paths, verify_hash)
        for path in paths:
            entry = self._entries[path]
            yield (
                self._loaded_info[path][0],
                entry.type,
                _paths.normalize(path),
                self._cache[path],
            )

    def read_numpy_arrays(
        self,
        filter_func: Optional[FilterFuncType] = None,
        num_tensors: int = -1,
        allow_raw_data: bool = False,
        verify_hash: Optional[bool] = None,
    ):
        if self._device.type != "cpu":
            raise RuntimeError("read_numpy_arrays is only supported for device='cpu'")
        paths = list(self._iter_paths(filter_func, num_tensors))
        for path in paths:
            entry = self._entries[path]
            if self._dtypes[path][1] and not allow_raw_data:
                raise ValueError(
                    f"{_paths.display(path)!r} has an opaque dtype ({self._dtypes[path][0]})"
                    " with no numpy equivalent; pass allow_raw_data=True to read it"
                    " as raw integers"
                )
        self._load(paths, verify_hash)
        for path in paths:
            entry = self._entries[path]
            t = self._cache[path].detach()
            dtype, opaque = self._dtypes[path]
            raw = t.reshape(-1).view(torch.uint8).numpy()
            arr = raw.view(np.dtype(numpy_dtype_for(entry.dtype))).reshape(entry.shape)
            yield (
                self._loaded_info[path][0],
                entry.type,
                _paths.normalize(path),
                arr,
                opaque,
                str(dtype) if opaque else None,
            )

    # --- modules ----------------------------------------------------------

    def load_into_module(
        self,
        m: torch.nn.Module,
        filter_func: Optional[FilterFuncType] = None,
        verify_hash: Optional[bool] = None,
    ) -> int:
        modules = dict(m.named_modules())
        paths = []
        for path, entry in self._entries.items():
            name = _paths.normalize(path)
            if filter_func is not None and not filter_func(name):
                continue
            if entry.type == TensorType.STATE_DICT or not isinstance(name, str):
                raise NotImplementedError(
                    "This was serialized with write_state_dict or write_tensor as a"
                    " state_dict entry; use the TensorDeserializer directly as a"
                    " state_dict mapping instead of load_into_module"
                )
            module_name = name.rpartition(".")[0]
            if module_name not in modules:
                raise TensorNotFoundError(
                    f"Cannot load {name!r} from {self._uri} into"
                    f" {type(m).__name__}: it has no submodule {module_name!r}"
                )
            paths.append(path)
        self._load(paths, verify_hash)
        for path in paths:
            module_name, _, attr = path[0].rpartition(".")
            module = modules[module_name]
            tensor = self._cache[path]
            if self._entries[path].type == TensorType.PARAM:
                module.register_parameter(attr, tensor)
            else:
                persistent = attr not in getattr(module, "_non_persistent_buffers_set", ())
                module.register_buffer(attr, tensor, persistent=persistent)
        self._close_source()
        return len(paths)

    def verify_module(self, m: torch.nn.Module) -> Tuple[bool, List[Tuple[str, bool]]]:
        tensors: Dict[str, torch.Tensor] = dict(m.state_dict())
        tensors.update(m.named_buffers())
        results = []
        for path in self._entries:
            name = _paths.normalize(path)
            key = name[1:] if isinstance(name, str) and name.startswith(".") else name
            tensor = tensors.get(key, tensors.get(name))
            if tensor is None:
                results.append((name, False))
                continue
            if path not in self._loaded_info:
                raise RuntimeError(
                    f"No hashes found in metadata for {name}. This is usually caused"
                    " by a TensorDeserializer that was instantiated with"
                    " lazy_load=True, and not loaded into a module before calling"
                    " this."
                )
            results.append((name, self._hashes_match(path, tensor)))
        return all(ok for _, ok in results), results

    def _hashes_match(self, path, tensor: torch.Tensor) -> bool:
        entry = self._entries[path]
        data, _ = _byte_view(tensor)
        if data is None or dtype_to_str(tensor.dtype) != entry.dtype:
            return False
        if tuple(tensor.shape) != entry.shape:
            return False
        if entry.data_length == 0:
            data = data[:0]
        crc, sha = _core.tensor_hashes(self._loaded_info[path][1], data)
        for h in entry.hashes or ():
            if h.type == HashType.CRC32 and h.hash != crc.to_bytes(4, "little"):
                return False
            if h.type == HashType.SHA256 and h.hash != sha:
                return False
        return True

    def to_redis(self, redis_client, key_prefix: str, force: bool = False) -> None:
        """Copies this file into Redis under ``key_prefix``, in tensorizer's
        layout, which ``TensorDeserializer("redis://host:port/<key_prefix>")``
        reads back: ``<key_prefix>:header:0`` holds the file header and the
        whole metadata block; each selected tensor (after ``filter_func``) has
        ``<key_prefix>:<name>:<offset>`` with its header and
        ``<key_prefix>:<name>:<data offset>`` with its data, as stored
        (encrypted data stays encrypted). The header key is always written;
        with ``force=False`` a tensor whose header key exists is skipped.

        As in tensorizer, the file must still be open: pass ``lazy_load=True``
        and call this before loading everything into a module.
        """
        if self._reader is None:
            raise ValueError(
                "to_redis: the file is closed (an eager load closes it once"
                " everything is read); open it with lazy_load=True"
            )
        if self._reader.format != "tensorizer":
            raise ValueError(f"to_redis: {self._reader.uri} is not a .tensors file")
        read = self._reader.read
        # tensorizer writes the header it parsed, not the bytes it read:
        # the unused u64 at offset 49 as zeros, and zero flags below data
        # version 4. Files either writer makes hold exactly that anyway.
        prefix = bytearray(read(0, self._reader.prefix_length))
        prefix[49:57] = bytes(8)
        if self._reader.version < META_TENSOR_TENSORIZER_VERSION:
            prefix[9:41] = bytes(32)
        redis_client.set(f"{key_prefix}:header:0", bytes(prefix))
        raw_names = [entry[0] for entry in self._reader.entries()]
        for path, entry in self._entries.items():
            name = raw_names[self._entry_index[path]].decode("utf-8")
            header_key = f"{key_prefix}:{name}:{entry.offset}"
            if not force and redis_client.exists(header_key):
                continue
            redis_client.set(header_key, read(entry.offset, entry.data_offset - entry.offset))
            redis_client.set(
                f"{key_prefix}:{name}:{entry.data_offset}",
                read(entry.data_offset, entry.data_length),
            )

    @property
    def cache_status(self) -> Optional[str]:
        """The ``x-cache-status`` header (an HTTP cache's HIT or MISS) of the
        response that opened the file, as tensorizer reports it; None for
        sources without one (local files, Redis, a server that sends none)."""
        if self._response_headers is None:
            return None
        return self._response_headers.get("x-cache-status", None)

