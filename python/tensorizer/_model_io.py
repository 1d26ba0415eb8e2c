"""Whole-model save/load helpers for Hugging Face style models.

These follow the layout used by tensorizer's ``examples/hf_serialization.py``
so that directories produced by either are interchangeable::

    {model_directory}/{model_prefix}-config.json   # the model's config
    {model_directory}/{model_prefix}.tensors       # write_module() output

Several models can share a directory under different prefixes (the Stable
Diffusion convention is ``encoder``, ``vae`` and ``unet``).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import torch

from . import _core, utils

__all__ = ["load_model", "serialize_model"]

logger = logging.getLogger(__name__)

# Bookkeeping entries of diffusers configs that describe where or how a
# config was loaded rather than the model itself; diffusers also leaves them
# out when it writes its own config.json.
_TRANSIENT_CONFIG_KEYS = (
    "_name_or_path",
    "_use_default_values",
    "_ignore_files",
    "_pre_quantization_dtype",
)


def _is_uri(path: str) -> bool:
    # The engine's scheme registry says what is a URI ("dir/x://y" is a path).
    kind = _core.uri_scheme_kind(path)
    return kind is not None and kind.remote


def _artifact_paths(directory, prefix: str):
    # Plain string joining (not os.path.join) keeps s3:// and http(s)://
    # locations intact and gives the same names on every platform.
    base = os.fspath(directory)
    if isinstance(base, bytes):
        base = os.fsdecode(base)
    base = base.rstrip("/")
    return f"{base}/{prefix}-config.json", f"{base}/{prefix}.tensors"


def _read_bytes(path: str) -> bytes:
    if _is_uri(path):
        from .stream_io import open_stream

        with open_stream(path, "rb") as stream:
            return stream.read()
    with open(path, "rb") as file:
        return file.read()


def _write_bytes(path: str, data: bytes) -> None:
    if _is_uri(path):
        from .stream_io import open_stream

        with open_stream(path, "wb+") as stream:
            stream.write(data)
        return
    with open(path, "wb") as file:
        file.write(data)


def _is_non_empty(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except (FileNotFoundError, NotADirectoryError):
        if not _is_uri(path):
            return False
    try:
        from .stream_io import open_stream

        with open_stream(path, "rb") as stream:
            return bool(stream.read(1))
    except OSError:
        return False


def _json_default(value: Any):
    # Config values that json cannot encode by itself but that configs
    # commonly carry (diffusers may hold numpy arrays and paths,
    # transformers may hold dtypes or nested config objects).
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "", 1)
    if isinstance(value, pathlib.PurePath):
        return value.as_posix()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    raise TypeError(
        f"Object of type {type(value).__name__} in the model config is not JSON serializable"
    )


def _config_to_dict(config, model: torch.nn.Module) -> dict:
    if config is None:
        config = getattr(model, "config", None)
    if config is None:
        # A plain module without a config: an empty config lets load_model()
        # rebuild it by calling its constructor without arguments.
        return {}
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        # transformers PretrainedConfig
        return to_dict()
    if isinstance(config, Mapping):
        # diffusers FrozenDict, or a plain dict
        result = {key: value for key, value in config.items() if key not in _TRANSIENT_CONFIG_KEYS}
        if _is_diffusers_class(type(model)):
            # As diffusers' own config files (and the seed's, written with
            # to_json_file) do: load_model() can then tell the class.
            # diffusers constructors ignore keys starting with "_".
            result.setdefault("_class_name", type(model).__name__)
        return result
    raise TypeError(
        "config must be a transformers PretrainedConfig, a diffusers config"
        f" (FrozenDict), a dict, or None; got {type(config).__name__}"
    )


def serialize_model(
    model: torch.nn.Module,
    config,
    model_directory: str | os.PathLike,
    model_prefix: str = "model",
    force: bool = False,
) -> None:
    """
    Serialize a model's config and tensors into ``model_directory``.

    Writes ``{model_directory}/{model_prefix}-config.json`` (the config as
    indented JSON) and ``{model_directory}/{model_prefix}.tensors``
    (``TensorSerializer.write_module(model,
    include_non_persistent_buffers=False)``). Non-persistent buffers are left
    out because models recreate them on construction.

    Args:
        model: The model to serialize.
        config: The model's configuration: a transformers
            ``PretrainedConfig``, a diffusers config (``model.config``,
            a ``FrozenDict``), or a plain dict. If None, ``model.config``
            is used when it exists.
        model_directory: Directory to write to; created if missing.
        model_prefix: Prefix of the two file names, allowing several
            models in one directory. Default is "model".
        force: Overwrite existing files. Without it, nothing is written
            when both files already exist and are non-empty.
    """
    if model_prefix is None:
        model_prefix = "model"
    config_path, tensors_path = _artifact_paths(model_directory, model_prefix)
    if not force and _is_non_empty(config_path) and _is_non_empty(tensors_path):
        logger.warning(
            "Skipping serialization because files already exist at"
            " %s & %s. Pass force=True to overwrite them.",
            config_path,
            tensors_path,
        )
        return

    config_dict = _config_to_dict(config, model)
    config_json = json.dumps(config_dict, indent=2, default=_json_default)

    if not _is_uri(config_path):
        os.makedirs(os.path.dirname(config_path) or ".", exist_ok=True)

    from .serialization import TensorSerializer

    logger.info("Writing config to %s", config_path)
    _write_bytes(config_path, config_json.encode("utf-8"))
    logger.info("Writing tensors to %s", tensors_path)
    serializer = TensorSerializer(tensors_path)
    try:
        serializer.write_module(model, include_non_persistent_buffers=False)
    finally:
        serializer.close()


def _resolve_dtype(dtype) -> torch.dtype | None:
    # The seed's script passes dtypes as strings ("float16").
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(resolved, torch.dtype):
            return resolved
    if isinstance(dtype, (str, torch.device)) and _is_device(dtype):
        raise ValueError(
            f"load_model: dtype={dtype!r} is a device; pass it as device=... (the fifth"
            " positional parameter is dtype, as in the seed's tensorizer.py)"
        )
    raise ValueError(f"Unknown dtype: {dtype!r}")


def _is_device(value) -> bool:
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return False
    return True


def _class_from_config(config_dict: dict, config_path: str):
    # diffusers configs name their class; transformers configs saved by
    # save_pretrained() list their architectures.
    class_name = config_dict.get("_class_name")
    if isinstance(class_name, str):
        import diffusers

        return _model_class(diffusers, class_name, config_path)
    architectures = config_dict.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        import transformers

        return _model_class(transformers, architectures[0], config_path)
    if "model_type" in config_dict:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM
    raise ValueError(
        f"{config_path} names no model class (no _class_name, architectures or"
        " model_type): pass modelclass to load_model"
    )


def _model_class(package, name: str, config_path: str):
    cls = getattr(package, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ValueError(
            f"{config_path} names model class {name!r}, which {package.__name__}"
            f" {package.__version__} does not have: pass modelclass to load_model"
        )
    return cls


def _is_diffusers_class(cls) -> bool:
    # diffusers ConfigMixin subclasses are configured by plain dicts.
    return callable(getattr(cls, "load_config", None))


def _load_config(config_dict: dict, model_class, config_class):
    if config_class is None and not _is_diffusers_class(model_class):
        # transformers models know their config class; Auto* classes don't,
        # but the stored model_type identifies it.
        config_class = getattr(model_class, "config_class", None)
        if config_class is None and "model_type" in config_dict:
            from transformers import AutoConfig

            config_class = AutoConfig
    if config_class is None:
        return config_dict

    from_dict = getattr(config_class, "from_dict", None)
    if callable(from_dict):
        return from_dict(config_dict)
    # AutoConfig (and diffusers classes used as config_class) only load
    # from a directory holding a config.json.
    loader = getattr(config_class, "from_pretrained", None)
    if not callable(loader):
        loader = config_class.load_config
    with tempfile.TemporaryDirectory() as temp_dir:
        with open(os.path.join(temp_dir, "config.json"), "w") as file:
            json.dump(config_dict, file)
        return loader(temp_dir)


def _instantiate(model_class, config):
    # Auto* classes and diffusers models build from a config through
    # from_config(); other transformers models take the config directly.
    from_config = getattr(model_class, "from_config", None)
    if callable(from_config):
        return from_config(config)
    if isinstance(config, Mapping):
        return model_class(**config)
    return model_class(config)


def _move_leftovers(model: torch.nn.Module) -> None:
    # Tensors the file does not provide (mainly non-persistent buffers,
    # which serialize_model() leaves out) are created at construction on the
    # default device. Follow the loaded parameters so the model is usable on
    # the target device as a whole.
    target = next(
        (p.device for p in model.parameters() if p.device.type != "meta"),
        None,
    )
    if target is None:
        return
    still_meta = []
    for module_name, module in model.named_modules():
        for name, buffer in module._buffers.items():
            if buffer is None:
                continue
            if buffer.device.type == "meta":
                still_meta.append(f"{module_name}.{name}")
            elif buffer.device != target:
                module._buffers[name] = buffer.to(target)
        for name, param in module._parameters.items():
            if param is not None and param.device.type == "meta":
                still_meta.append(f"{module_name}.{name}")
    if still_meta:
        logger.warning(
            "These tensors were not in the serialized file and have no data (meta device): %s",
            ", ".join(still_meta),
        )


def load_model(
    path_uri: str | os.PathLike,
    modelclass=None,
    configclass=None,
    model_prefix: str | None = "model",
    dtype: torch.dtype | str | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.nn.Module:
    """
    Rebuild a model written by `serialize_model`.

    The model is constructed from ``{path_uri}/{model_prefix}-config.json``
    under `utils.no_init_or_tensor` (so no memory is allocated or
    initialized for its weights), then filled from
    ``{path_uri}/{model_prefix}.tensors``
    with ``TensorDeserializer.load_into_module``.

    The positional order and names are those of the seed's
    ``tensorizer.py``; ``device`` is keyword-only.

    Args:
        path_uri: Directory (or URI prefix) holding the serialized files.
        modelclass: Class to build: a transformers model class (including
            ``Auto*`` classes) or a diffusers model class. None picks it from
            the stored config: diffusers' ``_class_name``, else the first of
            transformers' ``architectures``, else ``AutoModelForCausalLM``
            (the seed's default) for a config with a ``model_type``.
        configclass: Config class for transformers models; defaults to
            ``modelclass.config_class``, or ``AutoConfig`` for ``Auto*``
            classes. Unneeded for diffusers models, which take dicts.
        model_prefix: Prefix of the two file names. Default is "model".
        dtype: Optional dtype to cast the loaded tensors to: a
            ``torch.dtype`` or its name (``"float16"``).
        device: Device to load onto; None picks the GPU when there is one,
            else the CPU.

    Returns:
        The loaded model. Like a freshly constructed model it is in training
        mode; call ``.eval()`` for inference.
    """
    if model_prefix is None:
        model_prefix = "model"
    if device is None:
        device = utils.get_device()
    dtype = _resolve_dtype(dtype)
    begin = time.perf_counter()

    config_path, tensors_path = _artifact_paths(path_uri, model_prefix)
    try:
        config_dict = json.loads(_read_bytes(config_path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: not a JSON config: {e}") from None
    if not isinstance(config_dict, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(config_dict).__name__}")
    if modelclass is None:
        modelclass = _class_from_config(config_dict, config_path)
    config = _load_config(config_dict, modelclass, configclass)
    with utils.no_init_or_tensor():
        model = _instantiate(modelclass, config)

    from .serialization import TensorDeserializer

    logger.info("Loading %s", tensors_path)
    with TensorDeserializer(tensors_path, device=device, dtype=dtype) as deserializer:
        deserializer.load_into_module(model)
        bytes_read = getattr(deserializer, "total_bytes_read", 0)
    _move_leftovers(model)

    if logger.isEnabledFor(logging.INFO):
        # Gathering memory statistics is not free; skip it when unlogged.
        elapsed = time.perf_counter() - begin
        logger.info(
            "Model tensors loaded in %.2fs, read %s @ %s/s, %s",
            elapsed,
            utils.convert_bytes(bytes_read),
            utils.convert_bytes(bytes_read / elapsed if elapsed > 0 else 0),
            utils.get_mem_usage(),
        )
    return model
