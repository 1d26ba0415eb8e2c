"""Our harness for the reference tensorizer 2.12.1's own test suite.

scripts/ref_suite.sh copies this file next to the reference's tests/ (taken
from its sdist) and runs pytest there. It:

- checks that the Hugging Face hub is offline and the stand-in model cache
  exists (compat/ref_suite/make_hf_cache.py builds it);
- deselects the tests listed in exclusions.txt, each with a reason of an
  admissible kind, and fails the run on an entry that names no test;
- turns every skip into a failure: a test either passes, or it is listed
  with its reason;
- starts redis-server for test_stream_io with a readiness check of its own
  (see _start_redis);
- prints which tensorizer it tested, the number of tests that passed and
  the exclusions with their reasons.

Exclusion lines are ``<test id> -- <kind>: <reason>``, where the test id is
relative to tests/ (a file name alone leaves out the whole file, which is
then not even imported) and kind is one of ``internet``, ``cuda``, ``mechanism``
or ``PENDING``. A ``cuda`` exclusion applies only where CUDA is unavailable.
"""

import os
import subprocess
import sys
import time
from typing import Dict, List, Set, Tuple

import pytest

KINDS = ("internet", "cuda", "mechanism", "PENDING")

_excluded: List[Tuple[str, str]] = []
_entries: Dict[str, str] = {}
_passed: Set[str] = set()
_failed: Set[str] = set()


def _read_exclusions(path: str) -> Dict[str, str]:
    entries: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            test_id, sep, reason = line.partition(" -- ")
            kind = reason.partition(":")[0]
            if not sep or kind not in KINDS or not reason.partition(":")[2].strip():
                raise pytest.UsageError(
                    f"{path}:{lineno}: expected '<test id> -- <kind>: <reason>' with kind"
                    f" one of {', '.join(KINDS)}, got {line!r}"
                )
            if test_id in entries:
                raise pytest.UsageError(f"{path}:{lineno}: {test_id} is listed twice")
            entries[test_id.strip()] = reason.strip()
    return entries


def pytest_configure(config):
    path = os.environ.get("REF_SUITE_EXCLUSIONS")
    if not path:
        raise pytest.UsageError("REF_SUITE_EXCLUSIONS must name the exclusions file")
    entries = _read_exclusions(path)
    import torch

    if torch.cuda.is_available():
        entries = {t: r for t, r in entries.items() if not r.startswith("cuda:")}
    _entries.update(entries)
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        raise pytest.UsageError("the reference suite runs offline: set HF_HUB_OFFLINE=1")
    hub = os.path.join(os.environ.get("HF_HOME", ""), "hub")
    if not os.path.isdir(os.path.join(hub, "models--EleutherAI--gpt-neo-125M")):
        raise pytest.UsageError(
            f"no stand-in for EleutherAI/gpt-neo-125M under {hub!r}:"
            " run compat/ref_suite/make_hf_cache.py (scripts/ref_suite.sh does)"
        )


def pytest_report_header(config):
    import tensorizer

    return f"tensorizer {tensorizer.__version__} from {os.path.dirname(tensorizer.__file__)}"


def pytest_ignore_collect(collection_path, config):
    reason = _entries.get(collection_path.name)
    if reason is None or collection_path.parent != config.rootpath:
        return None
    _excluded.append((collection_path.name, reason))
    return True


def pytest_collection_modifyitems(session, config, items):
    entries = _entries
    collected_files = {item.nodeid.partition("::")[0] for item in items}
    by_id = {item.nodeid: item for item in items}
    stale = [
        t for t in entries if t.partition("::")[0] in collected_files and t not in by_id
    ]
    if stale:
        raise pytest.UsageError(f"exclusions name no such tests: {', '.join(stale)}")
    keep, drop = [], []
    for item in items:
        (drop if item.nodeid in entries else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    _excluded.extend((item.nodeid, entries[item.nodeid]) for item in drop)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped ({reason}): the reference suite allows no skips; fix the cause"
            " or list the test in compat/ref_suite/exclusions.txt with an admissible reason"
        )
    return report


def _start_redis(port=6381):
    """test_stream_io.start_redis with the same result (the server process,
    its stdout a pipe, and a client), ready when it answers PING. The
    reference's waits for "Ready to accept connections" with select() on
    the pipe after each readline(), which misses lines already in the
    reader's buffer: when the server's log arrives in one piece it gives up
    and leaves the server running, and the next start fails on the port."""
    import redis

    process = subprocess.Popen(["redis-server", "--port", str(port)], stdout=subprocess.PIPE)
    client = redis.Redis(host="localhost", port=port, db=0)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return process, client
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = process.communicate()[0].decode(errors="replace")
                raise RuntimeError(f"redis-server --port {port} did not start:\n{output}")
            time.sleep(0.05)


@pytest.fixture(autouse=True)
def _ready_redis(monkeypatch):
    module = sys.modules.get("test_stream_io")
    if module is not None:
        monkeypatch.setattr(module, "start_redis", _start_redis)


def pytest_runtest_logreport(report):
    # A test passes when its call passed and nothing in it failed: its
    # setup, teardown, or any of its unittest subTests (reported apart).
    if report.failed:
        _failed.add(report.nodeid)
    elif report.when == "call" and report.passed and not hasattr(report, "context"):
        _passed.add(report.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    write = terminalreporter.write_line
    write("")
    write(f"reference suite: {len(_passed - _failed)} passed, {len(_excluded)} excluded")
    for test_id, reason in _excluded:
        write(f"  excluded {test_id}: {reason}")
