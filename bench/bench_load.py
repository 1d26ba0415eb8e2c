#!/usr/bin/env python3
"""Side-by-side CPU load and save benchmark, with the machine's own limit.

Run with the system python3 (where our ``tensorizer`` is installed):

    python3 bench/bench_load.py                 # ~1.1 GiB model, best of 3
    python3 bench/bench_load.py --skip-ours     # until our package exists
    python3 bench/bench_load.py --size-gib 4 --json bench/out/result.json

What it does:

1. Builds (or reuses, in ``bench/out/``) a model-like state dict of a few
   hundred seeded-random fp16/fp32 tensors with the shapes of a small
   Llama-style transformer, sized to ``--size-gib``, and writes it as a
   safetensors file and a ``torch.save`` file. The ``.tensors`` files come
   from the save benchmarks: our ``TensorSerializer`` (system python) and the
   reference tensorizer 2.12.1 (``.venv-ref``), each in a child process that
   loads the state dict into ordinary memory first and then times
   ``TensorSerializer(path); write_state_dict(sd); close()``. Nothing fsyncs;
   the write limit (``pread_limit --write``) does not either.
2. Reads every file once so the page cache is warm (and re-reads each just
   before its row), then times loads into CPU torch tensors, best of
   ``--reps``, each repetition in a fresh child process so its peak RSS is its
   own. Import time is outside the timing; the child's RSS just before the
   load is its baseline (python + torch).
3. Prints a table with GB/s (1e9 bytes/s of tensor payload), the ratio to the
   machine's limit (``pread_limit``: parallel pread of the file into a fresh
   huge-page arena, arena faulting included) and to the reference, then the
   project's targets marked PASS/FAIL.

Children are this same script (``_child`` mode) run by the interpreter whose
``tensorizer`` is meant: the reference venv has system site-packages, but its
own site-packages come first, so there ``import tensorizer`` is 2.12.1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common
from _common import (
    BENCH_DIR,
    CHILD_TIMEOUT_S,
    DEFAULT_REF_PYTHON,
    GIB,
    MIB,
    OUT,
    ChildError,
    dist_version,
    git_head,
    package_version,
    prefault_memory,
    report_to_parent,
    warm,
    write_json,
)

LIMIT_SOURCE = BENCH_DIR / "pread_limit.cc"

PAGE_BYTES = 4096
# Bump when the generated model changes, so cached files are rebuilt.
LAYOUT_VERSION = 1

# Targets (see the task brief / DESIGN.md).
LOAD_VS_LIMIT = 0.85
LOAD_VS_REFERENCE = 5.0
VERIFY_LOAD_VS_LIMIT = 0.6
SAVE_VS_REFERENCE = 3.0
RSS_SLACK_FRACTION = 0.10
RSS_SLACK_BYTES = 100 * MIB


# --------------------------------------------------------------------------
# Child side: each function runs in a fresh process and prints one JSON line.


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """The process's peak RSS: VmHWM of its own address space. Not
    getrusage().ru_maxrss: Linux carries the pre-exec address space's peak
    into it, so a child spawned by this (large) parent would report the
    parent's RSS as its floor."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _touch_pages(tensors) -> int:
    """Force every page of every tensor in, cheaply: one byte per 4 KiB page
    (a strided uint8 sum) plus the last byte, which the stride can miss."""
    import torch

    total = 0
    for t in tensors:
        if t.numel() == 0:
            continue
        flat = t.reshape(-1).view(torch.uint8)
        total += int(flat[::PAGE_BYTES].sum()) + int(flat[-1])
    return total


def _load_result(start: float, end: float, tensors, base_rss: int, **extra):
    return {
        "seconds": end - start,
        "bytes": sum(t.nbytes for t in tensors),
        "tensors": len(tensors),
        "base_rss": base_rss,
        "peak_rss": _peak_rss_bytes(),
        **extra,
    }


def child_encrypt_tensorizer(source: str, dest: str, key_path: str) -> dict:
    """Re-serializes `source` encrypted with a random key (saved to key_path)."""
    from tensorizer import EncryptionParams, TensorDeserializer, TensorSerializer

    params = EncryptionParams.random()
    Path(key_path).write_bytes(params.key)
    tensors = TensorDeserializer(source, device="cpu")
    serializer = TensorSerializer(dest, encryption=params)
    serializer.write_state_dict({name: t.detach() for name, t in tensors.items()})
    serializer.close()
    return {"bytes": Path(dest).stat().st_size}


