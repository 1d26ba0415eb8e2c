"""What bench_load.py, bench_http.py and bench_s3.py share: the method.

Every measured run happens in a fresh child process: the benchmark script
itself in ``_child`` mode, under the interpreter whose ``tensorizer`` is
meant (ours, or the reference 2.12.1 in ``.venv-ref``), printing one JSON
line as its last output. Before each run the parent warms the page cache
(``warm``) and the memory (``prefault_memory``: ``pread_limit
--prefault-mib``, see pread_limit.cc), keeps the best of N runs per row, then
prints a table, the targets as PASS/FAIL, and optionally the results as JSON.

Here:

- paths and units: ``BENCH_DIR``, ``REPO``, ``OUT``, ``DEFAULT_REF_PYTHON``,
  ``PREAD_LIMIT``, ``CURL``, ``MIB``, ``GIB``, ``CHILD_TIMEOUT_S``;
- the child side: ``package_version``, ``report_to_parent``;
- the parent side: ``ChildError``, ``run_child``, ``env_without_pythonpath``,
  ``warm``, ``prefault_memory``, ``curl_ranges`` (the link's limit);
- best of N: ``Row`` and ``measure`` (bench_http.py and bench_s3.py;
  bench_load.py's rows also carry RSS and report GB/s per row, so it keeps
  its own);
- the report: ``ratio``, ``fmt``, ``judge_targets``, ``print_targets``,
  ``machine_basics``, ``tool_version``, ``dist_version``, ``git_head``,
  ``write_json``.

Nothing here imports torch or tensorizer: the reference's interpreter
imports this module too.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT = BENCH_DIR / "out"
DEFAULT_REF_PYTHON = REPO / ".venv-ref" / "bin" / "python"
PREAD_LIMIT = OUT / "pread_limit"
CURL = shutil.which("curl") or "/usr/bin/curl"

MIB = 1 << 20
GIB = 1 << 30
CHILD_TIMEOUT_S = 600


# --------------------------------------------------------------------------
# Child side.


def package_version(dist: str, module) -> str:
    """The installed distribution's version (it tells ours, 2.12.1+tzr...,
    apart from the reference), else the module's ``__version__``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return getattr(module, "__version__", "?")


def report_to_parent(result: dict) -> None:
    """Prints a child's result as the last line of its stdout, where
    run_child reads it (whatever a library printed before it)."""
    sys.stdout.write("\n" + json.dumps(result) + "\n")


# --------------------------------------------------------------------------
# Parent side.


class ChildError(RuntimeError):
    pass


