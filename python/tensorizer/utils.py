"""Helpers around model loading: byte formatting, device selection,
memory statistics and weight-initialization suppression.

Mirrors the public ``tensorizer.utils`` API of tensorizer 2.12.1.
Nothing here initializes CUDA at import time, so importing this module
before forking worker processes stays safe.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from contextlib import AbstractContextManager
from typing import Callable, NamedTuple, TypeVar

import psutil
import torch

try:
    import resource
except ImportError:  # Windows has no getrusage(2)
    resource = None

__all__ = [
    "CPUMemoryUsage",
    "GlobalGPUMemoryUsage",
    "MemoryUsage",
    "TorchGPUMemoryUsage",
    "convert_bytes",
    "get_device",
    "get_gpu_name",
    "get_mem_usage",
    "no_init_or_tensor",
]


def convert_bytes(num, decimal=True) -> str:
    """
    Format a byte count with a human-readable unit.

    Args:
        num: Quantity of bytes to format.
        decimal: Whether to use decimal or binary units
            (e.g. KB = 1000 bytes vs. KiB = 1024 bytes).

    Returns:
        A string in the format ``<n> <units>`` (e.g. ``123.4 MB``).
    """
    if decimal:
        base = 1000.0
        units = ("bytes", "KB", "MB", "GB", "TB", "PB")
    else:
        base = 1024.0
        units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
    # The largest unit absorbs everything beyond it (e.g. "1500.0 PB")
    # rather than overflowing into a unit that does not exist.
    unit = units[-1]
    for candidate in units[:-1]:
        if num < base:
            unit = candidate
            break
        num /= base
    return f"{num:3.1f} {unit}"


def get_device() -> torch.device:
    """The default device for loading: CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_pynvml = None
_pynvml_checked = False
_pynvml_lock = threading.Lock()


def _get_pynvml():
    # pynvml is only a fallback for very old PyTorch without
    # torch.cuda.mem_get_info(), so it is imported and initialized on first
    # use instead of at import time: import must stay free of side effects
    # on the GPU driver.
    global _pynvml, _pynvml_checked
    with _pynvml_lock:
        if not _pynvml_checked:
            _pynvml_checked = True
            _pynvml = _init_pynvml()
        return _pynvml


def _init_pynvml():
    try:
        import pynvml
    except ImportError:
        return None
    # An unrelated package also installs a module named "pynvml".
    if not hasattr(pynvml, "nvml"):
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    return pynvml


class GlobalGPUMemoryUsage(NamedTuple):
    """Total memory usage statistics across all processes for a single GPU."""

    total: int
    free: int
    used: int

    @classmethod
    def now(cls, device=None) -> GlobalGPUMemoryUsage | None:
        """
        Capture a snapshot of the current total memory usage on a single GPU.

        Args:
            device: The GPU to gather memory statistics for.
                If None, the current GPU is used,
                as determined by ``torch.cuda.current_device()``.

        Returns:
            A tuple of (`total`, `free`, `used`) VRAM in bytes, if possible.

            None if CUDA is unavailable, or if neither
            ``torch.cuda.mem_get_info()`` nor pynvml is available.
        """
        if not torch.cuda.is_available():
            return None

        mem_get_info = getattr(torch.cuda, "mem_get_info", None)
        if mem_get_info is not None:
            free, total = mem_get_info(device)
            return cls(total, free, total - free)

        nvml = _get_pynvml()
        if nvml is None:
            return None
        if isinstance(device, (int, str, bytes)):
            device = torch.device(device)
        if isinstance(device, torch.device):
            if device.type == "cpu":
                return None
            device = device.index
        if device is None:
            device = torch.cuda.current_device()
        info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(device))
        return cls(info.total, info.free, info.used)

    def __str__(self):
        return (
            f"GPU: (U: {self.used >> 20:,}MiB F: {self.free >> 20:,}MiB T: {self.total >> 20:,}MiB)"
        )