def child_load_tensorizer(path: str, verify_hash, key_path: str | None = None) -> dict:
    import torch  # noqa: F401  (imported outside the timing)

    import tensorizer
    from tensorizer import TensorDeserializer

    gc.collect()
    base_rss = _rss_now_bytes()
    encryption = None
    if key_path is not None:
        from tensorizer import DecryptionParams

        encryption = DecryptionParams.from_key(Path(key_path).read_bytes())
    start = time.perf_counter()
    deserializer = TensorDeserializer(
        path, device="cpu", verify_hash=verify_hash, encryption=encryption
    )
    end = time.perf_counter()
    tensors = list(deserializer.values())
    return _load_result(
        start,
        end,
        tensors,
        base_rss,
        module=tensorizer.__file__,
        version=getattr(tensorizer, "__version__", "?"),
    )


def child_load_safetensors(path: str, backend: str) -> dict:
    import safetensors.torch

    kwargs = {} if backend == "default" else {"backend": backend}
    gc.collect()
    base_rss = _rss_now_bytes()
    start = time.perf_counter()
    state_dict = safetensors.torch.load_file(path, device="cpu", **kwargs)
    # The default (mmap) backend hands back tensors on a private file mapping
    # that pages in on first use; touch them so the row includes page-in.
    _touch_pages(state_dict.values())
    end = time.perf_counter()
    return _load_result(start, end, list(state_dict.values()), base_rss)


def child_load_torch_mmap(path: str) -> dict:
    import torch

    gc.collect()
    base_rss = _rss_now_bytes()
    start = time.perf_counter()
    state_dict = torch.load(path, mmap=True, weights_only=True)
    _touch_pages(state_dict.values())
    end = time.perf_counter()
    return _load_result(start, end, list(state_dict.values()), base_rss)


def child_save_tensorizer(source: str, order_path: str, dest: str, reps: int) -> dict:
    import safetensors.torch

    import tensorizer
    from tensorizer import TensorSerializer

    loaded = safetensors.torch.load_file(source, device="cpu")
    order = json.loads(Path(order_path).read_text())["keys"]
    # clone(): the tensors a save starts from sit in ordinary, resident memory,
    # not on a file mapping that would page in during the timed save.
    state_dict = {key: loaded[key].clone() for key in order}
    del loaded
    gc.collect()
    times = []
    for _ in range(reps):
        if os.path.exists(dest):
            os.unlink(dest)  # untimed: as in pread_limit --write
        start = time.perf_counter()
        serializer = TensorSerializer(dest)
        serializer.write_state_dict(state_dict)
        serializer.close()
        times.append(time.perf_counter() - start)
    return {
        "seconds": min(times),
        "all_seconds": times,
        "bytes": sum(t.nbytes for t in state_dict.values()),
        "tensors": len(state_dict),
        "module": tensorizer.__file__,
        "version": getattr(tensorizer, "__version__", "?"),
    }


def child_versions() -> dict:
    import tensorizer

    return {"version": package_version("tensorizer", tensorizer), "module": tensorizer.__file__}


def child_main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "load-tensorizer":
        verify = {"eager": False, "verify": True, "verify-all": "all"}[args[1]]
        key_path = args[2] if len(args) > 2 else None
        result = child_load_tensorizer(args[0], verify_hash=verify, key_path=key_path)
    elif kind == "encrypt-tensorizer":
        result = child_encrypt_tensorizer(args[0], args[1], args[2])
    elif kind == "load-safetensors":
        result = child_load_safetensors(args[0], args[1])
    elif kind == "load-torch-mmap":
        result = child_load_torch_mmap(args[0])
    elif kind == "save-tensorizer":
        result = child_save_tensorizer(args[0], args[1], args[2], int(args[3]))
    elif kind == "versions":
        result = child_versions()
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    report_to_parent(result)


# --------------------------------------------------------------------------
# Parent side.


def run_child(python: str, *args: str) -> dict:
    return _common.run_child(__file__, python, *args)


