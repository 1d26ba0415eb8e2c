#!/usr/bin/env python3
"""HTTP load benchmark: a ~1.1 GiB .tensors file served by nginx on loopback.

Run with the system python3 (where our ``tensorizer`` is installed):

    python3 bench/bench_http.py                     # best of 3
    python3 bench/bench_http.py --reps 5 --json bench/out/http.json

What it does:

1. Reuses ``bench/out/model.ours.tensors`` and ``model.ref.tensors`` (written
   by ``bench/bench_load.py``, which also builds ``bench/out/pread_limit``);
   when either is missing, writes a seeded-random ~1.1 GiB state dict with our
   ``TensorSerializer`` (and with the reference 2.12.1 in ``.venv-ref``) into
   ``bench/out/http/``.
2. Starts nginx (sendfile on, keepalive) on a free loopback port serving the
   directory holding the files; stops it at the end, also on error.
3. Times, page-cache warm and memory-warm (``pread_limit --prefault-mib``
   before each run, when the binary exists), each run in a fresh child
   process, best of ``--reps``:
   - ours: ``TensorDeserializer(url, device="cpu", num_readers=R)`` for each
     R in ``--readers`` (default 1, 2, 4); the best R is "ours";
   - the reference 2.12.1: ``TensorDeserializer(url, device="cpu")`` (it
     streams through the ``curl`` binary);
   - the link's limit: R parallel ``curl`` range GETs of the whole file to
     /dev/null, R being ours' best reader count (the file split into R
     ranges, timed as a whole), and a single ``curl`` stream.
4. Prints GB/s (1e9 bytes/s of tensor payload; the curl rows move the whole
   file but are rated on the same payload, as bench_load.py rates its limit),
   ratios to the limit and to the reference, and the targets of issue 3
   (>= 0.9x the limit, >= 3x the reference) marked PASS/FAIL.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import _common
from _common import (
    CURL,
    DEFAULT_REF_PYTHON,
    GIB,
    OUT,
    PREAD_LIMIT,
    Row,
    curl_ranges,
    env_without_pythonpath,
    fmt,
    judge_targets,
    machine_basics,
    measure,
    package_version,
    prefault_memory,
    print_targets,
    ratio,
    report_to_parent,
    tool_version,
    warm,
    write_json,
)

HTTP_OUT = OUT / "http"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

VS_LIMIT = 0.9
VS_REFERENCE = 3.0


# --------------------------------------------------------------------------
# Child side: each runs in a fresh process and prints one JSON line.


def child_load(url: str, num_readers: str) -> dict:
    import torch  # noqa: F401  (imported outside the timing)

    import tensorizer
    from tensorizer import TensorDeserializer

    kwargs = {} if num_readers == "default" else {"num_readers": int(num_readers)}
    gc.collect()
    start = time.perf_counter()
    deserializer = TensorDeserializer(url, device="cpu", **kwargs)
    end = time.perf_counter()
    tensors = list(deserializer.values())
    return {
        "seconds": end - start,
        "bytes": sum(t.nbytes for t in tensors),
        "tensors": len(tensors),
        "version": package_version("tensorizer", tensorizer),
        "module": tensorizer.__file__,
    }


def child_write(dest: str, size_gib: str) -> dict:
    """Writes a seeded-random fp16 state dict of about size_gib GiB."""
    import torch

    import tensorizer
    from tensorizer import TensorSerializer

    g = torch.Generator().manual_seed(0)
    target = int(float(size_gib) * GIB)
    state_dict, total, i = {}, 0, 0
    while total < target:
        t = torch.randn(2816, 1024, generator=g).mul_(0.02).to(torch.float16)
        state_dict[f"layers.{i}.weight"] = t
        state_dict[f"layers.{i}.norm"] = torch.ones(1024)
        total += t.nbytes + 4096
        i += 1
    s = TensorSerializer(dest)
    s.write_state_dict(state_dict)
    s.close()
    return {"bytes": total, "version": getattr(tensorizer, "__version__", "?")}


def child_main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "load":
        result = child_load(args[0], args[1])
    elif kind == "write":
        result = child_write(args[0], args[1])
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    report_to_parent(result)


# --------------------------------------------------------------------------
# Parent side.


def run_child(python: str, *args: str) -> dict:
    # Keep a PYTHONPATH to our package off the reference's path.
    env = None if python == sys.executable else env_without_pythonpath()
    return _common.run_child(__file__, python, *args, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx on a free loopback port serving `served` (as in tests/test_http.py)."""

    def __init__(self, served: Path, workers: int):
        self.root = HTTP_OUT / "nginx"
        self.served = served
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Nginx:
        if not os.path.exists(NGINX):
            raise SystemExit("nginx is not installed (apt-get install nginx-light)")
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        root = self.root
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            textwrap.dedent(
                f"""\
                daemon off;
                master_process on;
                worker_processes {self.workers};
                {user}
                pid {root}/nginx.pid;
                error_log {root}/error.log warn;
                events {{ worker_connections 256; }}
                http {{
                    access_log off;
                    client_body_temp_path {root}/client_body;
                    proxy_temp_path {root}/proxy;
                    fastcgi_temp_path {root}/fastcgi;
                    uwsgi_temp_path {root}/uwsgi;
                    scgi_temp_path {root}/scgi;
                    sendfile on;
                    sendfile_max_chunk 0;
                    tcp_nopush on;
                    tcp_nodelay on;
                    keepalive_timeout 65;
                    keepalive_requests 10000;
                    default_type application/octet-stream;
                    server {{
                        listen 127.0.0.1:{self.port};
                        root {self.served};
                    }}
                }}
                """
            )
        )
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {err}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not listen on port {self.port}")
            time.sleep(0.02)
        return self

    def url(self, path: Path) -> str:
        return f"http://127.0.0.1:{self.port}/{path.relative_to(self.served)}"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--readers", default="1,2,4", help="our num_readers values")
    parser.add_argument("--ref-python", default=str(DEFAULT_REF_PYTHON))
    parser.add_argument("--skip-ref", action="store_true")
    parser.add_argument("--size-gib", type=float, default=1.1, help="when writing files")
    parser.add_argument("--nginx-workers", type=int, default=max(2, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    started = time.monotonic()
    if not os.path.exists(CURL):
        raise SystemExit("curl is not installed (the reference and the limit need it)")
    readers = [int(r) for r in args.readers.split(",")]
    run_ref = not args.skip_ref and Path(args.ref_python).exists()

    ours_file, ref_file = OUT / "model.ours.tensors", OUT / "model.ref.tensors"
    served = OUT
    if not ours_file.exists() or (run_ref and not ref_file.exists()):
        HTTP_OUT.mkdir(parents=True, exist_ok=True)
        served = HTTP_OUT
        ours_file, ref_file = HTTP_OUT / "model.ours.tensors", HTTP_OUT / "model.ref.tensors"
        if not ours_file.exists():
            print(f"writing {ours_file} with our TensorSerializer...", flush=True)
            run_child(sys.executable, "write", str(ours_file), str(args.size_gib))
        if run_ref and not ref_file.exists():
            print(f"writing {ref_file} with the reference...", flush=True)
            run_child(args.ref_python, "write", str(ref_file), str(args.size_gib))
    HTTP_OUT.mkdir(parents=True, exist_ok=True)
    file_bytes = ours_file.stat().st_size

    def warm_memory():
        prefault_memory(PREAD_LIMIT, file_bytes)

    rows: list[Row] = []
    with Nginx(served, args.nginx_workers) as server:
        ours_url, ref_url = server.url(ours_file), server.url(ref_file)
        print(f"nginx on 127.0.0.1:{server.port} serving {served}", flush=True)
        warm(ours_file)
        print("ours:", flush=True)
        for r in readers:
            row = Row(f"ours_r{r}", f"ours TensorDeserializer(url, num_readers={r})")
            rows.append(row)

            def before(path=ours_file):
                warm(path)
                warm_memory()

            measure(
                row,
                args.reps,
                lambda r=r: run_child(sys.executable, "load", ours_url, str(r)),
                before,
            )
        payload = next((r.detail["bytes"] for r in rows if "bytes" in r.detail), file_bytes)
        ours_rows = [r for r in rows if r.seconds]
        best_ours = min(ours_rows, key=lambda r: r.best()) if ours_rows else None
        streams = int(best_ours.key.split("_r")[1]) if best_ours else max(readers)

        ref_row = None
        if run_ref:
            print("reference:", flush=True)
            warm(ref_file)
            ref_row = Row("ref", 'reference 2.12.1 TensorDeserializer(url, device="cpu")')
            rows.append(ref_row)
            measure(
                ref_row,
                args.reps,
                lambda: run_child(args.ref_python, "load", ref_url, "default"),
                lambda: (warm(ref_file), warm_memory()),
            )

        print("limit:", flush=True)
        warm(ours_file)
        limit_row = Row("limit", f"limit: {streams} parallel curl range GETs -> /dev/null")
        rows.append(limit_row)
        measure(limit_row, args.reps, lambda: curl_ranges(ours_url, file_bytes, streams))
        single_row = Row("curl_1", "single curl stream -> /dev/null")
        rows.append(single_row)
        measure(single_row, args.reps, lambda: curl_ranges(ours_url, file_bytes, 1))
        # Again after the loads, keeping the best, so a busy moment alone
        # does not lower the limit.
        measure(limit_row, args.reps, lambda: curl_ranges(ours_url, file_bytes, streams))
        nginx_version = tool_version([NGINX, "-v"])

    limit_gbps = limit_row.gbps(payload)
    ref_gbps = ref_row.gbps(payload) if ref_row else None

    print()
    print(
        f"file: {ours_file.name} {file_bytes} bytes ({file_bytes / GIB:.2f} GiB), "
        f"payload {payload} bytes; served from {served}"
    )
    versions = {
        "ours": best_ours.detail.get("version") if best_ours else None,
        "reference": ref_row.detail.get("version") if ref_row else None,
        "nginx": nginx_version,
        "curl": " ".join(tool_version([CURL, "--version"]).split()[:2]),
        "python": platform.python_version(),
    }
    machine = {**machine_basics(), "loadavg_1m": os.getloadavg()[0]}
    print(f"versions: {versions}")
    print(
        f"machine: {machine}; best of {args.reps}, each load in a fresh process, "
        "page cache warm" + (", memory warm" if PREAD_LIMIT.exists() else "")
    )
    print()
    print(f"{'row':<60} {'best s':>8} {'GB/s':>7} {'x limit':>8} {'x ref':>7}")
    for row in rows:
        if row.error and not row.seconds:
            print(f"{row.label:<60} ERROR {row.error}")
            continue
        g = row.gbps(payload)
        mark = "  <- ours" if row is best_ours else ""
        print(
            f"{row.label:<60} {row.best():>8.3f} {g:>7.2f} "
            f"{fmt(ratio(g, limit_gbps)):>8} {fmt(ratio(g, ref_gbps)):>7}{mark}"
        )
    ours_gbps = best_ours.gbps(payload) if best_ours else None
    targets = judge_targets(
        (
            (f"ours >= {VS_LIMIT}x the limit", ours_gbps, limit_gbps, VS_LIMIT),
            (f"ours >= {VS_REFERENCE}x the reference", ours_gbps, ref_gbps, VS_REFERENCE),
        )
    )
    print_targets(targets)
    elapsed = time.monotonic() - started
    print(f"elapsed: {elapsed:.0f} s")
    if args.json:
        meta = {
            "file": str(ours_file),
            "file_bytes": file_bytes,
            "payload_bytes": payload,
            "versions": versions,
            "machine": machine,
            "reps": args.reps,
            "limit_streams": streams,
            "elapsed_s": elapsed,
        }
        rows_json = [r.as_json(payload) for r in rows]
        write_json(args.json, {"meta": meta, "rows": rows_json, "targets": targets})
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