class TorchGPUMemoryUsage(NamedTuple):
    """Memory usage statistics for PyTorch on a single GPU."""

    reserved: int
    reserved_max: int
    used: int
    used_max: int

    @classmethod
    def now(cls, device=None) -> TorchGPUMemoryUsage | None:
        """
        Capture a snapshot of PyTorch's memory usage on a single GPU.

        Args:
            device: The GPU to gather memory statistics for.
                If None, the current GPU is used,
                as determined by ``torch.cuda.current_device()``.

        Returns:
            A tuple of (`reserved`, `reserved_max`, `used`, `used_max`)
            memory statistics for PyTorch in bytes, if possible.

            None if CUDA isn't available.
        """
        if not torch.cuda.is_available():
            return None
        stats = torch.cuda.memory.memory_stats(device)
        return cls(
            stats.get("reserved_bytes.all.current", 0),
            stats.get("reserved_bytes.all.peak", 0),
            stats.get("allocated_bytes.all.current", 0),
            stats.get("allocated_bytes.all.peak", 0),
        )

    def __str__(self):
        return (
            f"TORCH: (R: {self.reserved >> 20:,}MiB/{self.reserved_max >> 20:,}MiB,"
            f" A: {self.used >> 20:,}MiB/{self.used_max >> 20:,}MiB)"
        )


class CPUMemoryUsage(NamedTuple):
    """Memory usage statistics for CPU RAM."""

    maxrss: int
    free: int

    @classmethod
    def now(cls) -> CPUMemoryUsage:
        """
        Capture a snapshot of the current CPU RAM usage.

        Returns:
            A tuple of (`maxrss`, `free`) RAM statistics in bytes,
            where maxrss is the max resident set size of the current process
            (plus that of its waited-for children), and free is the memory
            available to new allocations without swapping
            (``psutil.virtual_memory().available``).

            On Unix, the system call ``getrusage(2)`` is used
            to measure the maxrss, so the granularity is 1024 bytes,
            but the unit is still bytes.
        """
        if resource is not None:
            # Linux reports ru_maxrss in KiB.
            maxrss = (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            ) << 10
        else:
            process = psutil.Process()
            maxrss = process.memory_info().rss + sum(
                child.memory_info().rss for child in process.children(True)
            )
        # "available" rather than "free": page cache is reclaimable, so
        # "free" badly understates usable memory after reading large files.
        return cls(maxrss, psutil.virtual_memory().available)

    def __str__(self):
        return f"CPU: (maxrss: {self.maxrss >> 20:,}MiB F: {self.free >> 20:,}MiB)"


class MemoryUsage(NamedTuple):
    """
    Combined statistics for CPU, total GPU, and PyTorch memory usage.

    Gathers `CPUMemoryUsage`, `GlobalGPUMemoryUsage`, and `TorchGPUMemoryUsage`
    together in one tuple.
    """

    cpu: CPUMemoryUsage
    gpu: GlobalGPUMemoryUsage | None
    torch: TorchGPUMemoryUsage | None

    @classmethod
    def now(cls, device=None) -> MemoryUsage:
        """
        Capture a snapshot of CPU, total GPU, and PyTorch memory usage.

        Args:
            device: The GPU to gather both total and PyTorch-specific
                memory statistics for. If None, the current GPU is used,
                as determined by ``torch.cuda.current_device()``.

        Returns:
            A tuple of (`cpu`, `gpu`, `torch`) memory statistics.
            If GPU memory usage statistics are not available,
            the `gpu` and `torch` fields are None.
        """
        gpu_info = torch_info = None
        try:
            gpu_info = GlobalGPUMemoryUsage.now(device)
            torch_info = TorchGPUMemoryUsage.now(device)
        except AssertionError:
            # PyTorch builds without CUDA support raise AssertionError from
            # some torch.cuda calls; report the CPU side only.
            pass
        return cls(CPUMemoryUsage.now(), gpu_info, torch_info)

    def __str__(self):
        return " ".join(str(part) for part in self if part)


def get_mem_usage() -> str:
    """
    Captures and formats memory usage statistics for the CPU, GPU, and PyTorch.

    Equivalent to ``str(MemoryUsage.now())``.
    """
    return str(MemoryUsage.now())


