"""Staged loads: the engine's ring of pinned buffers between source and device.

A load to a GPU allocates every destination tensor with torch (so it counts
in ``torch.cuda.memory_allocated`` and is freed like any tensor), hands their
addresses to the engine, and the engine reads each range into a pinned
staging buffer, checks and decrypts it there, and copies it to the device
asynchronously with the CUDA (or HIP) runtime that torch itself loaded
(include/tensorizer/staging.h). Host memory stays at the ring's size
whatever the model's.

Environment (read at each load):

- ``TENSORIZER_STAGING``: unset or ``gpu``: GPU loads are staged, CPU loads
  are not; ``off``: no staging (GPU loads read into host memory, then copy
  each tensor with ``.to()``); ``host``: CPU loads too go through the ring,
  with a host stand-in for the device that memcpy's on copy threads (for
  machines without a GPU, and for tests).
- ``TENSORIZER_STAGING_BUFFERS``, ``TENSORIZER_STAGING_BUFFER_BYTES``: the
  ring's shape (default: 8 MiB buffers, two per reader plus two, at most
  1 GiB). ``plaid_mode_buffers`` sets buffers per reader.
- ``TENSORIZER_STAGING_HOST_BYTES_PER_S``: throttles each copy stream of the
  host stand-in (a slow device, for tests).
"""

import os
from typing import List, Optional, Tuple

import torch

from . import _core

_RUNTIME_NAMES = ("libcudart.so", "libamdhip64.so")


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    if not value:
        return 0
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a non-negative integer") from None
    if n < 0:
        raise ValueError(f"{name}={value!r}: expected a non-negative integer")
    return n


def mode() -> str:
    value = os.environ.get("TENSORIZER_STAGING", "gpu").strip().lower() or "gpu"
    if value not in ("gpu", "off", "host"):
        raise ValueError(f"TENSORIZER_STAGING={value!r}: expected gpu, off or host")
    return value


def gpu_runtime_path() -> Optional[str]:
    """The CUDA or HIP runtime library torch has loaded in this process (from
    /proc/self/maps), or None (no GPU build, or a statically linked one)."""
    torch.cuda.init()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if os.path.basename(path).startswith(_RUNTIME_NAMES):
                    return path
    except OSError:
        return None
    return None


def copy_device(device: torch.device) -> Optional["_core.CopyDevice"]:
    """The engine device a load to `device` stages through, or None when it
    takes the unstaged path."""
    m = mode()
    if device.type == "cpu":
        if m != "host":
            return None
        return _core.CopyDevice.host(
            bytes_per_second=_env_int("TENSORIZER_STAGING_HOST_BYTES_PER_S")
        )
    if device.type != "cuda" or m == "off":
        return None
    path = gpu_runtime_path()
    if path is None:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _core.CopyDevice.gpu(path, index)


def ring_shape(buffers_per_reader: Optional[int], num_threads: int) -> Tuple[int, int]:
    """(buffer_count, buffer_bytes); 0 lets the engine choose."""
    count = _env_int("TENSORIZER_STAGING_BUFFERS")
    if not count and buffers_per_reader:
        count = buffers_per_reader * max(num_threads, 1) + 2
    return count, _env_int("TENSORIZER_STAGING_BUFFER_BYTES")


def destinations(shapes_dtypes, device: torch.device, meta: List[bool]) -> List[torch.Tensor]:
    """One tensor per entry, allocated by torch on `device` (one allocation
    each: see docs/design.md); meta tensors (stored without data) zeroed."""
    out = []
    for (shape, dtype), is_meta in zip(shapes_dtypes, meta):
        t = torch.empty(shape, dtype=dtype, device=device)
        if is_meta:
            t.zero_()
        out.append(t)
    if device.type == "cuda":
        # The engine copies on its own streams: memory the caching allocator
        # just handed back may still be read by work queued on torch's stream.
        torch.cuda.current_stream(device).synchronize()
    return out
