"""Cold-cache loads of a local file: our direct and buffered paths beside
tensorizer 2.12.1, safetensors and the device's own limit (issue 10).

Before every measured run the page cache is dropped (``echo 3 >
/proc/sys/vm/drop_caches``, so this needs root) and the memory is warmed
(``pread_limit --prefault-mib``: this VM backs guest memory the first time it
is touched, at ~0.1 GB/s, which would otherwise decide every row). Each run
is a fresh process; the best of ``--reps`` counts. Rows:

- ours ``direct_io=True`` / ``False`` / ``None`` (auto): ``TensorDeserializer``
  eager CPU load, timed around the constructor (it loads every tensor),
  with the bytes read each way from ``read_stats``;
- tensorizer 2.12.1 (its own venv) on the same file, also eager;
- safetensors ``load_file`` of the same tensors, every page touched;
- the limit: ``pread_limit --direct``, parallel 16 MiB ``O_DIRECT`` preads of
  the file into a fresh huge-page arena, with as many threads as our load
  has workers (so the same number of requests in flight); and the same
  with buffered preads.

Then the warm check: the file read once into the page cache, ours auto and
ours buffered, which must be no slower than before.

Usage (root): python bench/bench_cold.py [--size-gib 1.6] [--reps 2]
              [--threads 2,4] [--out-dir /var/tmp/tensorizer-bench-cold]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common
import bench_load
from _common import DEFAULT_REF_PYTHON, GIB, MIB, ChildError, prefault_memory, report_to_parent

LAYOUT_VERSION = 1
DEFAULT_OUT = Path("/var/tmp/tensorizer-bench-cold")


# --------------------------------------------------------------------------
# Child side.


def child_build(out_dir: str, size_gib: float, seed: int) -> dict:
    """Writes model.safetensors and model.tensors (ours) of the same tensors."""
    import safetensors.torch
    import torch

    from tensorizer import TensorSerializer

    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, shape, dtype in bench_load.model_layout(size_gib):
        values = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(0.02)
        state_dict[name] = values.to(getattr(torch, dtype))
    out = Path(out_dir)
    safetensors.torch.save_file(state_dict, str(out / "model.safetensors"))
    serializer = TensorSerializer(str(out / "model.tensors"))
    serializer.write_state_dict(state_dict)
    serializer.close()
    return {"tensors": len(state_dict), "model_bytes": sum(t.nbytes for t in state_dict.values())}


def child_load(path: str, direct_io: str, threads: str) -> dict:
    import torch  # noqa: F401  (imported outside the timing)

    import tensorizer
    from tensorizer import TensorDeserializer

    kwargs = {}
    if direct_io != "ref":
        kwargs["direct_io"] = {"on": True, "off": False, "auto": None}[direct_io]
    if threads != "default":
        kwargs["num_readers"] = int(threads)
    gc.collect()
    start = time.perf_counter()
    deserializer = TensorDeserializer(path, device="cpu", **kwargs)
    seconds = time.perf_counter() - start
    stats = getattr(deserializer, "read_stats", None) if direct_io != "ref" else None
    return {
        "seconds": seconds,
        "bytes": sum(t.nbytes for t in deserializer.values()),
        "read_stats": stats,
        "num_readers": getattr(deserializer, "_num_threads", None),
        "version": _common.package_version("tensorizer", tensorizer),
    }


def child_main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "build":
        result = child_build(args[0], float(args[1]), int(args[2]))
    elif kind == "load":
        result = child_load(*args)
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    report_to_parent(result)


# --------------------------------------------------------------------------
# Parent side.


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def filesystem_type(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def block_device_facts(path: Path) -> str:
    """The queue settings of the disk under `path` (what O_DIRECT meets)."""
    dev = os.stat(path).st_dev
    sys_dir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    queue = sys_dir / "queue"
    if not queue.exists():
        queue = sys_dir.resolve().parent / "queue"
    facts = []
    for name in ("logical_block_size", "max_sectors_kb", "nr_requests", "rotational"):
        try:
            facts.append(f"{name}={(queue / name).read_text().strip()}")
        except OSError:
            pass
    return f"{sys_dir.resolve().name}: " + (", ".join(facts) or "no queue facts")


def build_files(out_dir: Path, size_gib: float, seed: int, python: str, force: bool) -> dict:
    manifest_path = out_dir / "model.json"
    wanted = {"layout_version": LAYOUT_VERSION, "size_gib": size_gib, "seed": seed}
    files = [out_dir / "model.safetensors", out_dir / "model.tensors"]
    if not force and manifest_path.exists() and all(f.exists() for f in files):
        cached = json.loads(manifest_path.read_text())
        if all(cached.get(k) == v for k, v in wanted.items()):
            print(f"reusing the model files in {out_dir}", flush=True)
            return cached
    print(f"writing a {size_gib} GiB model to {out_dir} ...", flush=True)
    built = _common.run_child(
        __file__, python, "build", str(out_dir), str(size_gib), str(seed)
    )
    manifest = {**wanted, **built}
    manifest_path.write_text(json.dumps(manifest))
    return manifest


class Rows:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, key: str, label: str, results: list[dict], nbytes: int, note: str = ""):
        best = min(results, key=lambda r: r["seconds"])
        self.rows.append(
            {
                "key": key,
                "label": label,
                "gbps": nbytes / best["seconds"] / 1e9,
                "seconds": [r["seconds"] for r in results],
                "note": note,
                "best": best,
            }
        )
        print(f"  {label}: {nbytes / best['seconds'] / 1e9:.2f} GB/s {note}", flush=True)

    def gbps(self, key: str) -> float | None:
        return next((r["gbps"] for r in self.rows if r["key"] == key), None)


def stats_note(result: dict) -> str:
    stats = result.get("read_stats")
    if not stats:
        return ""
    return (
        f"[{stats['mode']}: {stats['direct_bytes'] / 1e9:.2f} GB direct"
        f" ({stats['in_place_bytes'] / 1e9:.2f} GB in place),"
        f" {stats['buffered_bytes'] / 1e9:.2f} GB buffered;"
        f" {result['num_readers']} workers]"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.6)
    parser.add_argument("--reps", type=int, default=2, help="runs per row, best kept (default 2)")
    parser.add_argument(
        "--threads",
        default="2,4",
        help="worker counts for our direct load and the limit (default 2,4)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument("--ref-python", default=str(DEFAULT_REF_PYTHON))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_cold.py drops the page cache before every run: run it as root")
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fstype = filesystem_type(args.out_dir)
    if fstype in ("tmpfs", "ramfs"):
        print(f"{args.out_dir} is on {fstype}: a cold load needs a disk (--out-dir)")
        return 2
    thread_counts = [int(t) for t in args.threads.split(",")]

    manifest = build_files(args.out_dir, args.size_gib, args.seed, args.ours_python, args.rebuild)
    tensors_file = args.out_dir / "model.tensors"
    st_file = args.out_dir / "model.safetensors"
    file_bytes = tensors_file.stat().st_size
    files = bench_load.FileSet(args.out_dir)
    limit_binary = bench_load.ensure_limit_binary(files)
    default_workers = len(os.sched_getaffinity(0))

    def cold(fn):
        results = []
        for _ in range(args.reps):
            drop_caches()
            prefault_memory(limit_binary, file_bytes, required=True)
            results.append(fn())
        return results

    def ours(mode, threads="default", python=args.ours_python):
        return _common.run_child(
            __file__, python, "load", str(tensors_file), mode, str(threads),
            env=_common.env_without_pythonpath() if mode == "ref" else None,
        )

    def limit(threads, direct=True):
        flags = ["--direct"] if direct else []
        return bench_load.run_limit(
            limit_binary, *flags, "--reps", "1", "--chunk-mib", "16", str(tensors_file),
            str(threads),
        )

    rows = Rows()
    print(f"cold runs (page cache dropped, memory warmed), best of {args.reps}:", flush=True)
    for t in thread_counts:
        rows.add(f"limit_direct_{t}", f"limit: O_DIRECT preads, {t} threads x 16 MiB",
                 cold(lambda t=t: limit(t)), file_bytes)
    rows.add(f"limit_buffered_{default_workers}",
             f"limit: buffered preads, {default_workers} threads x 16 MiB",
             cold(lambda: limit(default_workers, direct=False)), file_bytes)
    for t in thread_counts:
        res = cold(lambda t=t: ours("on", t))
        rows.add(f"ours_direct_{t}", f"ours direct_io=True, {t} workers", res, file_bytes,
                 stats_note(min(res, key=lambda r: r["seconds"])))
    res = cold(lambda: ours("auto"))
    rows.add("ours_auto", "ours direct_io=None (auto), default workers", res, file_bytes,
             stats_note(min(res, key=lambda r: r["seconds"])))
    res = cold(lambda: ours("off"))
    rows.add("ours_buffered", "ours direct_io=False, default workers", res, file_bytes,
             stats_note(min(res, key=lambda r: r["seconds"])))
    try:
        res = cold(lambda: ours("ref", python=args.ref_python))
        rows.add("ref", f"tensorizer {res[0]['version']}", res, file_bytes)
    except ChildError as exc:
        print(f"  reference unavailable: {exc}")
    st_results = cold(lambda: bench_load.run_child(
        args.ours_python, "load-safetensors", str(st_file), "default"))
    rows.add("safetensors", "safetensors load_file (pages touched)", st_results,
             st_file.stat().st_size)

    print(f"warm runs (file in the page cache, memory warmed), best of {args.reps}:", flush=True)
    warm_rows = Rows()

    def warm(fn):
        results = []
        for _ in range(args.reps):
            _common.warm(tensors_file)
            prefault_memory(limit_binary, file_bytes, required=True)
            results.append(fn())
        return results

    res = warm(lambda: ours("auto"))
    warm_rows.add("warm_auto", "ours direct_io=None (auto)", res, file_bytes,
                  stats_note(min(res, key=lambda r: r["seconds"])))
    res = warm(lambda: ours("off"))
    warm_rows.add("warm_buffered", "ours direct_io=False", res, file_bytes,
                  stats_note(min(res, key=lambda r: r["seconds"])))
    warm_rows.add("warm_limit", f"limit: buffered preads, {default_workers} threads",
                  warm(lambda: limit(default_workers, direct=False)), file_bytes)

    facts = bench_load.machine_facts()
    print()
    print(f"file:    {tensors_file}: {file_bytes} bytes, {manifest['tensors']} tensors"
          f" (fp16 and fp32); safetensors copy {st_file.stat().st_size} bytes")
    print(f"storage: {bench_load.storage_of(tensors_file)}, {fstype};"
          f" {block_device_facts(tensors_file)}")
    print(f"machine: {facts['usable_cores']} cores ({facts['cpu']}),"
          f" {facts['memory_bytes'] / GIB:.0f} GiB, kernel {facts['kernel']}, THP {facts['thp']},"
          f" load average {facts['loadavg_1m']:.2f}")
    print("method:  page cache dropped and memory prefaulted before every run (this VM backs"
          " fresh guest memory at ~0.1 GB/s on first touch); GB/s = file bytes / seconds")
    print()
    best_limit = max(v for k, v in ((r["key"], r["gbps"]) for r in rows.rows)
                     if k.startswith("limit_direct"))
    print(f"{'cold':<58} {'GB/s':>6} {'÷ best direct limit':>20}")
    for r in rows.rows:
        print(f"{r['label']:<58} {r['gbps']:6.2f} {r['gbps'] / best_limit:20.2f}  {r['note']}")
    ref = rows.gbps("ref")
    for t in thread_counts:
        ours_t, lim_t = rows.gbps(f"ours_direct_{t}"), rows.gbps(f"limit_direct_{t}")
        line = f"ours direct, {t} workers: {ours_t / lim_t:.2f} of the O_DIRECT limit at {t} threads"
        if ref:
            line += f", {ours_t / ref:.2f}x tensorizer 2.12.1"
        print(line)
    print()
    print(f"{'warm':<58} {'GB/s':>6}")
    for r in warm_rows.rows:
        print(f"{r['label']:<58} {r['gbps']:6.2f}  {r['note']}")
    if args.json:
        args.json.write_text(json.dumps(
            {"facts": facts, "file_bytes": file_bytes, "cold": rows.rows, "warm": warm_rows.rows},
            indent=1, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
    else:
        sys.exit(main())
