"""tensorizer._syscalls, as tensorizer 2.12 names it: Linux fallocate(2) to
reserve a file's space up front, and prefaulting fresh memory.

These are thin ctypes calls into the C library, so they run without the
GIL, as the reference's do. Where a call does not exist (not Linux, or an
old C library), ``has_fallocate()`` is False and ``try_fallocate`` does
nothing, and ``prefault`` writes zeros instead of asking the kernel.
"""

import ctypes
import errno
import mmap
import os
from typing import Optional

__all__ = ("has_fallocate", "prefault", "try_fallocate")

# Linux's MADV_POPULATE_WRITE (5.14 and up): fault pages in writable.
_MADV_POPULATE_WRITE = 23


def _libc_function(name: str, restype, *argtypes):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = getattr(libc, name)
    except (OSError, AttributeError, TypeError):
        return None
    function.restype = restype
    function.argtypes = argtypes
    return function


_fallocate = _libc_function(
    "fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong
)
_madvise = _libc_function("madvise", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def has_fallocate() -> bool:
    """True when the C library has fallocate(2)."""
    return _fallocate is not None


def try_fallocate(fd: int, offset: int, length: int, suppress_all_errors: bool = False) -> bool:
    """Allocates bytes [offset, offset + length) of the file open as ``fd``
    (mode 0: the file grows to cover them). Returns True when the space was
    allocated, False when fallocate(2) is missing or the file system does
    not support it (EOPNOTSUPP). Other failures raise OSError unless
    ``suppress_all_errors``, in which case they return False too."""
    if _fallocate is None:
        return False
    if _fallocate(fd, 0, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if suppress_all_errors or err == errno.EOPNOTSUPP:
        return False
    raise OSError(err, f"fallocate(fd={fd}, offset={offset}, length={length}): {os.strerror(err)}")


def _probe_madvise() -> bool:
    if _madvise is None:
        return False
    with mmap.mmap(-1, mmap.PAGESIZE, flags=getattr(mmap, "MAP_PRIVATE", 0) or mmap.MAP_SHARED) as m:
        address = ctypes.addressof(ctypes.c_ubyte.from_buffer(m))
        ok = _madvise(address, mmap.PAGESIZE, _MADV_POPULATE_WRITE) == 0
        del address
        return ok


_can_madvise: Optional[bool] = None


def prefault(address: int, length: int) -> None:
    """Faults in ``length`` bytes of fresh memory at ``address`` before it is
    filled, so that the fill does not stop at every page. With
    MADV_POPULATE_WRITE the contents are kept; without it the range is
    written with zeros, so use this only on memory not yet written."""
    global _can_madvise
    if _can_madvise is None:
        _can_madvise = _probe_madvise()
    if _can_madvise:
        if _madvise(address, length, _MADV_POPULATE_WRITE) != 0:
            _raise_errno(f"madvise(MADV_POPULATE_WRITE, {length} bytes)")
    else:
        ctypes.memset(address, 0, length)
