#!/usr/bin/env python3
"""S3 load and upload benchmark: a ~1.1 GiB model on SeaweedFS over loopback.

Run with the system python3 (where our ``tensorizer`` is installed, with
boto3 and the ``weed`` binary from requirements-test.txt):

    python3 bench/bench_s3.py                       # best of 3, ~10 min on 2 cores
    python3 bench/bench_s3.py --quick               # 64 MiB, one repetition, < 1 min
    python3 bench/bench_s3.py --json bench/out/s3.json

The run:ai peer is optional; without it its rows say "not installed":

    pip install -r bench/requirements.txt  # runai-model-streamer(-s3), pinned

What it does:

1. Reuses ``bench/out/model.ours.tensors`` and ``bench/out/model.safetensors``
   (written by ``bench/bench_load.py``: 567 fp16/fp32 tensors of a small
   Llama-style model) when both exist; otherwise (and always with
   ``--quick``) writes that model at ``--size-gib`` into ``bench/out/s3/``,
   as a .tensors file with our ``TensorSerializer`` and as a safetensors file.
2. Starts one SeaweedFS (``tests/s3_server.py``, imported by path: SigV4
   enforced, loopback only) and uploads both files into its private bucket
   with boto3. Stops it at the end, also on error.
3. Times, page-cache warm (the server's volume files are read before each
   run) and memory-warm (``pread_limit --prefault-mib``, as bench_http.py
   does, when the binary exists), each run in a fresh child process, best of
   ``--reps``:
   - the link's limit: N parallel ``curl --aws-sigv4`` range GETs of the
     .tensors object to /dev/null (the object split into N ranges, timed as
     a whole) for each N in ``--readers``; N=1 is a single curl stream. The
     limit is the best of them, measured before and after the loads;
   - ours: ``TensorDeserializer("s3://models/model.tensors", num_readers=N)``
     with credentials and endpoint from AWS_ACCESS_KEY_ID,
     AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL, for each N;
   - ours through ``stream_io.open_stream("s3://...", "rb", key, secret,
     endpoint, force_http=True)`` (default readers);
   - ours loading the safetensors object, ``TensorDeserializer(
     "s3://models/model.safetensors", num_readers=N)``, at ours' best N;
   - the reference tensorizer 2.12.1 (``.venv-ref``):
     ``TensorDeserializer(open_stream("s3://...", "rb", key, secret,
     endpoint, force_http=True))`` on the same .tensors object;
   - run:ai model streamer: ``SafetensorsStreamer().stream_file(
     "s3://models/model.safetensors")`` with RUNAI_STREAMER_OBJ_CONCURRENCY
     (and RUNAI_STREAMER_CONCURRENCY) = N, for each N, plus its defaults;
   - upload: ours ``TensorSerializer("s3://...").write_state_dict(sd)`` of
     the same state dict (in memory before the clock starts) against boto3
     ``upload_file`` of the same .tensors file with a TransferConfig of our
     writer's shape (16 MiB parts, 4 in flight; S3UploadOptions in
     include/tensorizer/write.h). Each upload goes to a fresh bucket that is
     deleted afterwards, so SeaweedFS frees its volumes.
4. Prints GB/s (1e9 bytes/s of tensor payload; rows that move whole files
   are rated on the same payload, as bench_load.py and bench_http.py do),
   ratios to the limit, the reference and run:ai, the CPU seconds the
   client processes and ``weed`` used during the best-of run set, the load
   average, and the targets marked PASS/FAIL: ours >= 0.9x the limit,
   >= 3x the reference, >= 1.0x run:ai; safetensors over S3 at the same
   fraction of the limit as .tensors (>= 0.9x); upload >= 0.8x raw boto3.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import resource
import signal
import sys
import time
from pathlib import Path

import _common
from _common import (
    CURL,
    DEFAULT_REF_PYTHON,
    GIB,
    MIB,
    OUT,
    PREAD_LIMIT,
    REPO,
    curl_ranges,
    dist_version,
    env_without_pythonpath,
    fmt,
    git_head,
    judge_targets,
    machine_basics,
    package_version,
    prefault_memory,
    print_targets,
    ratio,
    report_to_parent,
    tool_version,
    warm,
    write_json,
)

BENCH_DIR = Path(__file__).resolve().parent
S3_OUT = OUT / "s3"
S3_SERVER_PY = REPO / "tests" / "s3_server.py"
BENCH_LOAD_PY = BENCH_DIR / "bench_load.py"

# Our writer's S3UploadOptions (include/tensorizer/write.h).
PART_BYTES = 16 * MIB
PARTS_IN_FLIGHT = 4

VS_LIMIT = 0.9
VS_REFERENCE = 3.0
VS_RUNAI = 1.0
UPLOAD_VS_RAW = 0.8

TENSORS_KEY = "model.tensors"
SAFETENSORS_KEY = "model.safetensors"


def _import_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# Child side: each runs in a fresh process and prints one JSON line. S3
# credentials and the endpoint come in the environment (AWS_*).


def _cpu_s() -> float:
    """User+system CPU seconds of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _endpoint_host_port() -> str:
    return os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1]


