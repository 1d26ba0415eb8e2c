"""``torch.save`` and ``torch.load`` with the tensor data in a tensorizer file.

Inside ``with tensorizer_saving():``, ``torch.save(obj, "model.pt")`` pickles
``obj`` as usual except that the bytes of every tensor storage go to a
sidecar ``model.pt.tensors`` written by `TensorSerializer`; ``model.pt`` keeps
only the rest (module classes, shapes, strides, plain Python objects).
Inside ``with tensorizer_loading():``, ``torch.load("model.pt")`` reads the
sidecar with `TensorDeserializer` and puts the storages back::

    with tensorizer_saving():
        torch.save(model, "model.pt")
    with tensorizer_loading(device="cuda", num_readers=4):
        model = torch.load("model.pt")

How it works: ``torch.save`` and ``torch.load`` take a ``pickle_module``.
Ours supplies a Pickler whose ``persistent_id`` claims storages before torch's
own hook sees them, and an Unpickler whose ``persistent_load`` resolves the
claimed ones. torch subclasses the Pickler with its own ``persistent_id``
method and assigns ``persistent_load`` on the Unpickler instance, so both
hooks are chained in front of torch's rather than replaced: whatever is not
ours (storages without data, other persistent ids) still goes to torch.

The format is tensorizer 2.12.1's, so files move between the two: a storage
is pickled as the persistent id ``("TensorizerPickler", 0, "storage", index,
dtype)``, ``dtype`` being the ``TypedStorage``'s dtype, or None for an
``UntypedStorage``; the sidecar is a list state dict holding one uint8 tensor
per distinct storage, in the order they were first met. Storages that views
share are written once, and load back shared.

The contexts are local to a thread or asyncio task (ContextVars). While any
context is active anywhere in the process, ``torch.save`` / ``torch.load``
are replaced by wrappers (reference counted, under a lock) that act only
where a context is active in the calling thread or task, and otherwise call
the originals unchanged. References to the originals taken before (``from
torch import save``) are not affected.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import io
import logging
import os
import pickle
import threading
import types
import typing
from typing import Any, Callable, Iterable, List, Optional, Union

import torch

from .serialization import TensorDeserializer, TensorSerializer

__all__ = ("tensorizer_loading", "tensorizer_saving")

logger = logging.getLogger(__name__)

# What torch.save / torch.load accept as their file argument.
_FileLike = Union[str, os.PathLike, typing.IO[bytes]]

# The default of torch.load's pickle_module parameter (None since torch
# 1.13), which the load wrapper keeps so that its signature stays torch's.
_LOAD_WRAPPER_DEFAULT_MODULE: Any = inspect.signature(torch.load).parameters[
    "pickle_module"
].default

_ORIG_TORCH_SAVE: Callable = torch.save
_ORIG_TORCH_LOAD: Callable = torch.load

_PID_TAG = "TensorizerPickler"
_PID_VERSION = 0


@dataclasses.dataclass(frozen=True)
class _Context:
    """What one tensorizer_saving / tensorizer_loading call asked for."""

    file_obj: Any  # a location, a callable giving one from torch's f, or None
    func: Optional[Callable]  # save_func / load_func
    kwargs: dict  # for TensorSerializer / TensorDeserializer
    suppress_weights_only: bool = False


@dataclasses.dataclass(frozen=True)
class _Sidecar:
    """Where one torch.save / torch.load call keeps its tensors."""

    location: Any  # None: this call does not use tensorizer
    func: Optional[Callable]
    kwargs: dict


_saving: contextvars.ContextVar[Optional[_Context]] = contextvars.ContextVar(
    "tensorizer_saving", default=None
)
_loading: contextvars.ContextVar[Optional[_Context]] = contextvars.ContextVar(
    "tensorizer_loading", default=None
)
# Set by the wrappers for the duration of one torch.save / torch.load call,
# read by the (un)pickler that torch creates inside it.
_save_sidecar: contextvars.ContextVar[Optional[_Sidecar]] = contextvars.ContextVar(
    "tensorizer_save_sidecar", default=None
)
_load_sidecar: contextvars.ContextVar[Optional[_Sidecar]] = contextvars.ContextVar(
    "tensorizer_load_sidecar", default=None
)


def _default_location(f) -> Optional[str]:
    if isinstance(f, io.BytesIO):
        logger.warning(
            "Cannot infer a .tensors location from an io.BytesIO; not using"
            " tensorizer for this call (pass file_obj to choose a location)"
        )
        return None
    try:
        name = os.fsdecode(f)
    except TypeError:
        name = getattr(f, "name", None)
        if not isinstance(name, (str, bytes, os.PathLike)):
            raise TypeError(
                f"Cannot infer a .tensors location from {type(f).__name__} {f!r}:"
                " it is neither a path nor a file object with a name;"
                " pass file_obj to choose a location"
            ) from None
        name = os.fsdecode(name)
    return name + ".tensors"


def _sidecar_for(context: _Context, f) -> _Sidecar:
    if context.file_obj is None:
        location = _default_location(f)
    elif callable(context.file_obj):
        location = context.file_obj(f)
    else:
        location = context.file_obj
    return _Sidecar(location, context.func, context.kwargs)


def _is_own_pid(pid) -> bool:
    return isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == _PID_TAG


def _set_hook(obj, name: str, value, base: type) -> None:
    # Before Python 3.13 the C (un)pickler keeps its persistent_id /
    # persistent_load hook in a slot, updated through the getset descriptor
    # on the C base class. A method of the same name on a class in between
    # (ours) hides that descriptor from plain attribute assignment, so set
    # it through the descriptor, and on the instance for attribute reads.
    descriptor = base.__dict__.get(name)
    if inspect.isgetsetdescriptor(descriptor):
        descriptor.__set__(obj, value)
    object.__setattr__(obj, name, value)


class _SidecarPickler(pickle.Pickler):
    """Pickler that sends storage data to the sidecar of the current save."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sidecar = _save_sidecar.get()
        self._sidecar_tensors: List[torch.Tensor] = []
        self._sidecar_ids: dict = {}

    def persistent_id(self, obj):
        return self._claim_storage(obj)

    def _claim_storage(self, obj):
        if self._sidecar is None or self._sidecar.location is None:
            return None
        if not torch.is_storage(obj):
            return None
        if isinstance(obj, torch.TypedStorage):
            untyped, dtype = obj._untyped_storage, obj.dtype
        else:
            untyped, dtype = obj, None
        # Storages without data (meta, or unallocated) stay with torch,
        # which records them without bytes.
        if untyped.device.type == "meta" or untyped.data_ptr() == 0:
            return None
        key = (untyped.device, untyped.data_ptr(), untyped.nbytes())
        index = self._sidecar_ids.get(key)
        if index is None:
            index = len(self._sidecar_tensors)
            self._sidecar_ids[key] = index
            # A 1-D uint8 tensor over the whole storage is what
            # TensorSerializer writes; it also keeps the storage alive.
            view = torch.empty((0,), dtype=torch.uint8, device=untyped.device)
            view.set_(untyped)
            self._sidecar_tensors.append(view)
        return _PID_TAG, _PID_VERSION, "storage", index, dtype

    def dump(self, obj):
        super().dump(obj)
        tensors, self._sidecar_tensors = self._sidecar_tensors, []
        self._sidecar_ids = {}
        if not tensors:
            return
        sidecar = self._sidecar
        if sidecar.func is not None:
            sidecar.func(sidecar.location, tensors, sidecar.kwargs)
            return
        with TensorSerializer(sidecar.location, **sidecar.kwargs) as serializer:
            serializer.write_state_dict(tensors)

    def __setattr__(self, name, value):
        if name == "persistent_id":
            own = self._claim_storage

            def persistent_id(obj):
                pid = own(obj)
                return value(obj) if pid is None else pid

            _set_hook(self, name, persistent_id, pickle.Pickler)
            return
        super().__setattr__(name, value)

    def __init_subclass__(cls, **kwargs):
        # torch.save subclasses this class with its own persistent_id;
        # storages must reach ours first.
        super().__init_subclass__(**kwargs)
        theirs = cls.__dict__.get("persistent_id")
        if theirs is None:
            return

        @functools.wraps(theirs)
        def persistent_id(self, obj):
            pid = self._claim_storage(obj)
            return theirs(self, obj) if pid is None else pid

        cls.persistent_id = persistent_id