def model_layout(size_gib: float) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of a small Llama-style decoder (hidden 1024,
    grouped-query attention with 4 KV heads, MLP 2816, vocab 32000) with as
    many layers as it takes to reach at least size_gib: fp16 weights, fp32
    norms, so the file holds large and tiny tensors of both dtypes."""
    hidden, kv, ffn, vocab = 1024, 256, 2816, 32000
    head = [("model.embed_tokens.weight", (vocab, hidden), "float16")]
    tail = [
        ("model.norm.weight", (hidden,), "float32"),
        ("lm_head.weight", (vocab, hidden), "float16"),
    ]
    per_layer = [
        ("input_layernorm.weight", (hidden,), "float32"),
        ("self_attn.q_proj.weight", (hidden, hidden), "float16"),
        ("self_attn.q_proj.bias", (hidden,), "float16"),
        ("self_attn.k_proj.weight", (kv, hidden), "float16"),
        ("self_attn.k_proj.bias", (kv,), "float16"),
        ("self_attn.v_proj.weight", (kv, hidden), "float16"),
        ("self_attn.v_proj.bias", (kv,), "float16"),
        ("self_attn.o_proj.weight", (hidden, hidden), "float16"),
        ("post_attention_layernorm.weight", (hidden,), "float32"),
        ("mlp.gate_proj.weight", (ffn, hidden), "float16"),
        ("mlp.up_proj.weight", (ffn, hidden), "float16"),
        ("mlp.down_proj.weight", (hidden, ffn), "float16"),
    ]

    def nbytes(entries):
        total = 0
        for _, shape, dtype in entries:
            count = 1
            for dim in shape:
                count *= dim
            total += count * (2 if dtype == "float16" else 4)
        return total

    target = int(size_gib * GIB)
    fixed, layer = nbytes(head + tail), nbytes(per_layer)
    layers = max(1, -(-(target - fixed) // layer))
    body = [
        (f"model.layers.{i}.{name}", shape, dtype)
        for i in range(layers)
        for name, shape, dtype in per_layer
    ]
    return head + body + tail


class FileSet:
    """The benchmark's files in the cache directory."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.manifest = out_dir / "model.json"
        self.safetensors = out_dir / "model.safetensors"
        self.torch = out_dir / "model.pt"
        self.ours = out_dir / "model.ours.tensors"
        self.reference = out_dir / "model.ref.tensors"
        self.encrypted = out_dir / "model.ours.encrypted.tensors"
        self.key = out_dir / "model.key"
        self.write_scratch = out_dir / "write-limit.tmp"
        self.limit_binary = out_dir / "pread_limit"


def build_model_files(files: FileSet, size_gib: float, seed: int, force: bool) -> dict:
    """Writes the safetensors and torch.save files unless a matching set is
    cached; returns the manifest."""
    layout = model_layout(size_gib)
    wanted = {
        "layout_version": LAYOUT_VERSION,
        "size_gib": size_gib,
        "seed": seed,
        "keys": [name for name, _, _ in layout],
    }
    if not force and files.manifest.exists():
        try:
            cached = json.loads(files.manifest.read_text())
        except ValueError:
            cached = {}
        if (
            all(cached.get(k) == v for k, v in wanted.items())
            and files.safetensors.exists()
            and files.torch.exists()
        ):
            print(f"reusing cached model files in {files.out_dir}", flush=True)
            return cached

    import safetensors.torch
    import torch

    print(f"generating model ({len(layout)} tensors, seed {seed})...", flush=True)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, shape, dtype in layout:
        values = torch.randn(shape, generator=generator, dtype=torch.float32)
        values = values.mul_(0.05).add_(1.0) if name.endswith("norm.weight") else values.mul_(0.02)
        state_dict[name] = values.to(getattr(torch, dtype))
    model_bytes = sum(t.nbytes for t in state_dict.values())
    files.manifest.unlink(missing_ok=True)
    safetensors.torch.save_file(state_dict, str(files.safetensors))
    torch.save(state_dict, str(files.torch))
    for stale in (files.ours, files.reference):
        stale.unlink(missing_ok=True)
    manifest = {
        **wanted,
        "model_bytes": model_bytes,
        "tensors": len(state_dict),
        "dtypes": sorted({str(t.dtype) for t in state_dict.values()}),
    }
    files.manifest.write_text(json.dumps(manifest))
    del state_dict
    gc.collect()
    return manifest