def child_load(url: str, num_readers: str, via: str) -> dict:
    import torch  # noqa: F401  (imported outside the timing)

    import tensorizer
    from tensorizer import TensorDeserializer

    kwargs = {} if num_readers == "default" else {"num_readers": int(num_readers)}
    gc.collect()
    cpu0 = _cpu_s()
    start = time.perf_counter()
    if via == "stream":
        # The reference's only way to S3 with an explicit endpoint; ours
        # accepts the same call.
        from tensorizer.stream_io import open_stream

        stream = open_stream(
            url,
            "rb",
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            _endpoint_host_port(),
            force_http=True,
        )
        deserializer = TensorDeserializer(stream, device="cpu", **kwargs)
    else:
        deserializer = TensorDeserializer(url, device="cpu", **kwargs)
    end = time.perf_counter()
    cpu = _cpu_s() - cpu0
    tensors = list(deserializer.values())
    return {
        "seconds": end - start,
        "cpu_s": cpu,
        "bytes": sum(t.nbytes for t in tensors),
        "tensors": len(tensors),
        "version": package_version("tensorizer", tensorizer),
        "module": tensorizer.__file__,
    }


def child_load_runai(url: str, concurrency: str) -> dict:
    # Its documented settings for an S3-compatible store on loopback.
    os.environ["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] = "0"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")
    if concurrency != "default":
        os.environ["RUNAI_STREAMER_OBJ_CONCURRENCY"] = concurrency
        os.environ["RUNAI_STREAMER_CONCURRENCY"] = concurrency
    import runai_model_streamer
    import torch  # noqa: F401
    from runai_model_streamer import SafetensorsStreamer

    gc.collect()
    cpu0 = _cpu_s()
    start = time.perf_counter()
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(url)
        # owned=True (its default): each tensor is the caller's to keep.
        tensors = dict(streamer.get_tensors())
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "cpu_s": _cpu_s() - cpu0,
        "bytes": sum(t.nbytes for t in tensors.values()),
        "tensors": len(tensors),
        "version": package_version("runai-model-streamer", runai_model_streamer),
    }


def _read_state_dict(safetensors_path: str) -> dict:
    import safetensors.torch

    loaded = safetensors.torch.load_file(safetensors_path, device="cpu")
    # clone(): ordinary resident memory, not a file mapping that would page
    # in during the timed save.
    state_dict = {k: v.clone() for k, v in loaded.items()}
    del loaded
    gc.collect()
    return state_dict


def child_upload_ours(safetensors_path: str, order_path: str, url: str) -> dict:
    import tensorizer
    from tensorizer import TensorSerializer

    state_dict = _read_state_dict(safetensors_path)
    order = json.loads(Path(order_path).read_text())
    state_dict = {k: state_dict[k] for k in order}
    cpu0 = _cpu_s()
    start = time.perf_counter()
    serializer = TensorSerializer(url)
    serializer.write_state_dict(state_dict)
    serializer.close()
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "cpu_s": _cpu_s() - cpu0,
        "bytes": sum(t.nbytes for t in state_dict.values()),
        "version": package_version("tensorizer", tensorizer),
    }


