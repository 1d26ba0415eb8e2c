"""``python -m tensorizer``: the seed's ``tensorizer.py`` script.

Serializes a Hugging Face transformers model directory, or a diffusers
pipeline directory, into the files `tensorizer.load_model` reads, then checks
them by reloading and comparing weights and outputs with the original::

    python -m tensorizer serialize MODEL_DIR OUTPUT_DIR [--dtype float16] [--force]
    python -m tensorizer validate MODEL_DIR OUTPUT_DIR

Output layout:

- transformers: ``model-config.json`` and ``model.tensors``, plus the
  tokenizer's files (``save_pretrained``) in OUTPUT_DIR itself.
- diffusers: ``{prefix}-config.json`` and ``{prefix}.tensors`` for each model
  component (prefix ``encoder`` for ``text_encoder``, as the seed, else the
  component's name); tokenizers, schedulers and other components in
  ``OUTPUT_DIR/<component>/`` (``save_pretrained``); and
  ``pipeline-index.json``, which names every component's class and place.

A local MODEL_DIR is read with the Hugging Face hub offline. Exit status:
0 when everything matched, 1 when validation found a difference, 2 for bad
arguments or input.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

SAMPLE_TEXT = "Tensorizer loads models quickly."
PIPELINE_INDEX = "pipeline-index.json"
# Only these packages may be named by a pipeline index: loading one never
# imports arbitrary modules.
_LIBRARIES = ("diffusers", "transformers")


class ValidationError(Exception):
    """The reloaded model does not match the original."""


class InputError(Exception):
    """Bad arguments or input files (exit status 2)."""


def _fmt_bytes(n: float) -> str:
    from .utils import convert_bytes

    return convert_bytes(n)


def _rate(n: int, seconds: float) -> str:
    return f"{_fmt_bytes(n)} in {seconds:.2f} s ({_fmt_bytes(n / seconds if seconds > 0 else 0)}/s)"


def _tensors_size(output: Path, prefix: str) -> int:
    return (output / f"{prefix}.tensors").stat().st_size


def _detect_kind(model_dir: Path, kind: str) -> str:
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory")
    if kind != "auto":
        return kind
    if (model_dir / "model_index.json").is_file():
        return "diffusers"
    if (model_dir / "config.json").is_file():
        return "transformers"
    raise InputError(
        f"{model_dir}: neither model_index.json (a diffusers pipeline) nor"
        " config.json (a transformers model)"
    )


# --------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------


def _transformers_class(config):
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    return transformers.AutoModel


def _open_transformers(model_dir: Path, dtype):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir)
        model = _transformers_class(config).from_pretrained(model_dir, config=config, **kwargs)
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise InputError(f"{model_dir}: cannot load the model: {e!r}") from None
    model.eval()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError, KeyError):
        tokenizer = None
    return model, tokenizer


def _serialize_transformers(args, model_dir: Path, output: Path):
    model, tokenizer = _open_transformers(model_dir, args.dtype)
    print(f"transformers model {type(model).__name__} from {model_dir}")
    _serialize_module(model, model.config, output, "model", args.force)
    if tokenizer is None:
        print("  tokenizer: none found in the model directory")
    else:
        files = tokenizer.save_pretrained(output)
        print(f"  tokenizer: {type(tokenizer).__name__} -> {_names(files, output)}")
    return model, tokenizer


def _validate_transformers(args, model_dir: Path, output: Path, opened=None) -> None:
    import torch

    original, tokenizer = opened or _open_transformers(model_dir, args.dtype)
    loaded = _reload(output, type(original), "model", args.device)
    _compare_weights("model", original, loaded)
    device = next(loaded.parameters()).device
    _into_own_memory(original.to(device))

    if tokenizer is not None:
        inputs = dict(tokenizer(SAMPLE_TEXT, return_tensors="pt"))
    else:
        vocab = int(getattr(original.config, "vocab_size", 100) or 100)
        inputs = {"input_ids": torch.arange(8).remainder(vocab).unsqueeze(0)}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    try:
        with torch.no_grad():
            want = original(**inputs)
            got = loaded(**inputs)
    except Exception as e:  # models whose forward needs more than token ids
        print(f"  outputs: not compared ({type(e).__name__}: {e})")
        return
    name, want_t = _first_tensor(want)
    _, got_t = _first_tensor(got)
    if not torch.equal(want_t, got_t):
        raise ValidationError(
            f"outputs differ: {name} max |diff| {(want_t.float() - got_t.float()).abs().max():g}"
        )
    print(f"  outputs: {name} {tuple(want_t.shape)} identical")


def _first_tensor(output):
    import torch

    if isinstance(output, torch.Tensor):
        return "output", output
    items = output.items() if hasattr(output, "items") else enumerate(output)
    for key, value in items:
        if isinstance(value, torch.Tensor):
            return str(key), value
    raise ValidationError("the model's forward returned no tensor to compare")


# --------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------


def _prefix_for(name: str) -> str:
    return "encoder" if name == "text_encoder" else name


def _library_of(obj) -> str:
    top = type(obj).__module__.split(".", 1)[0]
    if top not in _LIBRARIES:
        raise InputError(f"component {type(obj).__name__} comes from {top}, not {_LIBRARIES}")
    return top


def _open_pipeline(model_dir: Path, dtype):
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    try:
        pipeline = diffusers.DiffusionPipeline.from_pretrained(model_dir, **kwargs)
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise InputError(f"{model_dir}: cannot load the pipeline: {e!r}") from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _pipeline_extras(pipeline) -> Dict[str, Any]:
    # model_index.json entries that are settings, not components
    # (requires_safety_checker, ...): the constructor needs them back.
    return {
        k: v
        for k, v in dict(pipeline.config).items()
        if not k.startswith("_") and k not in pipeline.components
    }


def _serialize_diffusers(args, model_dir: Path, output: Path):
    import torch

    pipeline = _open_pipeline(model_dir, args.dtype)
    print(f"diffusers pipeline {type(pipeline).__name__} from {model_dir}")
    components: Dict[str, Optional[dict]] = {}
    for name, value in pipeline.components.items():
        if value is None:
            components[name] = None
            continue
        # A model goes to {prefix}.tensors, anything else to save_pretrained.
        entry = {"library": _library_of(value), "class": type(value).__name__}
        if isinstance(value, torch.nn.Module):
            entry["prefix"] = _prefix_for(name)
            _serialize_module(value.eval(), value.config, output, entry["prefix"], args.force)
        elif callable(getattr(value, "save_pretrained", None)):
            entry["subfolder"] = name
            files = value.save_pretrained(output / name)
            print(f"  {name}: {entry['class']} -> {_names(files, output) or name + '/'}")
        else:
            raise InputError(f"cannot save component {name!r} ({entry['class']})")
        components[name] = entry
    index = {
        "pipeline": type(pipeline).__name__,
        "components": components,
        "config": _pipeline_extras(pipeline),
    }
    (output / PIPELINE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    print(f"  index: {PIPELINE_INDEX}")
    return pipeline


def _resolve_class(library: str, name: str):
    if library not in _LIBRARIES or not isinstance(name, str) or not name.isidentifier():
        raise InputError(f"{PIPELINE_INDEX}: cannot load class {library}.{name}")
    cls = getattr(importlib.import_module(library), name, None)
    if not isinstance(cls, type):
        raise InputError(f"{PIPELINE_INDEX}: {library} has no class {name}")
    return cls


def _load_pipeline(output: Path, device):
    """Rebuild a pipeline from what _serialize_diffusers wrote."""
    import diffusers

    path = output / PIPELINE_INDEX
    try:
        index = json.loads(path.read_text())
        pipeline_cls = _resolve_class("diffusers", index["pipeline"])
        places = {}
        for name, entry in index["components"].items():
            if entry is not None:
                place = ("prefix", entry["prefix"]) if "prefix" in entry else (
                    "subfolder", entry["subfolder"])
                places[name] = (_resolve_class(entry["library"], entry["class"]), *place)
            else:
                places[name] = None
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise InputError(f"{path}: not a pipeline index written by this tool ({e!r})") from None
    components = {}
    for name, place in places.items():
        if place is None:
            components[name] = None
        elif place[1] == "prefix":
            components[name] = _reload(output, place[0], place[2], device)
        else:
            components[name] = place[0].from_pretrained(output / place[2])
    accepted = inspect.signature(pipeline_cls.__init__).parameters
    extras = {k: v for k, v in index.get("config", {}).items() if k in accepted}
    pipeline = pipeline_cls(**components, **extras).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _pipeline_call(pipeline, device):
    import torch

    params = inspect.signature(pipeline.__call__).parameters
    kwargs: Dict[str, Any] = {"generator": torch.Generator(device).manual_seed(0)}
    if "prompt" in params:
        kwargs["prompt"] = SAMPLE_TEXT
    if "num_inference_steps" in params:
        kwargs["num_inference_steps"] = 2
    if "output_type" in params:
        kwargs["output_type"] = "np"
    with torch.no_grad():
        result = pipeline(**kwargs)
    images = getattr(result, "images", result)
    return images[0] if isinstance(images, tuple) else images


def _validate_diffusers(args, model_dir: Path, output: Path, opened=None) -> None:
    import numpy as np
    import torch

    original = opened or _open_pipeline(model_dir, args.dtype)
    loaded = _load_pipeline(output, args.device)
    for name, value in original.components.items():
        if isinstance(value, torch.nn.Module):
            _compare_weights(name, value, loaded.components[name])
    original.to(args.device)
    for value in original.components.values():
        if isinstance(value, torch.nn.Module):
            _into_own_memory(value)
    try:
        want = _pipeline_call(original, args.device)
    except Exception as e:  # pipelines that need more than a prompt
        print(f"  outputs: not compared ({type(e).__name__}: {e})")
        return
    got = _pipeline_call(loaded, args.device)
    want_a = np.asarray(want.cpu() if isinstance(want, torch.Tensor) else want)
    got_a = np.asarray(got.cpu() if isinstance(got, torch.Tensor) else got)
    if want_a.shape != got_a.shape or not np.array_equal(want_a, got_a):
        raise ValidationError("pipeline outputs differ from the original's")
    print(f"  outputs: pipeline image {want_a.shape} identical (2 steps, seed 0)")


# --------------------------------------------------------------------------
# shared
# --------------------------------------------------------------------------


def _names(files, output: Path) -> str:
    names = []
    for f in files or ():
        path = Path(f)
        names.append(str(path.relative_to(output)) if path.is_relative_to(output) else path.name)
    return ", ".join(sorted(set(names)))


def _serialize_module(module, config, output: Path, prefix: str, force: bool) -> None:
    from ._model_io import serialize_model

    tensors = output / f"{prefix}.tensors"
    config_file = output / f"{prefix}-config.json"
    if not force and tensors.is_file() and tensors.stat().st_size and config_file.is_file():
        print(f"  {prefix}: kept the existing {tensors.name} (--force overwrites it)")
        return
    begin = time.perf_counter()
    serialize_model(module, config, output, prefix, force=True)
    elapsed = time.perf_counter() - begin
    print(
        f"  {prefix}: wrote {_rate(_tensors_size(output, prefix), elapsed)}"
        f" -> {tensors.name}, {config_file.name}"
    )


def _reload(output: Path, cls, prefix: str, device):
    from ._model_io import load_model

    begin = time.perf_counter()
    model = load_model(output, cls, None, prefix, device=device).eval()
    elapsed = time.perf_counter() - begin
    print(f"  {prefix}: loaded {_rate(_tensors_size(output, prefix), elapsed)} onto {device}")
    return model


def _into_own_memory(module) -> None:
    # from_pretrained maps safetensors files, leaving weights at addresses
    # only 4-byte aligned; CPU kernels can round differently there than on
    # the aligned memory a loaded (or freshly built) model has, which would
    # make identical weights give outputs that differ in the last bit.
    import torch

    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.data = tensor.data.clone()


def _compare_weights(label: str, original, loaded) -> None:
    import torch

    want, got = original.state_dict(), loaded.state_dict()
    missing = sorted(set(want) - set(got))
    if missing:
        raise ValidationError(f"{label}: tensors missing after reload: {', '.join(missing[:5])}")
    for name, tensor in want.items():
        other = got[name]
        if other.dtype != tensor.dtype or other.shape != tensor.shape:
            raise ValidationError(
                f"{label}: {name} is {other.dtype} {tuple(other.shape)},"
                f" expected {tensor.dtype} {tuple(tensor.shape)}"
            )
        if not torch.equal(other.cpu(), tensor.cpu()):
            raise ValidationError(f"{label}: {name} differs from the original")
    print(f"  {label}: {len(want)} tensors identical")


def _parse_dtype(value: str):
    import torch

    dtype = getattr(torch, value.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise argparse.ArgumentTypeError(f"unknown dtype {value!r} (e.g. float16, bfloat16)")
    return dtype


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tensorizer",
        description="Serialize Hugging Face models and diffusers pipelines with tensorizer.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serialize = commands.add_parser(
        "serialize",
        help="write the files load_model reads, then validate them",
        description="Write MODEL_DIR's model (or each pipeline component) as"
        " {prefix}-config.json + {prefix}.tensors in OUTPUT_DIR, save its"
        " tokenizer and scheduler, then reload and compare with the original.",
    )
    validate = commands.add_parser(
        "validate",
        help="reload OUTPUT_DIR and compare it with MODEL_DIR",
        description="Reload what serialize wrote to OUTPUT_DIR and compare"
        " weights and outputs with the original in MODEL_DIR.",
    )
    for sub in (serialize, validate):
        sub.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
        sub.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
        sub.add_argument(
            "--model-type",
            "--model_type",
            dest="model_type",
            choices=("auto", "transformers", "diffusers"),
            default="auto",
            help="default: diffusers if MODEL_DIR has model_index.json, else transformers",
        )
        sub.add_argument(
            "--dtype",
            type=_parse_dtype,
            help="load the original in this dtype (float16, bfloat16, ...)",
        )
        sub.add_argument(
            "--device", help="device to validate on (default: the GPU if there is one)"
        )
    serialize.add_argument(
        "--force", action="store_true", help="overwrite existing .tensors files"
    )
    serialize.add_argument(
        "--validate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload and compare after writing (default: yes)",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.model_dir.is_dir():
        # Local files only: never reach for the hub behind the user's back.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from . import utils

    if args.device is None:
        args.device = str(utils.get_device())
    try:
        kind = _detect_kind(args.model_dir, args.model_type)
        serialize, validate = {
            "transformers": (_serialize_transformers, _validate_transformers),
            "diffusers": (_serialize_diffusers, _validate_diffusers),
        }[kind]
        opened = None
        if args.command == "serialize":
            begin = time.perf_counter()
            args.output_dir.mkdir(parents=True, exist_ok=True)
            opened = serialize(args, args.model_dir, args.output_dir)
            print(f"serialized to {args.output_dir} in {time.perf_counter() - begin:.2f} s")
            if not args.validate:
                return 0
        print(f"validating {args.output_dir} against {args.model_dir}")
        begin = time.perf_counter()
        validate(args, args.model_dir, args.output_dir, opened)
        print(f"validated in {time.perf_counter() - begin:.2f} s: OK")
        return 0
    except ValidationError as e:
        print(f"validation failed: {e}", file=sys.stderr)
        return 1
    except (InputError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