def ensure_limit_binary(files: FileSet) -> Path:
    binary = files.limit_binary
    if not binary.exists() or binary.stat().st_mtime < LIMIT_SOURCE.stat().st_mtime:
        compiler = os.environ.get("CXX", "c++")
        print(f"compiling {LIMIT_SOURCE.name} with {compiler}...", flush=True)
        subprocess.run(
            [
                compiler,
                "-O2",
                "-std=c++17",
                "-pthread",
                "-o",
                str(binary),
                str(LIMIT_SOURCE),
            ],
            check=True,
        )
    return binary


def run_limit(binary: Path, *args: str) -> dict:
    proc = subprocess.run(
        [str(binary), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise ChildError(proc.stderr.strip()[-200:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resident_fraction(path: Path) -> float | None:
    if not shutil.which("fincore"):
        return None
    proc = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)],
        check=False,
        capture_output=True,
        text=True,
    )
    try:
        resident, size = (int(x) for x in proc.stdout.split())
        return resident / size if size else None
    except ValueError:
        return None


def storage_of(path: Path) -> str:
    try:
        proc = subprocess.run(
            ["df", "--output=source,fstype,target", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        source, fstype, target = proc.stdout.strip().splitlines()[-1].split(None, 2)
        return f"{source} ({fstype}) mounted on {target}"
    except (subprocess.CalledProcessError, ValueError, OSError):
        return "unknown"


def machine_facts() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        thp_line = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        thp = thp_line.split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        thp = "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_bytes": mem,
        "thp": thp,
        "kernel": platform.release(),
        # Other work on the machine skews every row; say how busy it was.
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
    }


def safetensors_has_pread_backend() -> bool:
    """safetensors 0.8 added load_file(backend="pread"), a copying load that
    is the closest like-for-like to an eager tensorizer load."""
    import inspect

    import safetensors.torch

    return "backend" in inspect.signature(safetensors.torch.load_file).parameters


class Row:
    def __init__(self, key: str, label: str, group: str):
        self.key, self.label, self.group = key, label, group
        self.seconds: list[float] = []
        self.bytes: int | None = None
        self.gbps: float | None = None
        self.peak_rss: int | None = None
        self.base_rss: int | None = None
        self.error: str | None = None
        self.detail: dict = {}

    def add(self, result: dict) -> None:
        # A save child times all its repetitions itself and sends them all.
        self.seconds.extend(result.get("all_seconds", [result["seconds"]]))
        self.bytes = result["bytes"]
        best = min(self.seconds)
        self.gbps = self.bytes / best / 1e9
        # The best repetition's peak RSS is not special; report the worst.
        if "peak_rss" in result and (self.peak_rss is None or result["peak_rss"] > self.peak_rss):
            self.peak_rss = result["peak_rss"]
            self.base_rss = result["base_rss"]
        for key in ("module", "version", "threads", "thp", "tensors", "file_bytes"):
            if key in result:
                self.detail[key] = result[key]

    @property
    def median_gbps(self) -> float | None:
        if not self.seconds or self.bytes is None:
            return None
        return self.bytes / statistics.median(self.seconds) / 1e9

    @property
    def rss_growth(self) -> int | None:
        if self.peak_rss is None or self.base_rss is None:
            return None
        return self.peak_rss - self.base_rss

    def as_json(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "group": self.group,
            "gbps": self.gbps,
            "median_gbps": self.median_gbps,
            "best_seconds": min(self.seconds) if self.seconds else None,
            "seconds": self.seconds,
            "bytes": self.bytes,
            "peak_rss": self.peak_rss,
            "base_rss": self.base_rss,
            "rss_growth": self.rss_growth,
            "error": self.error,
            **self.detail,
        }


def measure(row: Row, reps: int, fn, payload_bytes: int | None = None) -> None:
    """Runs fn reps times into row. payload_bytes: for the limit rows, which
    move a whole file: the row is expressed in the model's payload bytes over
    the time the file took, the same unit as the loaders' rows."""
    for _ in range(reps):
        try:
            result = fn()
            if payload_bytes is not None:
                result["file_bytes"] = result["bytes"]
                result["bytes"] = payload_bytes
            row.add(result)
        except (ChildError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
            row.error = str(exc)
            print(f"  {row.label}: ERROR {exc}", flush=True)
            return
    print(f"  {row.label}: {row.gbps:.2f} GB/s", flush=True)


def check_model_bytes(row: Row, model_bytes: int) -> None:
    if row.error is None and row.bytes is not None and row.bytes != model_bytes:
        row.error = f"loaded {row.bytes} bytes, model has {model_bytes}"


def fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:,.0f} MiB"


def fmt_ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def print_report(meta: dict, rows: list[Row], targets: list[dict]) -> None:
    by_key = {row.key: row for row in rows}
    limits = {"load": by_key.get("limit_read"), "save": by_key.get("limit_write")}
    refs = {"load": by_key.get("ref_load"), "save": by_key.get("ref_save")}
    m = meta["machine"]
    print()
    print("=" * 100)
    print(
        f"model: {meta['model']['tensors']} tensors ({', '.join(meta['model']['dtypes'])}), "
        f"{meta['model']['bytes'] / 1e9:.3f} GB payload "
        f"({meta['model']['bytes'] / GIB:.3f} GiB); "
        f".tensors file {meta['model']['file_bytes'] / GIB:.3f} GiB"
    )
    print(
        f"machine: {m['usable_cores']} cores ({m['cpu']}), "
        f"{m['memory_bytes'] / GIB:.1f} GiB RAM, THP {m['thp']}, "
        f"kernel {m['kernel']}, load average {m['loadavg_1m']:.2f} at start"
    )
    print(f"storage: {meta['storage']}; page-cache warm ({meta['residency']})")
    v = meta["versions"]
    print(
        f"versions: python {m['python']}, torch {v['torch']}, "
        f"safetensors {v['safetensors']}, reference tensorizer {v['reference']}, "
        f"ours {v['ours']}"
    )
    print(
        f"method: GB/s = 1e9 bytes of tensor payload per second, best of "
        f"{meta['reps']} (save: best of {meta['save_reps']}); each load in a "
        f"fresh process, after a helper touched and freed 2x the model's memory "
        f"(memory-warm, see pread_limit.cc); no fsync anywhere;\n  read limit: "
        f"best of {meta['limit_reps']} fresh processes, measured before and after "
        f"the loads (median over all); write limit: best of {meta['limit_reps']} "
        f"runs, before and after the saves"
    )
    header = (
        f"{'':56s}{'GB/s':>8s}{'median':>8s}{'x limit':>9s}{'x ref':>8s}"
        f"{'peak RSS':>12s}{'RSS growth':>12s}"
    )
    for group in ("load", "save"):
        if not any(r.group == group for r in rows):
            continue
        print()
        direction = "into" if group == "load" else "from"
        print(f"{group.upper()} ({direction} CPU torch tensors)")
        print(header)
        limit, ref = limits[group], refs[group]
        for row in (r for r in rows if r.group == group):
            if row.error:
                print(f"  {row.label:54s}  ERROR: {row.error}")
                continue
            print(
                f"  {row.label:54s}{row.gbps:8.2f}{row.median_gbps:8.2f}"
                f"{fmt_ratio(row.gbps, limit.gbps if limit else None):>9s}"
                f"{fmt_ratio(row.gbps, ref.gbps if ref and not ref.error else None):>8s}"
                f"{fmt_bytes(row.peak_rss):>12s}{fmt_bytes(row.rss_growth):>12s}"
            )
    print()
    print(
        "notes: +touch = every page of every tensor read once (strided uint8 sum,\n"
        "  one byte per 4 KiB page, plus the last byte), inside the timing. The mmap\n"
        "  rows map the page cache instead of copying into process memory, so they\n"
        "  can beat the limit, which copies. RSS growth = peak RSS (VmHWM) minus the\n"
        "  child's RSS after importing torch; the RSS target is judged on it."
    )
    print()
    print("TARGETS")
    for target in targets:
        print(f"  {target['name']:46s}{target['detail']:40s}{target['verdict']}")
    print("=" * 100)


def evaluate_targets(rows: list[Row], model_bytes: int) -> list[dict]:
    by_key = {row.key: row for row in rows}

    def ok(key):
        row = by_key.get(key)
        return row if row is not None and row.error is None and row.gbps else None

    def ratio_target(name, key, base_key, factor):
        row, base = by_key.get(key), ok(base_key)
        if row is None:
            return {
                "name": name,
                "detail": "not measured",
                "verdict": "n/a",
                "pass": None,
            }
        if row.error is not None:
            return {"name": name, "detail": "error", "verdict": "FAIL", "pass": False}
        if base is None:
            # A skipped baseline (--skip-ref) leaves the target unjudged; a
            # failed one too, since its failure says nothing about ours.
            return {
                "name": name,
                "detail": f"no {base_key} to compare with",
                "verdict": "n/a",
                "pass": None,
            }
        need = factor * base.gbps
        passed = row.gbps >= need
        return {
            "name": name,
            "detail": f"{row.gbps:.2f} GB/s vs {need:.2f} needed ({row.gbps / base.gbps:.2f}x)",
            "verdict": "PASS" if passed else "FAIL",
            "pass": passed,
        }

    targets = [
        ratio_target(f"load >= {LOAD_VS_LIMIT}x limit", "ours_load", "limit_read", LOAD_VS_LIMIT),
        ratio_target(
            f"load >= {LOAD_VS_REFERENCE:g}x reference",
            "ours_load",
            "ref_load",
            LOAD_VS_REFERENCE,
        ),
        ratio_target(
            f"verify_hash load >= {VERIFY_LOAD_VS_LIMIT}x limit",
            "ours_verify",
            "limit_read",
            VERIFY_LOAD_VS_LIMIT,
        ),
        ratio_target(
            'verify_hash="all" load >= 1x reference verify_hash=True (same checks)',
            "ours_verify_all",
            "ref_verify",
            1.0,
        ),
        ratio_target(
            "encrypted load >= 0.6x our unencrypted load",
            "ours_encrypted_load",
            "ours_load",
            0.6,
        ),
        ratio_target(
            "safetensors file: ours >= 1x safetensors.torch.load_file (+touch)",
            "ours_safetensors_load",
            "safetensors_load",
            1.0,
        ),
        ratio_target(
            f"save >= {SAVE_VS_REFERENCE:g}x reference",
            "ours_save",
            "ref_save",
            SAVE_VS_REFERENCE,
        ),
    ]
    bound = int(model_bytes * (1 + RSS_SLACK_FRACTION)) + RSS_SLACK_BYTES
    name = "load RSS growth <= model + 10% + 100 MiB"
    row = by_key.get("ours_load")
    if row is None:
        targets.append({"name": name, "detail": "not measured", "verdict": "n/a", "pass": None})
    elif row.error is not None or row.rss_growth is None:
        targets.append({"name": name, "detail": "error", "verdict": "FAIL", "pass": False})
    else:
        passed = row.rss_growth <= bound
        targets.append(
            {
                "name": name,
                "detail": f"{fmt_bytes(row.rss_growth)} vs {fmt_bytes(bound)} "
                f"(peak {fmt_bytes(row.peak_rss)})",
                "verdict": "PASS" if passed else "FAIL",
                "pass": passed,
            }
        )
    return targets


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.1, help="model size (default 1.1)")
    parser.add_argument("--reps", type=int, default=5, help="load repetitions (default 5)")
    parser.add_argument("--save-reps", type=int, default=3, help="save repetitions (default 3)")
    parser.add_argument(
        "--limit-reps",
        type=int,
        default=5,
        help="pread_limit repetitions per measurement (default 5)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT, help="cache directory")
    parser.add_argument("--rebuild", action="store_true", help="regenerate the model files")
    parser.add_argument("--skip-ours", action="store_true", help="no rows for our package")
    parser.add_argument("--skip-ref", action="store_true", help="no rows for the reference")
    parser.add_argument(
        "--skip-save", action="store_true", help="no save rows (reuse cached .tensors)"
    )
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument("--ref-python", default=str(DEFAULT_REF_PYTHON))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    started = time.monotonic()
    machine = machine_facts()
    files = FileSet(args.out_dir.resolve())
    files.out_dir.mkdir(parents=True, exist_ok=True)
    limit_binary = ensure_limit_binary(files)
    manifest = build_model_files(files, args.size_gib, args.seed, args.rebuild)
    model_bytes = manifest["model_bytes"]

    versions = {
        "torch": dist_version("torch") or "not installed",
        "safetensors": dist_version("safetensors") or "not installed",
        "reference": "skipped",
        "ours": "skipped",
    }
    if not args.skip_ref:
        try:
            info = run_child(args.ref_python, "versions")
            versions["reference"] = info["version"]
            if ".venv-ref" not in info["module"]:
                print(f"warning: reference resolves to {info['module']}", flush=True)
        except ChildError as exc:
            versions["reference"] = f"unavailable ({exc})"
    if not args.skip_ours:
        try:
            info = run_child(args.ours_python, "versions")
            commit = git_head(mark_dirty=True) or "no commit"
            versions["ours"] = f"{info['version']} ({info['module']}, repo {commit})"
        except ChildError as exc:
            versions["ours"] = f"unavailable ({exc})"

    rows: list[Row] = []
    order = str(files.manifest)

    # Saves first: they (re)write the .tensors files the loads then read.
    # With --skip-save a missing file is still written once, untimed.
    save_jobs = []
    if not args.skip_ours:
        save_jobs.append(
            (
                "ours_save",
                "ours TensorSerializer.write_state_dict",
                args.ours_python,
                files.ours,
            )
        )
    if not args.skip_ref:
        save_jobs.append(
            (
                "ref_save",
                "reference 2.12.1 write_state_dict",
                args.ref_python,
                files.reference,
            )
        )

    # Each limit is measured before and after the rows it bounds and the best
    # kept, so a burst of other work on the machine does not lower it alone.
    def write_limit():
        return run_limit(
            limit_binary,
            "--write",
            str(files.write_scratch),
            "--reps",
            str(args.limit_reps),
            str(files.safetensors),
        )

    # Untimed syncs around the saves: the writeback of earlier files (the
    # model just generated, the saves' output) would otherwise run during
    # later rows and throttle or slow them.
    os.sync()
    if not args.skip_save:
        print("save:", flush=True)
        row = Row("limit_write", "limit: pread_limit --write (pwrite 8 MiB, no fsync)", "save")
        rows.append(row)
        write_limit_row = row
        measure(row, 1, write_limit, payload_bytes=model_bytes)
    for key, label, python, dest in save_jobs:
        if args.skip_save and dest.exists():
            continue
        row = Row(key, label, "save")
        reps = 1 if args.skip_save else args.save_reps
        measure(
            row,
            1,
            lambda python=python, dest=dest, reps=reps: run_child(
                python,
                "save-tensorizer",
                str(files.safetensors),
                order,
                str(dest),
                str(reps),
            ),
        )
        if not args.skip_save:
            rows.append(row)
    if not args.skip_save:
        measure(write_limit_row, 1, write_limit, payload_bytes=model_bytes)

    os.sync()
    load_files = [files.safetensors, files.torch]
    load_files += [p for p in (files.ours, files.reference) if p.exists()]
    print("warming the page cache...", flush=True)
    for path in load_files:
        warm(path)
    residency = []
    for path in load_files:
        fraction = resident_fraction(path)
        if fraction is not None:
            residency.append(f"{path.name} {fraction:.0%} resident")
    total_file_bytes = sum(p.stat().st_size for p in load_files)
    if total_file_bytes > 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"):
        print("warning: the files may not all fit in the page cache", flush=True)

    print("load:", flush=True)
    limit_file = next((p for p in (files.ours, files.reference) if p.exists()), files.safetensors)
    row = Row(
        "limit_read",
        f"limit: pread_limit ({os.cpu_count()} threads, huge-page arena)",
        "load",
    )
    rows.append(row)
    read_limit_row = row

    def warm_memory():
        # Every measured load (and the limit) starts with recently used
        # memory, not the VM's cold pages.
        prefault_memory(limit_binary, model_bytes, required=True)

    def read_limit():
        # Measured like the loaders: one fresh process per run.
        warm(limit_file)
        warm_memory()
        return run_limit(limit_binary, "--reps", "1", str(limit_file))

    measure(read_limit_row, args.limit_reps, read_limit, payload_bytes=model_bytes)

    load_jobs = []
    if not args.skip_ours and files.ours.exists():
        load_jobs += [
            (
                "ours_load",
                'ours TensorDeserializer(device="cpu")',
                args.ours_python,
                ["load-tensorizer", str(files.ours), "eager"],
                files.ours,
            ),
            (
                "ours_verify",
                "ours TensorDeserializer(..., verify_hash=True) [CRC32]",
                args.ours_python,
                ["load-tensorizer", str(files.ours), "verify"],
                files.ours,
            ),
            (
                "ours_verify_all",
                'ours TensorDeserializer(..., verify_hash="all") [CRC32+SHA-256]',
                args.ours_python,
                ["load-tensorizer", str(files.ours), "verify-all"],
                files.ours,
            ),
        ]
    elif not args.skip_ours:
        for key, label in (
            ("ours_load", 'ours TensorDeserializer(device="cpu")'),
            ("ours_verify", "ours TensorDeserializer(..., verify_hash=True) [CRC32]"),
        ):
            rows.append(Row(key, label, "load"))
            rows[-1].error = "no .tensors file (our save failed)"
    if not args.skip_ours and files.ours.exists():
        print("encrypting a copy of our file (random key)...", flush=True)
        run_child(
            args.ours_python,
            "encrypt-tensorizer",
            str(files.ours),
            str(files.encrypted),
            str(files.key),
        )
        load_jobs.append(
            (
                "ours_encrypted_load",
                "ours TensorDeserializer(encrypted copy, encryption=key)",
                args.ours_python,
                ["load-tensorizer", str(files.encrypted), "eager", str(files.key)],
                files.encrypted,
            )
        )
    if not args.skip_ours:
        load_jobs.append(
            (
                "ours_safetensors_load",
                'ours TensorDeserializer("model.safetensors", device="cpu")',
                args.ours_python,
                ["load-tensorizer", str(files.safetensors), "eager"],
                files.safetensors,
            )
        )
    if not args.skip_ref and files.reference.exists():
        load_jobs.append(
            (
                "ref_load",
                'reference 2.12.1 TensorDeserializer(device="cpu")',
                args.ref_python,
                ["load-tensorizer", str(files.reference), "eager"],
                files.reference,
            )
        )
        load_jobs.append(
            (
                "ref_verify",
                "reference 2.12.1 TensorDeserializer(..., verify_hash=True)",
                args.ref_python,
                ["load-tensorizer", str(files.reference), "verify"],
                files.reference,
            )
        )
    load_jobs += [
        (
            "safetensors_load",
            "safetensors.torch.load_file (mmap) +touch",
            sys.executable,
            ["load-safetensors", str(files.safetensors), "default"],
            files.safetensors,
        ),
    ]
    if safetensors_has_pread_backend():
        load_jobs.append(
            (
                "safetensors_pread_load",
                'safetensors.torch.load_file(backend="pread")',
                sys.executable,
                ["load-safetensors", str(files.safetensors), "pread"],
                files.safetensors,
            )
        )
    load_jobs += [
        (
            "torch_mmap_load",
            "torch.load(mmap=True, weights_only) +touch",
            sys.executable,
            ["load-torch-mmap", str(files.torch)],
            files.torch,
        ),
    ]
    for key, label, python, child_args, path in load_jobs:
        row = Row(key, label, "load")
        rows.append(row)
        warm(path)

        def run_load(python=python, child_args=child_args):
            warm_memory()
            return run_child(python, *child_args)

        measure(row, args.reps, run_load)
        check_model_bytes(row, model_bytes)
    measure(read_limit_row, args.limit_reps, read_limit, payload_bytes=model_bytes)

    targets = evaluate_targets(rows, model_bytes)
    meta = {
        "model": {
            "tensors": manifest["tensors"],
            "dtypes": manifest["dtypes"],
            "bytes": model_bytes,
            "file_bytes": limit_file.stat().st_size,
            "size_gib": args.size_gib,
            "seed": args.seed,
        },
        "machine": machine,
        "storage": f"{files.out_dir} on {storage_of(files.out_dir)}",
        "residency": ", ".join(residency) or "fincore unavailable",
        "versions": versions,
        "reps": args.reps,
        "save_reps": args.save_reps,
        "limit_reps": args.limit_reps,
        "touch": "strided uint8 sum, one byte per 4 KiB page plus the last byte",
        "elapsed_s": None,
    }
    print_report(meta, rows, targets)
    meta["elapsed_s"] = time.monotonic() - started
    print(f"elapsed: {meta['elapsed_s']:.0f} s")
    if args.json:
        rows_json = [r.as_json() for r in rows]
        write_json(args.json, {"meta": meta, "rows": rows_json, "targets": targets})
    return 0


if __name__ == "__main__":
    sys.exit(main())