class _SidecarUnpickler(pickle.Unpickler):
    """Unpickler that takes storage data from the sidecar of the current load."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sidecar = _load_sidecar.get()
        self._sidecar_tensors: Optional[list] = None

    def persistent_load(self, pid):
        if _is_own_pid(pid):
            return self._storage_for(pid)
        raise pickle.UnpicklingError("unsupported persistent id encountered")

    def load(self):
        try:
            return super().load()
        finally:
            self._sidecar_tensors = None

    def _storage_for(self, pid):
        version = pid[1]
        if version != _PID_VERSION:
            raise pickle.UnpicklingError(
                f"Unsupported TensorizerPickler data version ({version!r})"
            )
        if pid[2] != "storage" or len(pid) != 5:
            raise pickle.UnpicklingError(f"Unsupported TensorizerPickler object type ({pid[2]!r})")
        index, dtype = pid[3], pid[4]
        if dtype is None:
            # torch reads an UntypedStorage back as a uint8 TypedStorage.
            dtype = torch.uint8
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(
                f"TensorizerPickler storage {index!r} has an invalid dtype {dtype!r}"
            )
        tensors = self._tensors()
        if not isinstance(index, int) or not 0 <= index < len(tensors):
            raise pickle.UnpicklingError(
                f"the pickle refers to tensor {index!r}, but the .tensors file"
                f" {_describe(self._sidecar.location)} holds {len(tensors)}"
            )
        return torch.TypedStorage(
            wrap_storage=_whole_storage(tensors[index]), dtype=dtype, _internal=True
        )

    def _tensors(self) -> list:
        # Read on the first storage met, not before: a .pt file that
        # torch_compat did not write has no sidecar to read.
        if self._sidecar_tensors is not None:
            return self._sidecar_tensors
        sidecar = self._sidecar
        if sidecar is None or sidecar.location is None:
            raise pickle.UnpicklingError(
                "This file keeps its tensors in a tensorizer .tensors file, but no"
                " location for it is known: pass file_obj to tensorizer_loading"
            )
        if sidecar.func is not None:
            tensors = list(sidecar.func(sidecar.location, sidecar.kwargs))
        else:
            with TensorDeserializer(sidecar.location, **sidecar.kwargs) as deserializer:
                tensors = deserializer.tree()
            if not isinstance(tensors, list):
                raise pickle.UnpicklingError(
                    f"{_describe(sidecar.location)} is not a torch_compat .tensors"
                    " file: its tensors are not named 0, 1, 2, ..."
                )
        self._sidecar_tensors = tensors
        return tensors

    def __setattr__(self, name, value):
        if name == "persistent_load":
            own = self._storage_for

            def persistent_load(pid):
                return own(pid) if _is_own_pid(pid) else value(pid)

            _set_hook(self, name, persistent_load, pickle.Unpickler)
            return
        super().__setattr__(name, value)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        theirs = cls.__dict__.get("persistent_load")
        if theirs is None:
            return

        @functools.wraps(theirs)
        def persistent_load(self, pid):
            return self._storage_for(pid) if _is_own_pid(pid) else theirs(self, pid)

        cls.persistent_load = persistent_load


def _describe(location) -> str:
    if isinstance(location, (str, bytes, os.PathLike)):
        return repr(os.fsdecode(location))
    return repr(getattr(location, "name", location))


def _whole_storage(tensor: torch.Tensor) -> torch.UntypedStorage:
    storage = tensor.untyped_storage()
    if (
        tensor.storage_offset() == 0
        and tensor.is_contiguous()
        and storage.nbytes() == tensor.numel() * tensor.element_size()
    ):
        return storage
    # A load_func may hand back views into a larger buffer; a storage must
    # hold exactly the tensor's bytes.
    return tensor.contiguous().clone().untyped_storage()


def _pickle_attribute(name: str):
    return getattr(pickle, name)


# The pickle_module handed to torch: pickle itself but for the two classes.
_pickle_module = types.ModuleType("tensorizer_pickle")
_pickle_module.__getattr__ = _pickle_attribute
_pickle_module.Pickler = _SidecarPickler
_pickle_module.Unpickler = _SidecarUnpickler


def _check_pickle_module(pickle_module) -> None:
    if pickle_module is not None and pickle_module is not pickle:
        raise ValueError(
            "Tensorizer-based torch serialization is incompatible with"
            " using a pickle_module other than the default"
        )


@functools.wraps(_ORIG_TORCH_SAVE)
def _save_wrapper(obj, f, pickle_module=pickle, *args, **kwargs):
    context = _saving.get()
    if context is None:
        return _ORIG_TORCH_SAVE(obj, f, pickle_module, *args, **kwargs)
    _check_pickle_module(pickle_module)
    token = _save_sidecar.set(_sidecar_for(context, f))
    try:
        return _ORIG_TORCH_SAVE(obj, f, _pickle_module, *args, **kwargs)
    finally:
        _save_sidecar.reset(token)


@functools.wraps(_ORIG_TORCH_LOAD)
def _load_wrapper(
    f,
    map_location=None,
    pickle_module=_LOAD_WRAPPER_DEFAULT_MODULE,
    *args,
    weights_only: Optional[bool] = None,
    **kwargs,
):
    context = _loading.get()
    if context is None:
        return _ORIG_TORCH_LOAD(
            f, map_location, pickle_module, *args, weights_only=weights_only, **kwargs
        )
    _check_pickle_module(pickle_module)
    if context.suppress_weights_only:
        weights_only = False
    token = _load_sidecar.set(_sidecar_for(context, f))
    try:
        return _ORIG_TORCH_LOAD(
            f, map_location, _pickle_module, *args, weights_only=weights_only, **kwargs
        )
    finally:
        _load_sidecar.reset(token)


class _TorchPatch:
    """Replaces torch.<name> while at least one context anywhere uses it."""

    def __init__(self, name: str, wrapper: Callable):
        self._name = name
        self._wrapper = wrapper
        self._users = 0
        self._replaced: Optional[Callable] = None
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._replaced = getattr(torch, self._name)
                setattr(torch, self._name, self._wrapper)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                setattr(torch, self._name, self._replaced)
                self._replaced = None


_save_patch = _TorchPatch("save", _save_wrapper)
_load_patch = _TorchPatch("load", _load_wrapper)


@contextlib.contextmanager
def _active(var: contextvars.ContextVar, context: _Context, patch: _TorchPatch):
    token = var.set(context)
    patch.acquire()
    try:
        yield
    finally:
        patch.release()
        var.reset(token)


def tensorizer_saving(
    file_obj=None,
    *,
    save_func: Optional[Callable[[Any, Iterable[torch.Tensor], dict], Any]] = None,
    **kwargs,
):
    """
    Context manager that makes ``torch.save`` write tensor data with
    tensorizer, to a ``.tensors`` file beside the one ``torch.save`` writes.
    Load both back with `tensorizer_loading` around ``torch.load``.

    Only the current thread or asyncio task is affected; contexts may be
    nested (the innermost wins) and combined with `tensorizer_loading`.

    Args:
        file_obj: Where to write the tensor data: anything `TensorSerializer`
            accepts (a path, an ``s3://`` URI, an open binary file), or a
            callable that receives the ``f`` given to ``torch.save`` and
            returns such a location, or None to save that call with plain
            ``torch.save``. By default, ``f`` plus ``".tensors"``
            (``model.pt`` -> ``model.pt.tensors``); a file object's ``name``
            is used the same way, and an ``io.BytesIO`` saves normally.
        save_func: Optional ``save_func(file_obj, tensors, kwargs)`` that
            writes the tensors itself (for instance in the background)
            instead of a `TensorSerializer`. It receives the location
            worked out from ``file_obj``, the list of tensors, and ``kwargs``.
        kwargs: Keyword arguments for the `TensorSerializer`
            (e.g. ``encryption=EncryptionParams.random()``).
    """
    return _active(_saving, _Context(file_obj, save_func, kwargs), _save_patch)


def tensorizer_loading(
    file_obj=None,
    *,
    load_func: Optional[Callable[[Any, dict], Iterable[torch.Tensor]]] = None,
    suppress_weights_only: bool = False,
    **kwargs,
):
    """
    Context manager that makes ``torch.load`` read tensor data with
    tensorizer from the ``.tensors`` file that `tensorizer_saving` wrote
    beside the ``.pt`` file. Files without tensorizer data load as usual.

    Only the current thread or asyncio task is affected; contexts may be
    nested (the innermost wins) and combined with `tensorizer_saving`.

    ``torch.load`` runs with a custom ``pickle_module``, which torch counts as
    not weights-only: ``weights_only=True`` raises, and ``weights_only``
    left unset means False. Unpickling can run arbitrary code; load only
    files you trust.

    Args:
        file_obj: Where to read the tensor data from: anything
            `TensorDeserializer` accepts, or a callable that receives the ``f``
            given to ``torch.load`` and returns such a location (or None).
            By default, ``f`` plus ``".tensors"``.
        load_func: Optional ``load_func(file_obj, kwargs) -> tensors`` that
            reads the tensors itself instead of a `TensorDeserializer`.
        suppress_weights_only: Turn ``weights_only=True`` into False inside
            this context rather than fail.
        kwargs: Keyword arguments for the `TensorDeserializer`
            (e.g. ``device="cuda"``, ``encryption=...``).
    """
    context = _Context(file_obj, load_func, kwargs, suppress_weights_only)
    return _active(_loading, context, _load_patch)
