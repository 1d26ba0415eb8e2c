"""Faults at cluster scale (issue 12), on a real SeaweedFS cluster on
loopback: bench/cluster_faults.py's scenario in a smaller configuration.

One master with -defaultReplication=001, three volume servers and a filer
with the S3 gateway, each its own `weed` process. 32 loader processes read
one 64 MiB object while the volume server holding most of its chunk
replicas gets SIGKILL and another is restarted; every tensor must hash as
written. Then an upload races the SIGKILL of one volume server, and another
the SIGKILL of two (one server left, where 001 can write nothing): each must
end whole (the object loads bit-exact) or leave no object (HEAD 404, also
once the servers are back). Last, loads under 503s from the gateway's
circuit breaker return right bytes or fail, and with max_retries=30 all
finish. About 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cluster_faults.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("tzr_cluster_faults", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.fixture(scope="module")
def outcome():
    cluster_faults = _bench_module()
    args = cluster_faults.parse_args(
        ["--loaders", "32", "--size-mib", "64", "--no-baseline", "--no-limit"]
    )
    return cluster_faults.run(args)


def test_32_loaders_stay_bit_exact_through_a_kill_and_a_restart(outcome):
    (faults,) = [r for r in outcome["rounds"] if r["label"] == "faults"]
    assert faults["errors"] == []
    assert faults["bit_exact"] == faults["loaders"] == 32
    # Both faults really hit loads in flight.
    events = {e["what"].split()[0]: e for e in faults["timeline"]}
    assert set(events) == {"SIGKILL", "restart"}, faults["timeline"]
    assert all(e.get("loaders_in_flight", 0) > 0 for e in events.values()), faults["timeline"]


def test_an_upload_racing_volume_server_kills_is_whole_or_absent(outcome):
    uploads = {u["key"]: u for u in outcome["uploads"]}
    assert set(uploads) == {"upload-kill1.tensors", "upload-kill2.tensors"}
    for key, u in uploads.items():
        assert all("at_s" in e for e in u["timeline"]), f"{key}: a kill came too late"
        if u["ok"]:
            assert u["head_when_done"] == u["head_after_restore"] == 200, u
            assert u["loaded_bit_exact"], f"{key}: the completed object loads wrong bytes"
        else:
            assert u["head_when_done"] == u["head_after_restore"] == 404, (
                f"{key}: the writer failed ({u['error']}) but an object exists"
            )
    # One server left of three cannot hold a 001 write: the failure branch
    # is exercised, and it leaves nothing.
    assert not uploads["upload-kill2.tensors"]["ok"]


def test_loads_under_503s_return_right_bytes_or_fail(outcome):
    rounds = {r["label"]: r for r in outcome["rounds"]}
    for label in ("503-defaults", "503-retries"):
        r = rounds[label]
        # A loader that finished has every tensor as written.
        assert r["ok"] == r["bit_exact"], r["errors"]
        assert all("503" in e for e in r["errors"]), r["errors"]
    # Enough retries ride out the gateway's 503s.
    assert rounds["503-retries"]["bit_exact"] == 32, rounds["503-retries"]["errors"]


def test_the_cluster_leaves_nothing_behind(outcome):
    assert all(c["ok"] for c in outcome["checks"]), [c for c in outcome["checks"] if not c["ok"]]
    root = outcome["cluster_root"]
    assert not os.path.exists(root)
    assert _processes_mentioning(root) == []