def get_gpu_name() -> str:
    """The name of the current CUDA device, or ``"N/A"`` without CUDA."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "N/A"


Model = TypeVar("Model")


def no_init_or_tensor(
    loading_code: Callable[..., Model] | None = None,
) -> Model | AbstractContextManager:
    """
    Suppress the initialization of weights while loading a model.

    While active, ``torch.nn.Linear``, ``torch.nn.Embedding`` and
    ``torch.nn.LayerNorm`` skip ``reset_parameters()``, and ``torch.empty``
    allocates on the ``meta`` device, so a model can be constructed without
    allocating or initializing memory for its weights; they are expected to
    be replaced afterwards (e.g. by ``TensorDeserializer.load_into_module``).

    The effect is scoped to the current thread or asyncio task, and nesting
    is allowed.

    Args:
        loading_code: Either a callable to evaluate
            with model weight initialization suppressed,
            or None (the default) to use as a context manager.

    Returns:
        The return value of `loading_code`, if `loading_code` is callable.

        Otherwise, if `loading_code` is None, returns a context manager
        to be used in a `with`-statement.

    Examples:
        As a context manager::

            with no_init_or_tensor():
                model = AutoModelForCausalLM.from_config(config)

        Or, directly passing a callable::

            model = no_init_or_tensor(
                lambda: AutoModelForCausalLM.from_config(config)
            )
    """
    if loading_code is None:
        return _NoInitOrTensor.context_manager()
    if not callable(loading_code):
        raise TypeError(
            "no_init_or_tensor() expected a callable to evaluate,"
            " or None if being used as a context manager;"
            f' got an object of type "{type(loading_code).__name__}" instead.'
        )
    with _NoInitOrTensor.context_manager():
        return loading_code()


class _NoInitOrTensor:
    # Patching torch is inherently process-global, while activation must be
    # per thread / per task. So the global patches are installed while at
    # least one context anywhere is active (refcounted under a lock), and the
    # patched functions consult a ContextVar to decide whether to behave
    # specially or to defer to the original implementation.
    # Not instantiable: there is no per-instance state.

    _MODULES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)
    # Captured at import so that restoration always returns torch to its
    # pristine state even if the patches were observed and re-wrapped by
    # someone else in between.
    _ORIGINAL_RESET_PARAMETERS = tuple((cls, cls.reset_parameters) for cls in _MODULES)
    _ORIGINAL_EMPTY = torch.empty

    active = contextvars.ContextVar("no_init_or_tensor.active", default=False)
    _users = 0
    _users_lock = threading.Lock()

    @classmethod
    @contextlib.contextmanager
    def context_manager(cls):
        if cls.active.get():
            # Re-entrant use inside an active context changes nothing.
            yield
            return

        with cls._users_lock:
            cls._users += 1
            if cls._users == 1:
                for module_cls in cls._MODULES:
                    module_cls.reset_parameters = cls._skip_when_active(module_cls.reset_parameters)
                torch.empty = cls._empty_on_meta_when_active
        token = cls.active.set(True)
        try:
            yield
        finally:
            cls.active.reset(token)
            with cls._users_lock:
                cls._users -= 1
                if cls._users == 0:
                    torch.empty = cls._ORIGINAL_EMPTY
                    for module_cls, original in cls._ORIGINAL_RESET_PARAMETERS:
                        module_cls.reset_parameters = original

    @staticmethod
    def _skip_when_active(method):
        @functools.wraps(method)
        def reset_parameters(*args, **kwargs):
            if not _NoInitOrTensor.active.get():
                return method(*args, **kwargs)

        return reset_parameters

    @staticmethod
    @functools.wraps(torch.empty)
    def _empty_on_meta_when_active(*args, **kwargs):
        if _NoInitOrTensor.active.get():
            # Deliberately overrides an explicit device too: the point is
            # that nothing gets allocated while loading.
            kwargs["device"] = "meta"
        return _NoInitOrTensor._ORIGINAL_EMPTY(*args, **kwargs)

    __init__ = None
