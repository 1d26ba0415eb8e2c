"""Interoperability with the reference tensorizer 2.12.1, both directions.

For every case of ``interop_cases.CASES``:

* the reference writes it and loads its own file (in a subprocess running the
  reference venv's interpreter): that summary is the truth;
* ours loads the reference's file: same summary (names, dtypes, shapes, bytes,
  tensor types, module indices, Mapping levels, tree(), load_into_module);
* ours writes it and the reference loads our file: same summary;
* our file is byte-identical to the reference's (unencrypted cases), and its
  header has the same data version and feature flags.

The reference runs in two batched subprocesses per session (one for its own
files, one for ours) because importing torch dominates its cost.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from dataclasses import dataclass
from pathlib import Path

import interop_cases as ic
import pytest

# Payload construction touches experimental/deprecated dtypes on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor"),
]

REF_DRIVER = Path(__file__).resolve().parent / "ref_driver.py"
REF_VERSION = "2.12.1"
# magic + file header + metadata length + the 256 KiB metadata block.
PROLOGUE_BYTES = 262217

READABLE = [c for c in ic.CASES if c.write_error is None]
LOADS = [pytest.param(c, o, id=f"{c.name}-{o.id}") for c in READABLE for o in c.options]
REF_LOADS = [p for p in LOADS if p.values[0].ref_reads]
OPAQUE_ONLY_LOADS = [p for p in LOADS if not p.values[0].ref_reads]


def _case_params(cases):
    return [pytest.param(c, id=c.name) for c in cases]


# --------------------------------------------------------------------------
# Comparison with readable diffs
# --------------------------------------------------------------------------


def _diff(a, b, path="", out=None, limit=20):
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if ic.is_error(a) and ic.is_error(b):
        if not ic.same_error(a, b):
            out.append(f"{path}: ours raised {a[1]}, want {b[1]}")
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in {**a, **b} if not (isinstance(k, str) and k.startswith("_"))]
        for k in keys:
            if k not in a:
                out.append(f"{path}.{k}: missing in ours")
            elif k not in b:
                out.append(f"{path}.{k}: unexpected in ours")
            else:
                _diff(a[k], b[k], f"{path}.{k}", out, limit)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b) or type(a) is not type(b):
            out.append(
                f"{path}: length/type {type(a).__name__}[{len(a)}] != {type(b).__name__}[{len(b)}]"
                f"\n    ours: {_short(a)}\n    want: {_short(b)}"
            )
            return out
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out, limit)
    elif a != b or type(a) is not type(b):
        out.append(f"{path}: ours {a!r} != want {b!r}")
    return out


def _short(value, n=400):
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def assert_same(actual: dict, expected: dict, what: str):
    diffs = _diff(actual, expected)
    if diffs:
        notes = []
        for label, summary in (("ours", actual), ("want", expected)):
            if isinstance(summary, dict) and summary.get("_errors"):
                notes.append(f"{label} errors: {summary['_errors']}")
        pytest.fail(f"{what} differs:\n  " + "\n  ".join(diffs + notes), pytrace=False)


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ours():
    try:
        import tensorizer
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"our tensorizer is not importable: {exc!r}", pytrace=False)
    return tensorizer


@pytest.fixture(scope="session")
def interop_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interop")


def run_reference(ref_python: str, jobs: list, workdir: Path, label: str) -> list:
    jobs_path = workdir / f"{label}.jobs.json"
    out_path = workdir / f"{label}.results.pkl"
    jobs_path.write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [ref_python, str(REF_DRIVER), "batch", str(jobs_path), str(out_path)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"reference driver failed ({label}, rc={proc.returncode}):\n"
            f"{proc.stderr[-4000:]}",
            pytrace=False,
        )
    with open(out_path, "rb") as f:
        data = pickle.load(f)
    info = data["tensorizer"]
    if info["version"] != REF_VERSION:
        pytest.fail(
            f"{ref_python} imports tensorizer {info['version']} from {info['file']},"
            f" expected the reference {REF_VERSION}",
            pytrace=False,
        )
    return data["results"]


@dataclass
class Written:
    paths: dict  # case name -> path
    errors: dict  # case name -> None or error record (+ message)
    summaries: dict  # (case name, options id) -> summary


def _dump_job(case: ic.Case, options: ic.LoadOptions, path: str) -> dict:
    return {"op": "dump", "case": case.name, "path": path, "options": options.to_dict()}


@pytest.fixture(scope="session")
def reference(ref_python, interop_dir) -> Written:
    """The reference writes every case and loads its own files: the truth."""
    ref_dir = interop_dir / "ref"
    ref_dir.mkdir()
    paths = {c.name: str(ref_dir / f"{c.name}.tensors") for c in ic.CASES}
    jobs = [{"op": "write", "case": c.name, "path": paths[c.name]} for c in ic.CASES]
    loads = [(c, o) for c in READABLE if c.ref_reads for o in c.options]
    jobs += [_dump_job(c, o, paths[c.name]) for c, o in loads]
    results = run_reference(ref_python, jobs, interop_dir, "reference")
    errors = {c.name: r for c, r in zip(ic.CASES, results)}
    summaries = {
        (c.name, o.id): r for (c, o), r in zip(loads, results[len(ic.CASES) :])
    }
    return Written(paths, errors, summaries)


@pytest.fixture(scope="session")
def ours_written(ours, interop_dir) -> Written:
    """Our writer writes every case (in this process)."""
    our_dir = interop_dir / "ours"
    our_dir.mkdir()
    paths, errors = {}, {}
    for case in ic.CASES:
        path = str(our_dir / f"{case.name}.tensors")
        paths[case.name] = path
        try:
            case.write(ours, path)
        except Exception as exc:  # noqa: BLE001 - reported per case
            errors[case.name] = ic.error_record(exc) + (f"{type(exc).__name__}: {exc}",)
        else:
            errors[case.name] = None
    return Written(paths, errors, {})


@pytest.fixture(scope="session")
def reference_on_ours(ref_python, interop_dir, ours_written) -> Written:
    """The reference loads every file our writer produced."""
    loads = [
        (c, o)
        for c in READABLE
        if c.ref_reads and ours_written.errors[c.name] is None
        for o in c.options
    ]
    jobs = [_dump_job(c, o, ours_written.paths[c.name]) for c, o in loads]
    results = (
        run_reference(ref_python, jobs, interop_dir, "reference_on_ours")
        if jobs
        else []
    )
    summaries = {(c.name, o.id): r for (c, o), r in zip(loads, results)}
    return Written(ours_written.paths, ours_written.errors, summaries)


def _require_written(written: Written, case: ic.Case, who: str) -> str:
    error = written.errors[case.name]
    if error is not None:
        pytest.fail(f"{who} failed to write {case.name}: {error[-1]}", pytrace=False)
    return written.paths[case.name]


# --------------------------------------------------------------------------
# Harness sanity: the reference agrees with the payloads
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", _case_params(ic.CASES))
def test_reference_writes(reference, case):
    error = reference.errors[case.name]
    if case.write_error is None:
        assert error is None, f"reference failed to write {case.name}: {error}"
    else:
        assert error is not None and case.write_error in error[2], error


@pytest.mark.parametrize("case, options", REF_LOADS)
def test_reference_reads_itself(reference, case, options):
    summary = reference.summaries[(case.name, options.id)]
    for part in ("mapping", "read_tensors", "module"):
        value = summary.get(part)
        assert not ic.is_error(value), (
            f"reference failed {part}: {summary.get('_errors')}"
        )
    assert summary["read_tensors"], "no tensors loaded"
    if case.kind == "state_dict":
        want = ic.expected_read_tensors(case)
        if options.filter_prefix is not None:
            keep = ic.make_filter(options.filter_prefix)
            want = [t for t in want if keep(t[2])]
        assert_same(summary["read_tensors"], want, "reference read_tensors vs payload")


# --------------------------------------------------------------------------
# Direction 1: the reference writes, ours reads
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case, options", REF_LOADS)
def test_ours_reads_reference_file(ours, reference, case, options):
    path = _require_written(reference, case, "reference")
    actual = ic.summarize(ours, path, case, options)
    assert_same(
        actual,
        reference.summaries[(case.name, options.id)],
        "our load of the reference file",
    )


@pytest.mark.parametrize("case, options", OPAQUE_ONLY_LOADS)
def test_ours_reads_reference_file_the_reference_cannot(ours, reference, case, options):
    """Opaque-dtype meta/empty tensors: the reference writes them but cannot
    read them (research §1.10); our reader must return what was written."""
    path = _require_written(reference, case, "reference")
    actual = ic.summarize(ours, path, case, options)
    errors = actual.get("_errors")
    assert not ic.is_error(actual["read_tensors"]), errors
    assert_same(actual["read_tensors"], ic.expected_read_tensors(case), "read_tensors")
    items = actual["mapping"]
    assert not ic.is_error(items), errors
    flat = [(k, v["tensor"]) for k, v in items["items"]]
    assert_same(
        flat, [(t[2], t[3]) for t in ic.expected_read_tensors(case)], "mapping items"
    )


# --------------------------------------------------------------------------
# Direction 2: ours writes, the reference reads
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case, options", REF_LOADS)
def test_reference_reads_our_file(reference_on_ours, reference, case, options):
    _require_written(reference_on_ours, case, "our writer")
    actual = reference_on_ours.summaries[(case.name, options.id)]
    assert_same(
        actual,
        reference.summaries[(case.name, options.id)],
        "reference load of our file",
    )


# --------------------------------------------------------------------------
# Byte identity and headers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", _case_params(READABLE))
def test_same_file_header(ours_written, reference, case):
    ref_header = ic.read_file_header(_require_written(reference, case, "reference"))
    our_header = ic.read_file_header(_require_written(ours_written, case, "our writer"))
    assert ref_header["version"] == case.version, (
        "harness: unexpected reference data version"
    )
    assert our_header == ref_header


@pytest.mark.parametrize("case", _case_params([c for c in READABLE if not c.encrypted]))
def test_same_bytes(ours_written, reference, case):
    ref_path = _require_written(reference, case, "reference")
    our_path = _require_written(ours_written, case, "our writer")
    ref_size, our_size = os.path.getsize(ref_path), os.path.getsize(our_path)
    assert our_size == ref_size, f"file size {our_size} != reference {ref_size}"
    if ic.file_digest(our_path) != ic.file_digest(ref_path):
        pytest.fail(_first_difference(our_path, ref_path), pytrace=False)


@pytest.mark.parametrize("case", _case_params([c for c in READABLE if c.encrypted]))
def test_same_layout_encrypted(ours_written, reference, case):
    """Nonces are random, so only sizes and the prologue (header and metadata
    index, which hold no ciphertext) can be compared byte for byte."""
    ref_path = _require_written(reference, case, "reference")
    our_path = _require_written(ours_written, case, "our writer")
    assert os.path.getsize(our_path) == os.path.getsize(ref_path)
    with open(our_path, "rb") as a, open(ref_path, "rb") as b:
        assert a.read(PROLOGUE_BYTES) == b.read(PROLOGUE_BYTES), _first_difference(
            our_path, ref_path
        )


def _first_difference(our_path: str, ref_path: str) -> str:
    with open(our_path, "rb") as a, open(ref_path, "rb") as b:
        offset = 0
        while True:
            x, y = a.read(1 << 16), b.read(1 << 16)
            if x != y:
                n = min(len(x), len(y))
                i = next((j for j in range(n) if x[j] != y[j]), n)
                at = offset + i
                lo = max(0, i - 16)
                return (
                    f"first difference at byte {at}:\n"
                    f"  ours [{offset + lo}:]: {x[lo : i + 32].hex(' ')}\n"
                    f"  ref  [{offset + lo}:]: {y[lo : i + 32].hex(' ')}"
                )
            if not x:
                return "files are identical"
            offset += len(x)


def test_golden_file(ours, tmp_path, reference):
    """Research §1.14: exact bytes of a one-tensor state dict."""
    path = str(tmp_path / "golden.tensors")
    ic.CASES_BY_NAME["golden"].write(ours, path)
    golden = ic.golden_bytes()
    with open(reference.paths["golden"], "rb") as f:
        assert f.read() == golden, (
            "harness: the reference no longer writes the golden bytes"
        )
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == 262327
    if data != golden:
        with open(tmp_path / "want.tensors", "wb") as f:
            f.write(golden)
        pytest.fail(
            _first_difference(path, str(tmp_path / "want.tensors")), pytrace=False
        )


# --------------------------------------------------------------------------
# dtypes the reference rejects
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", _case_params([c for c in ic.CASES if c.write_error is not None])
)
def test_rejected_dtype(ours_written, reference, case):
    assert reference.errors[case.name] is not None
    error = ours_written.errors[case.name]
    assert error is not None, f"our writer accepted {case.name}"
    assert case.write_error in error[2], error[-1]