def child_upload_boto3(path: str, bucket: str, key: str) -> dict:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=PARTS_IN_FLIGHT),
    )
    config = TransferConfig(
        multipart_threshold=PART_BYTES,
        multipart_chunksize=PART_BYTES,
        max_concurrency=PARTS_IN_FLIGHT,
        use_threads=True,
    )
    cpu0 = _cpu_s()
    start = time.perf_counter()
    client.upload_file(path, bucket, key, Config=config)
    end = time.perf_counter()
    return {"seconds": end - start, "cpu_s": _cpu_s() - cpu0, "version": boto3.__version__}


def child_make(size_gib: str, tensors_path: str, safetensors_path: str, order_path: str) -> dict:
    """Writes bench_load.py's model at size_gib as .tensors (ours) and
    safetensors, from one seeded state dict."""
    import safetensors.torch
    import torch

    from tensorizer import TensorSerializer

    bench_load = _import_by_path("bench_load", BENCH_LOAD_PY)
    layout = bench_load.model_layout(float(size_gib))
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for name, shape, dtype in layout:
        values = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(0.02)
        state_dict[name] = values.to(getattr(torch, dtype))
    safetensors.torch.save_file(state_dict, safetensors_path)
    serializer = TensorSerializer(tensors_path)
    serializer.write_state_dict(state_dict)
    serializer.close()
    Path(order_path).write_text(json.dumps(list(state_dict)))
    return {"bytes": sum(t.nbytes for t in state_dict.values()), "tensors": len(state_dict)}


def child_main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "load":
        result = child_load(args[0], args[1], args[2])
    elif kind == "load-runai":
        result = child_load_runai(args[0], args[1])
    elif kind == "upload-ours":
        result = child_upload_ours(args[0], args[1], args[2])
    elif kind == "upload-boto3":
        result = child_upload_boto3(args[0], args[1], args[2])
    elif kind == "make":
        result = child_make(*args)
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    report_to_parent(result)


# --------------------------------------------------------------------------
# Parent side.


def run_child(python: str, *args: str, env: dict | None = None) -> dict:
    # Keep a PYTHONPATH to our package off the reference's path.
    return _common.run_child(__file__, python, *args, env=env_without_pythonpath(env))


def warm_dir(path: Path) -> None:
    """Reads every file under `path` (the server's volumes) into page cache."""
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                warm(Path(root, name))


def find_weed_pid(data_dir: Path) -> int | None:
    """The `weed server` process serving data_dir (for its CPU time)."""
    needle = f"-dir={data_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline.split(b"\0"):
            return int(entry.name)
    return None


def process_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Row(_common.Row):
    """A row that also keeps, per run, the client's and the server's CPU
    seconds and the load average before it."""

    def __init__(self, key: str, label: str, group: str):
        super().__init__(key, label)
        self.group = group
        self.client_cpu_s: list[float] = []
        self.server_cpu_s: list[float] = []
        self.loadavg: list[float] = []

    def as_json(self, payload: int) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "group": self.group,
            "seconds": self.seconds,
            "gbps": self.gbps(payload),
            "client_cpu_s": self.client_cpu_s,
            "server_cpu_s": self.server_cpu_s,
            "loadavg_1m": self.loadavg,
            "error": self.error,
            **self.detail,
        }


def measure(row: Row, reps: int, fn, before=None, weed_pid=None) -> None:
    def observe():
        load = os.getloadavg()[0]
        c0, w0 = children_cpu_s(), process_cpu_s(weed_pid)

        def record(result: dict) -> str:
            # A child reports its CPU over the timed interval (imports and
            # setup excluded); curl rows count the curl processes whole.
            row.client_cpu_s.append(result.get("cpu_s", children_cpu_s() - c0))
            row.server_cpu_s.append(process_cpu_s(weed_pid) - w0)
            row.loadavg.append(load)
            return (
                f" (client CPU {row.client_cpu_s[-1]:.1f} s, "
                f"weed CPU {row.server_cpu_s[-1]:.1f} s, load {load:.2f})"
            )

        return record

    _common.measure(row, reps, fn, before, observe)


