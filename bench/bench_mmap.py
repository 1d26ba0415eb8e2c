"""Mapped loads (``TensorDeserializer(mmap=True)``) beside normal loads of
the same file, warm (in the page cache) and cold (evicted with
``posix_fadvise(DONTNEED)``, this file only, so other work on the machine
keeps its cache).

A mapped load's constructor only maps the file and checks the headers; the
cost comes when the tensors are first used. So each row times the
constructor ("load"), then one read of every page of every tensor ("first
touch", on one thread, as a forward pass would read the weights), and
reports the anonymous memory the process gained (``RssAnon``), which a
mapped load keeps to its copied tensors. Files: the model of
``bench_load.model_layout`` (fp16 weights, fp32 norms) as our default writer
writes it (tensorizer's unaligned layout: about half the fp16 tensors and
most fp32 ones are copied) and with ``align=64`` (nothing copied). Each run
is a fresh process (``_child`` mode); before it the memory is warmed
(``pread_limit --prefault-mib`` when built) and the file warmed or evicted.
The best of ``--reps`` counts.

Usage: python bench/bench_mmap.py [--size-gib 1.0] [--reps 3]
       [--out-dir /var/tmp/tensorizer-bench-mmap] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import _common
import bench_load
from _common import MIB, prefault_memory, report_to_parent

DEFAULT_OUT = Path("/var/tmp/tensorizer-bench-mmap")


# --------------------------------------------------------------------------
# Child side.


def child_build(out_dir: str, size_gib: float) -> dict:
    import torch

    from tensorizer import TensorSerializer

    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for name, shape, dtype in bench_load.model_layout(size_gib):
        values = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(0.02)
        state_dict[name] = values.to(getattr(torch, dtype))
    for name, align in (("model.tensors", None), ("model-aligned.tensors", 64)):
        serializer = TensorSerializer(str(Path(out_dir) / name), align=align)
        serializer.write_state_dict(state_dict)
        serializer.close()
    return {"tensors": len(state_dict), "model_bytes": sum(t.nbytes for t in state_dict.values())}


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def child_load(path: str, mmap: str) -> dict:
    import torch

    import tensorizer
    from tensorizer import TensorDeserializer

    gc.collect()
    before = rss_anon()
    start = time.perf_counter()
    deserializer = TensorDeserializer(path, device="cpu", mmap=mmap == "1")
    loaded = time.perf_counter()
    tensors = list(deserializer.values())
    total = 0
    for t in tensors:
        total += int(t.detach().reshape(-1).view(torch.uint8)[::4096].sum())
    touched = time.perf_counter()
    return {
        "load_s": loaded - start,
        "touch_s": touched - loaded,
        "bytes": sum(t.nbytes for t in tensors),
        "rss_anon": rss_anon() - before,
        "mmap_stats": deserializer.mmap_stats,
        "version": _common.package_version("tensorizer", tensorizer),
        "checksum": total,
    }


def child_main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "build":
        result = child_build(args[0], float(args[1]))
    elif kind == "load":
        result = child_load(*args)
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    report_to_parent(result)


# --------------------------------------------------------------------------
# Parent side.


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    python = sys.executable
    args.out_dir.mkdir(parents=True, exist_ok=True)
    built = _common.run_child(__file__, python, "build", str(args.out_dir), str(args.size_gib))
    print(f"model: {built['tensors']} tensors, {built['model_bytes'] / 1e9:.2f} GB", flush=True)
    rows = []
    for cache in ("warm", "cold"):
        for file_name in ("model.tensors", "model-aligned.tensors"):
            path = args.out_dir / file_name
            for mmap in ("0", "1"):
                results = []
                for _ in range(args.reps):
                    prefault_memory(_common.PREAD_LIMIT, built["model_bytes"])
                    (_common.warm if cache == "warm" else evict)(path)
                    results.append(_common.run_child(__file__, python, "load", str(path), mmap))
                best = min(results, key=lambda r: r["load_s"] + r["touch_s"])
                row = {"cache": cache, "file": file_name, "mmap": mmap == "1", **best}
                rows.append(row)
                stats = best["mmap_stats"]
                copied = (
                    f", {stats['copied']} tensors ({stats['copied_bytes'] / MIB:.0f} MiB) copied"
                    if stats
                    else ""
                )
                gb = best["bytes"] / 1e9
                print(
                    f"  {cache:4} {file_name:22} {'mmap  ' if mmap == '1' else 'normal'}"
                    f"  load {best['load_s'] * 1e3:8.1f} ms"
                    f"  first touch {best['touch_s'] * 1e3:8.1f} ms"
                    f"  together {gb / (best['load_s'] + best['touch_s']):6.2f} GB/s"
                    f"  RssAnon +{best['rss_anon'] / MIB:6.0f} MiB{copied}",
                    flush=True,
                )
    machine = _common.machine_basics()
    print(
        f"machine: {machine['usable_cores']} usable cores, kernel {machine['kernel']};"
        f" tensorizer {rows[0]['version']}, commit {_common.git_head(mark_dirty=True)};"
        f" files on {args.out_dir}; best of {args.reps}; GB = 10^9 bytes"
    )
    if args.json:
        _common.write_json(
            args.json,
            {"machine": machine, "model": built, "reps": args.reps, "rows": rows},
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
    else:
        sys.exit(main())
