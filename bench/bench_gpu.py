"""GPU loads: this project vs tensorizer 2.12.1 vs safetensors vs torch.load,
beside the machine's limit.

For a model of ``--size-gib`` (default 4) in the page cache, each row loads it
into one GPU in a fresh child process (best of ``--reps``) and reports GB/s
and the peak host RSS above the child's RSS before the load:

- ``ours``: ``TensorDeserializer(path, device="cuda")`` (the staging ring);
- ``ours-http``: the same from nginx on loopback (when nginx is installed);
- ``ref``: tensorizer 2.12.1, ``plaid_mode=True`` (``--ref-site``: a
  directory holding it and its dependencies, put on the child's PYTHONPATH;
  without it the row says why it did not run);
- ``safetensors``: ``safetensors.torch.load_file(path, device="cuda")``;
- ``torch.load``: ``torch.load(path, map_location="cuda")``;
- ``limit``: the PCIe limit, one ``cudaMemcpyAsync`` (``Tensor.copy_``,
  non-blocking) of the same bytes from pinned host memory, in the same run.

Targets (issue 8): ours ≥ 0.85× the limit, ≥ 3× the reference, host RSS
growth ≤ the ring + 300 MiB. ``--json`` writes the results.

    python bench/bench_gpu.py --size-gib 4 --json bench/out/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    GIB,
    MIB,
    OUT,
    REPO,
    ChildError,
    env_without_pythonpath,
    report_to_parent,
    run_child,
    warm,
)

RSS_SLACK_BYTES = 300 * MIB


# --------------------------------------------------------------------------
# Child side.


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _begin() -> tuple[int, float]:
    import torch

    torch.cuda.init()
    torch.empty(1, device="cuda")  # the context exists before the clock starts
    torch.cuda.synchronize()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM restarts here
    return _status_bytes("VmRSS"), time.perf_counter()


def _end(base_rss: int, start: float, tensors, **extra) -> dict:
    import torch

    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "bytes": sum(t.numel() * t.element_size() for t in tensors),
        "rss_growth": _status_bytes("VmHWM") - base_rss,
        "on_gpu": all(t.device.type == "cuda" for t in tensors),
        **extra,
    }


def child_ours(uri: str) -> dict:
    from tensorizer import TensorDeserializer

    base, start = _begin()
    d = TensorDeserializer(uri, device="cuda")
    tensors = [d[k] for k in d]
    stats = d._staging_stats
    return _end(base, start, tensors, ring_bytes=stats[0] * stats[1] if stats else None)


def child_ref(path: str) -> dict:
    import tensorizer
    from tensorizer import TensorDeserializer

    base, start = _begin()
    d = TensorDeserializer(path, device="cuda", plaid_mode=True)
    tensors = [d[k] for k in d]
    return _end(base, start, tensors, version=tensorizer.__version__)


def child_safetensors(path: str) -> dict:
    import safetensors.torch

    base, start = _begin()
    tensors = list(safetensors.torch.load_file(path, device="cuda").values())
    return _end(base, start, tensors)


def child_torch_load(path: str) -> dict:
    import torch

    base, start = _begin()
    tensors = list(torch.load(path, map_location="cuda", weights_only=True).values())
    return _end(base, start, tensors)


def child_limit(nbytes: str) -> dict:
    import torch

    n = int(nbytes)
    src = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    src.fill_(1)
    dst = torch.empty(n, dtype=torch.uint8, device="cuda")
    best = None
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        s = time.perf_counter() - start
        best = s if best is None else min(best, s)
    return {"seconds": best, "bytes": n, "rss_growth": None, "on_gpu": True}


def child_main(argv: list[str]) -> None:
    fn = {
        "ours": child_ours,
        "ref": child_ref,
        "safetensors": child_safetensors,
        "torch.load": child_torch_load,
        "limit": child_limit,
    }[argv[0]]
    report_to_parent(fn(*argv[1:]))


# --------------------------------------------------------------------------
# Parent side.


def build_model(out: Path, size_gib: float) -> dict:
    """A transformer-shaped state dict of about size_gib (bf16 matrices,
    fp32 norms), written as .tensors, .safetensors and .pt."""
    import torch

    from tensorizer import TensorSerializer

    paths = {k: out / f"model-{size_gib:g}g.{k}" for k in ("tensors", "safetensors", "pt")}
    if all(p.exists() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    hidden, layer_bytes = 4096, 4 * 4096 * 4096 * 2 + 3 * 4096 * 11008 * 2
    layers = max(1, int(size_gib * GIB // layer_bytes))
    g = torch.Generator(device="cuda").manual_seed(0)
    sd = {}
    for i in range(layers):
        for name, shape in (
            ("q", (hidden, hidden)),
            ("k", (hidden, hidden)),
            ("v", (hidden, hidden)),
            ("o", (hidden, hidden)),
            ("up", (11008, hidden)),
            ("gate", (11008, hidden)),
            ("down", (hidden, 11008)),
        ):
            t = torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)
            sd[f"layers.{i}.{name}.weight"] = t.cpu()
        sd[f"layers.{i}.norm.weight"] = torch.ones(hidden)
    s = TensorSerializer(str(paths["tensors"]))
    s.write_state_dict(sd)
    s.close()
    try:
        import safetensors.torch

        safetensors.torch.save_file(sd, str(paths["safetensors"]))
    except ImportError:
        paths.pop("safetensors")
    torch.save(sd, str(paths["pt"]))
    return paths


def gbps(r: dict) -> float:
    return r["bytes"] / r["seconds"] / 1e9


def best_of(reps: int, python: str, *args: str, env=None, warm_path: Path | None = None) -> dict:
    best = None
    for _ in range(reps):
        if warm_path is not None:
            warm(warm_path)
        r = run_child(__file__, python, *args, env=env)
        if best is None or r["seconds"] < best["seconds"]:
            best = r
    return best


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out-dir", type=Path, default=OUT / "gpu")
    ap.add_argument("--ref-site", type=Path, help="directory with tensorizer 2.12.1 and its deps")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    paths = build_model(args.out_dir, args.size_gib)
    nbytes = None
    rows: dict[str, dict] = {}
    py = sys.executable
    env = env_without_pythonpath()

    def row(key: str, fn) -> None:
        try:
            rows[key] = fn()
        except ChildError as exc:
            rows[key] = {"error": str(exc)}
        print(f"  {key}: {rows[key]}", flush=True)

    tensors_path = paths["tensors"]
    row("ours", lambda: best_of(args.reps, py, "ours", str(tensors_path), env=env,
                                warm_path=tensors_path))
    nbytes = rows["ours"].get("bytes") or os.path.getsize(tensors_path)
    row("limit", lambda: run_child(__file__, py, "limit", str(nbytes), env=env))
    if args.ref_site is not None:
        ref_env = dict(env, PYTHONPATH=str(args.ref_site.resolve()))
        row("ref", lambda: best_of(args.reps, py, "ref", str(tensors_path), env=ref_env,
                                   warm_path=tensors_path))
    else:
        rows["ref"] = {"error": "no --ref-site given"}
    if "safetensors" in paths:
        row("safetensors", lambda: best_of(args.reps, py, "safetensors",
                                           str(paths["safetensors"]), env=env,
                                           warm_path=paths["safetensors"]))
    row("torch.load", lambda: best_of(args.reps, py, "torch.load", str(paths["pt"]), env=env,
                                      warm_path=paths["pt"]))
    if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):
        sys.path.insert(0, str(REPO / "tests"))
        from nginx_server import run_nginx

        root = args.out_dir / "nginx"
        (root / "www").mkdir(parents=True, exist_ok=True)
        link = root / "www" / tensors_path.name
        if not link.exists():
            os.link(tensors_path, link)
        with run_nginx(root) as port:
            url = f"http://127.0.0.1:{port}/{tensors_path.name}"
            row("ours-http", lambda: best_of(args.reps, py, "ours", url, env=env,
                                             warm_path=tensors_path))
    else:
        rows["ours-http"] = {"error": "nginx is not installed"}

    print()
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
          f"model {nbytes / GIB:.2f} GiB ({tensors_path}), page cache warm")
    print(f"{'row':<12} {'GB/s':>8} {'x limit':>8} {'RSS growth MiB':>15}")
    limit = gbps(rows["limit"]) if "seconds" in rows["limit"] else None
    for key, r in rows.items():
        if "seconds" not in r:
            print(f"{key:<12} {'-':>8} {'-':>8} {'-':>15}  ({r['error']})")
            continue
        ratio = f"{gbps(r) / limit:.2f}" if limit else "-"
        rss = "-" if r.get("rss_growth") is None else f"{r['rss_growth'] / MIB:.0f}"
        print(f"{key:<12} {gbps(r):>8.2f} {ratio:>8} {rss:>15}")
    ours = rows["ours"]
    checks = []
    if "seconds" in ours and limit:
        checks.append(("ours >= 0.85x limit", gbps(ours) >= 0.85 * limit))
    if "seconds" in ours and "seconds" in rows["ref"]:
        checks.append(("ours >= 3x ref", gbps(ours) >= 3 * gbps(rows["ref"])))
    if "seconds" in ours and ours.get("ring_bytes"):
        checks.append(
            ("RSS growth <= ring + 300 MiB", ours["rss_growth"] <= ours["ring_bytes"] + RSS_SLACK_BYTES)
        )
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "checks": dict(checks)}, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