def prepare_files(args) -> tuple[Path, Path, Path]:
    """(.tensors, .safetensors, key-order json) of one model."""
    cached_t, cached_s = OUT / "model.ours.tensors", OUT / "model.safetensors"
    manifest = OUT / "model.json"
    if not args.quick and cached_t.exists() and cached_s.exists() and manifest.exists():
        order = S3_OUT / "model.order.json"
        S3_OUT.mkdir(parents=True, exist_ok=True)
        order.write_text(json.dumps(json.loads(manifest.read_text())["keys"]))
        print(f"reusing {cached_t} and {cached_s} (bench_load.py's model)", flush=True)
        return cached_t, cached_s, order
    tag = f"{args.size_gib:g}gib"
    paths = (
        S3_OUT / f"model-{tag}.tensors",
        S3_OUT / f"model-{tag}.safetensors",
        S3_OUT / f"model-{tag}.order.json",
    )
    if not all(p.exists() for p in paths):
        S3_OUT.mkdir(parents=True, exist_ok=True)
        print(f"writing a {args.size_gib:g} GiB model into {S3_OUT}...", flush=True)
        run_child(sys.executable, "make", str(args.size_gib), *map(str, paths))
    return paths


def core_stamp() -> str | None:
    """Path and mtime of the installed _core extension: other engineers may
    reinstall the package mid-run, which would mix builds across rows."""
    spec = importlib.util.find_spec("tensorizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for path in sorted(Path(spec.submodule_search_locations[0]).glob("_core*.so")):
        mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
        return f"{path} {mtime}"
    return None


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (head -70 bench/bench_s3.py) for the method.",
    )
    parser.add_argument("--reps", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--readers", help="connection counts N (default 1,2,4,8; 1,4 with --quick)")
    parser.add_argument("--ref-python", default=str(DEFAULT_REF_PYTHON))
    parser.add_argument("--skip-ref", action="store_true", help="no reference rows")
    parser.add_argument("--skip-runai", action="store_true", help="no run:ai rows")
    parser.add_argument("--skip-upload", action="store_true", help="no upload rows")
    parser.add_argument(
        "--size-gib", type=float, default=1.1, help="model size when writing files (default 1.1)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 64 MiB model, one repetition"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.size_gib = 1, 1 / 16
    if args.readers is None:
        args.readers = "1,4" if args.quick else "1,2,4,8"
    started = time.monotonic()
    load_at_start = os.getloadavg()
    if not os.path.exists(CURL):
        raise SystemExit("curl is not installed (the limit needs it)")
    readers = [int(r) for r in args.readers.split(",")]
    run_ref = not args.skip_ref and Path(args.ref_python).exists()
    run_runai = not args.skip_runai and importlib.util.find_spec("runai_model_streamer") is not None

    core_at_start = core_stamp()
    tensors_file, safetensors_file, order_file = prepare_files(args)
    file_bytes = tensors_file.stat().st_size
    st_bytes = safetensors_file.stat().st_size

    s3_server = _import_by_path("tzr_s3_server", S3_SERVER_PY)
    S3_OUT.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with s3_server.running_s3_server() as server:
        weed_pid = find_weed_pid(server.data_dir)
        bucket = server.bucket
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "AWS_REGION": server.region,
            "AWS_DEFAULT_REGION": server.region,
        }
        for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE"):
            env.pop(var, None)
        print(f"SeaweedFS S3 at {server.endpoint_url} (weed pid {weed_pid})", flush=True)
        admin = server.client(max_attempts=3)
        from boto3.s3.transfer import TransferConfig

        upload_config = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=PARTS_IN_FLIGHT,
        )
        t0 = time.perf_counter()
        admin.upload_file(str(tensors_file), bucket, TENSORS_KEY, Config=upload_config)
        admin.upload_file(str(safetensors_file), bucket, SAFETENSORS_KEY, Config=upload_config)
        print(f"uploaded both objects in {time.perf_counter() - t0:.1f} s", flush=True)
        tensors_url = f"s3://{bucket}/{TENSORS_KEY}"
        st_url = f"s3://{bucket}/{SAFETENSORS_KEY}"
        http_url = f"{server.endpoint_url}/{bucket}/{TENSORS_KEY}"
        user = f"{server.access_key}:{server.secret_key}"
        sign = ("--aws-sigv4", f"aws:amz:{server.region}:s3", "--user", user)

        def before():
            warm_dir(server.data_dir)
            prefault_memory(PREAD_LIMIT, file_bytes)

        def m(row, fn):
            rows.append(row)
            measure(row, args.reps, fn, before, weed_pid)

        print("limit:", flush=True)
        limit_rows = {}
        for n in readers:
            label = f"{n} parallel curl --aws-sigv4 range GETs" if n > 1 else "1 curl stream"
            limit_rows[n] = Row(f"curl_{n}", f"limit: {label} -> /dev/null", "limit")
            m(limit_rows[n], lambda n=n: curl_ranges(http_url, file_bytes, n, sign))

        print("ours:", flush=True)
        ours_rows = {}
        for n in readers:
            ours_rows[n] = Row(
                f"ours_r{n}", f'ours TensorDeserializer("s3://...", num_readers={n})', "ours"
            )
            m(
                ours_rows[n],
                lambda n=n: run_child(sys.executable, "load", tensors_url, str(n), "url", env=env),
            )
        ok = [n for n in readers if ours_rows[n].seconds]
        best_n = min(ok, key=lambda n: ours_rows[n].best()) if ok else max(readers)
        stream_row = Row(
            "ours_stream",
            "ours TensorDeserializer(open_stream(s3://..., force_http))",
            "ours-stream",
        )
        m(
            stream_row,
            lambda: run_child(sys.executable, "load", tensors_url, "default", "stream", env=env),
        )
        st_row = Row(
            "ours_safetensors",
            f'ours TensorDeserializer("s3://.../x.safetensors", num_readers={best_n})',
            "ours-st",
        )
        m(st_row, lambda: run_child(sys.executable, "load", st_url, str(best_n), "url", env=env))

        # Diagnostic: curl with ours' request shape (16 MiB ranged GETs over
        # best_n keep-alive connections), aligned with the object's 16 MiB
        # upload parts and shifted off them by 256 KiB, as ours' reads are
        # (the first data read starts after the file's 256 KiB header).
        # SeaweedFS keeps the object as 4 MiB chunks and fetches each chunk
        # a GET touches from its volume server, so a shifted 16 MiB GET costs
        # it five chunk fetches (two partial) instead of four.
        diag_rows = {}
        for shift in (0, 256 * 1024):
            how = "aligned to the parts" if not shift else "shifted 256 KiB off the parts"
            diag_rows[shift] = Row(
                f"curl_16mib_{best_n}_shift{shift}",
                f"diag: curl 16 MiB range GETs over {best_n} conns, {how}",
                "diag",
            )
            m(
                diag_rows[shift],
                lambda shift=shift: curl_ranges(
                    http_url, file_bytes, best_n, sign, 16 * MIB, shift
                ),
            )

        ref_row = None
        if run_ref:
            print("reference:", flush=True)
            ref_row = Row(
                "ref", "reference 2.12.1 TensorDeserializer(open_stream(s3://...))", "reference"
            )
            m(
                ref_row,
                lambda: run_child(
                    args.ref_python, "load", tensors_url, "default", "stream", env=env
                ),
            )

        runai_rows = {}
        if run_runai:
            print("run:ai model streamer:", flush=True)
            for n in readers if args.quick else [*readers, "default"]:
                label = f"concurrency={n}" if n != "default" else "its default concurrency"
                runai_rows[n] = Row(
                    f"runai_{n}",
                    f"run:ai SafetensorsStreamer(s3://...safetensors) {label}",
                    "runai",
                )
                m(
                    runai_rows[n],
                    lambda n=n: run_child(sys.executable, "load-runai", st_url, str(n), env=env),
                )

        print("limit again:", flush=True)
        for n in readers:
            measure(
                limit_rows[n],
                args.reps,
                lambda n=n: curl_ranges(http_url, file_bytes, n, sign),
                before,
                weed_pid,
            )

        upload_rows = []
        if not args.skip_upload:
            print("upload:", flush=True)
            counter = iter(range(1000))

            def fresh_bucket():
                name = f"upload-{next(counter)}"
                admin.create_bucket(Bucket=name)
                admin.put_object(Bucket=name, Key=".ready", Body=b"ok")  # grows volumes now
                return name

            def drop_bucket(name):
                for obj in admin.list_objects_v2(Bucket=name).get("Contents", []):
                    admin.delete_object(Bucket=name, Key=obj["Key"])
                admin.delete_bucket(Bucket=name)

            def upload(kind):
                name = fresh_bucket()
                try:
                    if kind == "ours":
                        return run_child(
                            sys.executable,
                            "upload-ours",
                            str(safetensors_file),
                            str(order_file),
                            f"s3://{name}/{TENSORS_KEY}",
                            env=env,
                        )
                    return run_child(
                        sys.executable,
                        "upload-boto3",
                        str(tensors_file),
                        name,
                        TENSORS_KEY,
                        env=env,
                    )
                finally:
                    drop_bucket(name)

            raw_row = Row(
                "upload_boto3",
                f"raw: boto3 upload_file ({PART_BYTES // MIB} MiB parts,"
                f" {PARTS_IN_FLIGHT} in flight)",
                "upload",
            )
            ours_up = Row(
                "upload_ours", 'ours TensorSerializer("s3://...").write_state_dict', "upload"
            )
            upload_rows = [raw_row, ours_up]
            rows.extend(upload_rows)
            # Interleaved, so a busy moment hits both alike.
            for _ in range(args.reps):
                measure(raw_row, 1, lambda: upload("boto3"), None, weed_pid)
                measure(ours_up, 1, lambda: upload("ours"), None, weed_pid)
        weed_version = tool_version([s3_server.weed_binary(), "version"])

    payload = next(
        (r.detail["bytes"] for r in rows if r.group == "ours" and "bytes" in r.detail), file_bytes
    )
    limit_candidates = [r for r in limit_rows.values() if r.seconds]
    limit_row = min(limit_candidates, key=lambda r: r.best()) if limit_candidates else None
    limit_gbps = limit_row.gbps(payload) if limit_row else None
    best_ours = (
        ours_rows.get(best_n) if ours_rows.get(best_n) and ours_rows[best_n].seconds else None
    )
    ours_gbps = best_ours.gbps(payload) if best_ours else None
    ref_gbps = ref_row.gbps(payload) if ref_row and ref_row.seconds else None
    runai_ok = [r for r in runai_rows.values() if r.seconds]
    best_runai = min(runai_ok, key=lambda r: r.best()) if runai_ok else None
    runai_gbps = best_runai.gbps(payload) if best_runai else None

    load_at_end = os.getloadavg()
    print()
    n_tensors = best_ours.detail.get("tensors") if best_ours else "?"
    print(
        f"objects: s3://{bucket}/{TENSORS_KEY} {file_bytes} bytes ({file_bytes / GIB:.2f} GiB, "
        f"from {tensors_file}), s3://{bucket}/{SAFETENSORS_KEY} {st_bytes} bytes; "
        f"payload {payload} bytes in {n_tensors} tensors"
    )
    versions = {
        "ours": best_ours.detail.get("version") if best_ours else None,
        "reference": ref_row.detail.get("version") if ref_row else None,
        "runai-model-streamer": dist_version("runai-model-streamer"),
        "runai-model-streamer-s3": dist_version("runai-model-streamer-s3"),
        "boto3": dist_version("boto3"),
        "seaweedfs": weed_version,
        "curl": " ".join(tool_version([CURL, "--version"]).split()[:2]),
        "python": platform.python_version(),
        "ours_core": core_at_start,
        "repo_head": git_head(),
    }
    if core_stamp() != core_at_start:
        versions["ours_core_at_end"] = core_stamp()
        print("WARNING: our _core extension was reinstalled during the run; rows may mix builds")
    machine = {
        **machine_basics(),
        "loadavg_start": [round(x, 2) for x in load_at_start],
        "loadavg_end": [round(x, 2) for x in load_at_end],
    }
    print(f"versions: {versions}")
    print(
        f"machine: {machine}; server: one `weed server` (master+volume+filer+S3, SigV4) on "
        f"loopback, sharing the cores with the client; best of {args.reps}, each load in a "
        "fresh process, volumes page-cache warm" + (", memory warm" if PREAD_LIMIT.exists() else "")
    )
    print()
    head = (
        f"{'row':<72} {'best s':>7} {'GB/s':>6} {'x limit':>7} {'x curl@N':>8} {'x ref':>6} "
        f"{'x runai':>7} {'cli CPU':>7} {'weed CPU':>8} {'load':>5}"
    )
    print(head)
    loads = [r for r in rows if r.group != "upload"]
    for row in loads:
        if not row.seconds:
            print(f"{row.label:<72} ERROR {row.error}")
            continue
        g = row.gbps(payload)
        n = None
        if row.key.startswith(("ours_r", "runai_", "curl_")):
            tail = row.key.rsplit("_", 1)[1].lstrip("r")
            n = int(tail) if tail.isdigit() else None
        if row is st_row or row.group == "diag":
            n = best_n
        same_n = limit_rows.get(n) if n is not None else None
        i = row.best_index()
        mark = "  <- ours" if row is best_ours else ("  <- limit" if row is limit_row else "")
        print(
            f"{row.label:<72} {row.best():>7.3f} {g:>6.2f} {fmt(ratio(g, limit_gbps)):>7} "
            f"{fmt(ratio(g, same_n.gbps(payload) if same_n and same_n.seconds else None)):>8} "
            f"{fmt(ratio(g, ref_gbps)):>6} {fmt(ratio(g, runai_gbps)):>7} "
            f"{row.client_cpu_s[i]:>7.1f} {row.server_cpu_s[i]:>8.1f} {row.loadavg[i]:>5.2f}{mark}"
        )
    raw_gbps = None
    if upload_rows:
        print()
        print(
            f"{'upload (same state dict / same bytes)':<72} {'best s':>7} {'GB/s':>6} {'x raw':>7}"
        )
        raw_gbps = upload_rows[0].gbps(payload)
        for row in upload_rows:
            if not row.seconds:
                print(f"{row.label:<72} ERROR {row.error}")
                continue
            g = row.gbps(payload)
            i = row.best_index()
            print(
                f"{row.label:<72} {row.best():>7.3f} {g:>6.2f} {fmt(ratio(g, raw_gbps)):>7} "
                f"{'':>8} {'':>6} {'':>7} {row.client_cpu_s[i]:>7.1f} "
                f"{row.server_cpu_s[i]:>8.1f} {row.loadavg[i]:>5.2f}"
            )
    st_gbps = st_row.gbps(payload) if st_row.seconds else None
    up_gbps = upload_rows[1].gbps(payload) if upload_rows and upload_rows[1].seconds else None
    targets = judge_targets(
        (
            (f"ours >= {VS_LIMIT}x the limit", ours_gbps, limit_gbps, VS_LIMIT),
            (f"ours >= {VS_REFERENCE}x the reference", ours_gbps, ref_gbps, VS_REFERENCE),
            (f"ours >= {VS_RUNAI}x run:ai (its best concurrency)", ours_gbps, runai_gbps, VS_RUNAI),
            (f"ours safetensors over S3 >= {VS_LIMIT}x the limit", st_gbps, limit_gbps, VS_LIMIT),
            (
                f"ours upload >= {UPLOAD_VS_RAW}x raw boto3 multipart",
                up_gbps,
                raw_gbps,
                UPLOAD_VS_RAW,
            ),
        )
    )
    print_targets(targets)
    print(
        "notes: GB/s = 1e9 bytes of tensor payload per second; x curl@N = against the curl "
        "row with the same connection count; cli CPU = user+sys seconds of the client "
        "process(es) in the best run, weed CPU = the server's; load = 1-min load average "
        "before the best run."
    )
    elapsed = time.monotonic() - started
    print(f"elapsed: {elapsed:.0f} s")
    if args.json:
        meta = {
            "tensors_object_bytes": file_bytes,
            "safetensors_object_bytes": st_bytes,
            "payload_bytes": payload,
            "source_files": [str(tensors_file), str(safetensors_file)],
            "versions": versions,
            "machine": machine,
            "reps": args.reps,
            "quick": args.quick,
            "readers": readers,
            "ours_best_readers": best_n,
            "limit_row": limit_row.key if limit_row else None,
            "upload_part_bytes": PART_BYTES,
            "upload_parts_in_flight": PARTS_IN_FLIGHT,
            "elapsed_s": elapsed,
        }
        rows_json = [r.as_json(payload) for r in rows]
        write_json(args.json, {"meta": meta, "rows": rows_json, "targets": targets})
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