def env_without_pythonpath(env: dict | None = None) -> dict:
    """``env`` (default: this process's) without PYTHONPATH, which would put
    our package on the reference's path."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONPATH"}


def run_child(script: str | Path, python: str, *args: str, env: dict | None = None) -> dict:
    """Runs ``python script _child *args`` in BENCH_DIR and returns the JSON
    its last line of stdout holds. ``env`` None: this process's environment.
    A failure (exit status, or the interpreter cannot be run) is a
    ChildError naming the last line of its output."""
    if os.sep in python:
        python = os.path.abspath(python)  # the child runs in BENCH_DIR
    cmd = [python, str(Path(script).resolve()), "_child", *args]
    try:
        proc = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            cwd=BENCH_DIR,
            env=env,
        )
    except OSError as exc:
        raise ChildError(f"cannot run {python}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise ChildError(f"exit {proc.returncode}: {tail[0][:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def warm(path: Path) -> None:
    """Reads the file once so it sits in the page cache."""
    buffer = bytearray(16 * MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def prefault_memory(binary: Path, nbytes: int, *, required: bool = False) -> None:
    """Memory-warms the machine for a run that will fill ``nbytes``:
    ``pread_limit --prefault-mib`` touches and frees twice that plus 64 MiB,
    so the run starts on recently used memory rather than pages the
    hypervisor has not backed yet (pread_limit.cc, prefault mode).

    required=False: skipped when the binary does not exist, and a failure is
    ignored (the run is then only page-cache warm). required=True: a failure
    is a ChildError."""
    if not required and not binary.exists():
        return
    proc = subprocess.run(
        [str(binary), "--prefault-mib", str(2 * nbytes // MIB + 64)],
        check=False,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    if required and proc.returncode != 0:
        raise ChildError(proc.stderr.strip()[-200:])


def curl_ranges(
    url: str,
    size: int,
    streams: int,
    curl_args: tuple[str, ...] = (),
    request_bytes: int = 0,
    shift_bytes: int = 0,
) -> dict:
    """`streams` parallel curl processes GETting [0, size) of `url` to
    /dev/null, timed as a whole. request_bytes=0: one range GET per process
    (the object split into `streams` ranges). Otherwise ranged GETs of
    request_bytes each (the first one shift_bytes long when shift_bytes > 0),
    dealt round-robin to the processes, each process sending its GETs one
    after another over one keep-alive connection (curl --next). curl_args go
    on every GET (e.g. SigV4 signing)."""
    if request_bytes:
        starts = [0, *range(shift_bytes or request_bytes, size, request_bytes)]
        ranges = [(a, b - 1) for a, b in zip(starts, [*starts[1:], size])]
        per_stream = [ranges[i::streams] for i in range(streams)]
    else:
        step = -(-size // streams)
        per_stream = [[(i * step, min(size, (i + 1) * step) - 1)] for i in range(streams)]
    cmds = []
    for stream_ranges in per_stream:
        cmd = [CURL]
        for j, (first, last) in enumerate(stream_ranges):
            if j:
                cmd.append("--next")
            cmd += ["-sS", "--fail", *curl_args, "-o", "/dev/null", "-r", f"{first}-{last}", url]
        cmds.append(cmd)
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE) for cmd in cmds]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        if proc.returncode != 0:
            errors.append(err.decode(errors="replace").strip()[:200])
    end = time.perf_counter()
    if errors:
        raise ChildError(f"curl failed: {errors[0]}")
    return {"seconds": end - start, "file_bytes": size}


# --------------------------------------------------------------------------
# Best of N.


class Row:
    """One row of the table: the seconds of each run; the best one counts."""

    def __init__(self, key: str, label: str):
        self.key, self.label = key, label
        self.seconds: list[float] = []
        self.error: str | None = None
        self.detail: dict = {}

    def best_index(self) -> int | None:
        if not self.seconds:
            return None
        return min(range(len(self.seconds)), key=self.seconds.__getitem__)

    def best(self) -> float | None:
        i = self.best_index()
        return None if i is None else self.seconds[i]

    def gbps(self, payload: int) -> float | None:
        """`payload` bytes over the best run, in GB/s (1e9 bytes/s)."""
        best = self.best()
        return payload / best / 1e9 if best else None

    def as_json(self, payload: int) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "seconds": self.seconds,
            "gbps": self.gbps(payload),
            "error": self.error,
            **self.detail,
        }


def measure(row: Row, reps: int, fn, before=None, observe=None) -> None:
    """Runs ``fn`` (which returns a dict with "seconds") ``reps`` times into
    ``row``, calling ``before`` ahead of each run, untimed. The first error
    ends the row. ``observe``, when given, is called just before each run and
    returns a function that gets the run's result, records what it wants on
    the row and returns text for the end of the run's progress line."""
    for _ in range(reps):
        if before is not None:
            before()
        after = observe() if observe is not None else None
        try:
            result = fn()
        except (ChildError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
            row.error = str(exc)
            print(f"  {row.label}: ERROR {exc}", flush=True)
            return
        row.seconds.append(result["seconds"])
        note = after(result) if after is not None else ""
        for key in ("bytes", "version", "tensors", "file_bytes"):
            if key in result:
                row.detail[key] = result[key]
        print(f"  {row.label}: {result['seconds']:.3f} s{note}", flush=True)


# --------------------------------------------------------------------------
# The report.


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value and base else None


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def judge_targets(checks) -> list[dict]:
    """``checks``: (name, value, base, factor); a target passes when
    value/base >= factor, and is N/A when either is missing."""
    targets = []
    for name, value, base, factor in checks:
        r = ratio(value, base)
        status = "N/A" if r is None else ("PASS" if r >= factor else "FAIL")
        targets.append({"target": name, "ratio": r, "status": status})
    return targets


def print_targets(targets: list[dict]) -> None:
    print()
    print("targets:")
    for t in targets:
        r = f"{t['ratio']:.2f}x" if t["ratio"] is not None else "-"
        print(f"  {t['status']:<4} {t['target']} ({r})")


def machine_basics() -> dict:
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
    }


def tool_version(cmd: list[str]) -> str:
    """The first line a tool prints for its version command."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "?"


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def git_head(mark_dirty: bool = False) -> str | None:
    """The repository's short HEAD commit, with "+dirty" when asked and a
    tracked file differs from it; None outside a checkout."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        if not commit or not mark_dirty:
            return commit or None
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return None
    return commit + ("+dirty" if dirty else "")


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    print(f"results written to {path}")
