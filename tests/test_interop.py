"""Interoperability with the reference tensorizer 2.12.1, both directions.

For every case of ``interop_cases.CASES``:

* the reference writes it and loads its own file (in a subprocess running the
  reference venv's interpreter): that summary is the truth;
* ours loads the reference's file: same summary (names, dtypes, shapes, bytes,
  tensor types, module indices, Mapping levels, tree(), load_into_module);
* ours writes it and the reference loads our file: same summary;
* our file is byte-identical to the reference's, and its header has the same
  data version and feature flags.

Where the project deliberately diverges from the reference (D1-D4, listed in
interop_cases' docstring), the reference's summary is turned into what ours
must produce by ``intended_summary`` and the tests below say so explicitly;
each such place is marked "DIVERGENCE Dn".

The reference runs in two batched subprocesses per session (one for its own
files, one for ours) because importing torch dominates its cost.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import interop_cases as ic
import pytest
import torch

# Payload construction touches experimental/deprecated dtypes on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor"),
]

REF_DRIVER = Path(__file__).resolve().parent / "ref_driver.py"
REF_VERSION = "2.12.1"

READABLE = [c for c in ic.CASES if c.write_error is None]
LOADS = [pytest.param(c, o, id=f"{c.name}-{o.id}") for c in READABLE for o in c.options]
REF_LOADS = [p for p in LOADS if p.values[0].ref_reads]
OPAQUE_ONLY_LOADS = [p for p in LOADS if not p.values[0].ref_reads]
# DIVERGENCE D2: cases where our writer keeps persistent root buffers that the
# reference's write_module(include_non_persistent_buffers=False) drops are
# not byte-identical.
SAME_FILE_CASES = [c for c in READABLE if not c.ours_also_writes]
MODULE_CASES = [c for c in READABLE if c.kind == "module"]


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
# What ours must produce where the project deliberately diverges
# --------------------------------------------------------------------------


def _stored_name_to_state_dict_name(name: str) -> str:
    # Root-module tensors are stored as ".name"; state_dict() calls them "name".
    return name.removeprefix(".")


def _source_tensors(case: ic.Case) -> dict:
    """What verify_module compares against: state_dict() plus every buffer."""
    source = case.source_module()
    tensors = dict(source.state_dict())
    tensors.update(source.named_buffers())
    return tensors


def intended_verify_module(case: ic.Case, ref_summary: dict, ref_result) -> tuple:
    """DIVERGENCE D4: verify_module on an unmodified source module.

    The reference reports every root tensor (".name") as failed, twice.  Ours
    reports each stored (filtered-in) tensor once, True when it matches the
    module.  A source tensor on the meta device has no data to compare: ours
    reports it False (the reference reports False for root meta tensors and
    raises NotImplementedError for nested ones; none are nested here).
    """
    stored = ref_summary["read_tensors"]
    assert not ic.is_error(stored), "harness: the reference could not read_tensors"
    source = _source_tensors(case)
    expected = sorted(
        (name, source[_stored_name_to_state_dict_name(name)].device.type != "meta")
        for _, _, name, _ in stored
    )
    if not ic.is_error(ref_result):
        # Outside the root module the reference is right: keep it as the truth.
        def nested(entries):
            return [e for e in entries if not e[0].startswith(".")]

        assert nested(ref_result[1]) == nested(expected), (
            "harness: the reference's verify_module disagrees on nested tensors"
        )
    return all(ok for _, ok in expected), expected


def fresh_state_dict_keys(case: ic.Case) -> list:
    return list(case.target_module().state_dict().keys())


def non_persistent_buffer_names(case: ic.Case) -> set:
    module = case.target_module()
    persistent = module.state_dict().keys()
    return {n for n, _ in module.named_buffers() if n not in persistent}


def intended_state_dict(case: ic.Case, ref_state_dict: list) -> list:
    """DIVERGENCE D3: after load_into_module the reference re-registers
    non-persistent buffers as persistent, so they join state_dict().  Ours
    keeps them non-persistent: the keys are a fresh module's, in its order,
    and the values are what the reference loaded for those keys."""
    loaded = dict(ref_state_dict)
    keys = fresh_state_dict_keys(case)
    missing = [k for k in keys if k not in loaded]
    assert not missing, f"harness: the reference's state_dict lacks {missing}"
    extra = set(loaded) - set(keys)
    assert extra <= non_persistent_buffer_names(case), (
        f"harness: the reference's state_dict gained {extra - non_persistent_buffer_names(case)}"
    )
    return [(k, loaded[k]) for k in keys]


def intended_summary(case: ic.Case, ref_summary: dict) -> dict:
    """The reference's summary of loading a file, turned into what ours must
    produce when loading the same file: the reference's, except D3 and D4."""
    want = copy.deepcopy(ref_summary)
    mapping = want.get("mapping")
    if isinstance(mapping, dict) and "verify_module" in mapping:
        mapping["verify_module"] = intended_verify_module(
            case, ref_summary, mapping["verify_module"]
        )
    module = want.get("module")
    if isinstance(module, dict):
        module["state_dict"] = intended_state_dict(case, module["state_dict"])
    return want


def extra_root_buffer_records(case: ic.Case, options: ic.LoadOptions) -> list:
    """DIVERGENCE D2: the read_tensors() tuples of the root buffers our file
    holds on top of the reference's: module index 0, BUFFER (1), ".name", the
    source values (meta: zeros), a Parameter like every read_tensors() value."""
    keep = ic.make_filter(options.filter_prefix) or (lambda name: True)
    buffers = dict(case.source_module().named_buffers(recurse=False))
    out = []
    for name in case.ours_also_writes:
        if not keep(name):
            continue
        t = buffers[name[1:]]
        if t.device.type == "meta":
            t = torch.zeros(t.shape, dtype=t.dtype)
        record = ic.describe_tensor(t)
        record["class"] = "Parameter"
        record["requires_grad"] = t.dtype.is_floating_point or t.dtype.is_complex
        out.append((0, 1, name, record))
    return out


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ours():
    try:
        import tensorizer
    except Exception as exc:
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
            f"reference driver failed ({label}, rc={proc.returncode}):\n{proc.stderr[-4000:]}",
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
    # ref_driver.write_encrypted's result: path, key, the reference's reads.
    encrypted: dict = field(default_factory=dict)


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
    encrypted_path = str(ref_dir / "encrypted_random_key.tensors")
    jobs.append({"op": "write_encrypted", "path": encrypted_path})
    results = run_reference(ref_python, jobs, interop_dir, "reference")
    errors = {c.name: r for c, r in zip(ic.CASES, results)}
    summaries = {(c.name, o.id): r for (c, o), r in zip(loads, results[len(ic.CASES) : -1])}
    encrypted = {"path": encrypted_path, **results[-1]}
    return Written(paths, errors, summaries, encrypted)


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
        except Exception as exc:
            errors[case.name] = (*ic.error_record(exc), f"{type(exc).__name__}: {exc}")
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
    results = run_reference(ref_python, jobs, interop_dir, "reference_on_ours") if jobs else []
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
        assert not ic.is_error(value), f"reference failed {part}: {summary.get('_errors')}"
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
        # DIVERGENCE D3, D4: the reference's summary, with ours' state_dict()
        # after load_into_module and ours' verify_module.
        intended_summary(case, reference.summaries[(case.name, options.id)]),
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
    assert_same(flat, [(t[2], t[3]) for t in ic.expected_read_tensors(case)], "mapping items")


# --------------------------------------------------------------------------
# Direction 2: ours writes, the reference reads
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, options", [p for p in REF_LOADS if not p.values[0].ours_also_writes]
)
def test_reference_reads_our_file(reference_on_ours, reference, case, options):
    _require_written(reference_on_ours, case, "our writer")
    actual = reference_on_ours.summaries[(case.name, options.id)]
    assert_same(
        actual,
        reference.summaries[(case.name, options.id)],
        "reference load of our file",
    )


@pytest.mark.parametrize("case, options", [p for p in REF_LOADS if p.values[0].ours_also_writes])
def test_reference_reads_our_file_with_root_buffers(
    ours, reference_on_ours, reference, case, options
):
    """DIVERGENCE D2: our file also holds the persistent root buffers.

    The reference reads it; what it loads is the reference's own file plus
    those buffers (read_tensors: names, dtypes, values, tensor types, module
    indices), and it sees what ours sees in the same file (mapping, tree(),
    read_tensors, load_into_module; ours with D3 and D4 applied)."""
    our_path = _require_written(reference_on_ours, case, "our writer")
    ref_on_ours = reference_on_ours.summaries[(case.name, options.id)]
    ref_on_ref = reference.summaries[(case.name, options.id)]
    for part in ("mapping", "read_tensors", "module"):
        assert not ic.is_error(ref_on_ours[part]), (
            f"the reference failed {part} on our file: {ref_on_ours.get('_errors')}"
        )

    loaded = ref_on_ours["read_tensors"]
    extras = [t for t in loaded if t[2] in case.ours_also_writes]
    assert_same(extras, extra_root_buffer_records(case, options), "extra root buffers")
    assert_same(
        [t for t in loaded if t[2] not in case.ours_also_writes],
        ref_on_ref["read_tensors"],
        "our file without the extra root buffers vs the reference's file",
    )

    assert_same(
        ic.summarize(ours, our_path, case, options),
        intended_summary(case, ref_on_ours),
        "our load of our file vs the reference's load of it",
    )


# --------------------------------------------------------------------------
# Byte identity and headers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", _case_params(READABLE))
def test_same_file_header(ours_written, reference, case):
    ref_header = ic.read_file_header(_require_written(reference, case, "reference"))
    our_header = ic.read_file_header(_require_written(ours_written, case, "our writer"))
    assert ref_header["version"] == case.version, "harness: unexpected reference data version"
    want = dict(ref_header)
    if case.ours_also_writes:
        # DIVERGENCE D2: the extra root buffers count, and so do their bytes
        # (none for a meta buffer).
        buffers = dict(case.source_module().named_buffers(recurse=False))
        extra = [buffers[name[1:]] for name in case.ours_also_writes]
        want["tensor_count"] += len(extra)
        want["tensor_size"] += sum(
            t.numel() * t.element_size() for t in extra if t.device.type != "meta"
        )
    assert our_header == want


# DIVERGENCE D2: files with extra root buffers cannot be byte-identical; their
# contents are checked by test_reference_reads_our_file_with_root_buffers.
@pytest.mark.parametrize("case", _case_params(SAME_FILE_CASES))
def test_same_bytes(ours_written, reference, case):
    ref_path = _require_written(reference, case, "reference")
    our_path = _require_written(ours_written, case, "our writer")
    ref_size, our_size = os.path.getsize(ref_path), os.path.getsize(our_path)
    assert our_size == ref_size, f"file size {our_size} != reference {ref_size}"
    if ic.file_digest(our_path) != ic.file_digest(ref_path):
        pytest.fail(_first_difference(our_path, ref_path), pytrace=False)


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
        assert f.read() == golden, "harness: the reference no longer writes the golden bytes"
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == 262327
    if data != golden:
        with open(tmp_path / "want.tensors", "wb") as f:
            f.write(golden)
        pytest.fail(_first_difference(path, str(tmp_path / "want.tensors")), pytrace=False)


# --------------------------------------------------------------------------
# dtypes the reference rejects
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", _case_params([c for c in ic.CASES if c.write_error is not None]))
def test_rejected_dtype(ours_written, reference, case):
    assert reference.errors[case.name] is not None
    error = ours_written.errors[case.name]
    assert error is not None, f"our writer accepted {case.name}"
    assert case.write_error in error[2], error[-1]


# --------------------------------------------------------------------------
# DIVERGENCE D1: encryption is a later issue (issue 4)
# --------------------------------------------------------------------------


def test_encrypted_reference_file(ours, reference):
    """A file the reference encrypted with a random key: without a key ours
    raises CryptographyError, as the reference does; with the key ours
    decrypts exactly what the reference decrypts. (tests/test_encryption.py
    covers encryption in depth.)"""
    enc = reference.encrypted
    without_key, with_key = enc["without_key"], enc["with_key"]
    assert ic.is_error(without_key) and "CryptographyError" in without_key[2], (
        f"harness: the reference read its encrypted file without a key: {without_key}"
    )
    payload_case = ic.Case(name="encrypted", write=None, version=3, payload=ic.encrypted_payload)
    assert not ic.is_error(with_key), f"harness: the reference failed: {with_key}"
    assert_same(
        with_key,
        ic.expected_read_tensors(payload_case),
        "harness: the reference's decrypted tensors vs the payload",
    )

    with pytest.raises(ours.CryptographyError) as no_key:
        ours.TensorDeserializer(enc["path"], device="cpu")
    message = str(no_key.value).lower()
    assert "encrypted" in message and "decryption" in message, no_key.value

    d = ours.TensorDeserializer(
        enc["path"],
        device="cpu",
        encryption=ours.DecryptionParams.from_key(enc["key"]),
        verify_hash=True,
    )
    for name, tensor in ic.encrypted_payload().items():
        assert torch.equal(
            d[name].detach().reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name


# --------------------------------------------------------------------------
# DIVERGENCE D3: load_into_module keeps non-persistent buffers non-persistent
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", _case_params([c for c in MODULE_CASES if not c.ours_also_writes]))
def test_load_into_module_keeps_buffers_non_persistent(ours, reference, case):
    """Into a fresh module, from the reference's file: state_dict() keys are
    the original module's, in order, with the original values; the
    non-persistent buffers are loaded but stay out of state_dict()."""
    path = _require_written(reference, case, "reference")
    source = case.source_module()
    target = case.target_module()
    d = ours.TensorDeserializer(path, device="cpu")
    try:
        d.load_into_module(target)
    finally:
        d.close()

    want = source.state_dict()
    got = target.state_dict()
    assert list(got.keys()) == list(want.keys())
    for key, value in want.items():
        if value.device.type == "meta":
            continue  # nothing to compare; the summaries pin what is loaded
        assert ic.tensor_bytes(got[key]) == ic.tensor_bytes(value), key

    # Non-persistent buffers: loaded where the file has them (written with
    # include_non_persistent_buffers=True), untouched where it has not.
    non_persistent = non_persistent_buffer_names(case)
    assert non_persistent, "harness: the module has no non-persistent buffer"
    stored = {_stored_name_to_state_dict_name(n) for n in _stored_names(ours, path)}
    loaded = dict(target.named_buffers())
    source_buffers = dict(source.named_buffers())
    fresh = dict(case.target_module().named_buffers())
    for name in non_persistent:
        want = source_buffers[name] if name in stored else fresh[name]
        assert ic.tensor_bytes(loaded[name]) == ic.tensor_bytes(want), name


# --------------------------------------------------------------------------
# DIVERGENCE D4: verify_module handles root-module tensors
# --------------------------------------------------------------------------


def _has_root_tensors(case: ic.Case) -> bool:
    return any(True for _ in case.source_module().named_parameters(recurse=False))


def _has_meta_tensors(case: ic.Case) -> bool:
    return any(t.device.type == "meta" for t in _source_tensors(case).values())


# Meta tensors have no data to verify (see intended_verify_module): left out.
ROOT_TENSOR_CASES = [c for c in MODULE_CASES if _has_root_tensors(c) and not _has_meta_tensors(c)]


def _stored_names(ours, path: str) -> list:
    d = ours.TensorDeserializer(path, device="cpu", lazy_load=True)
    try:
        return [name for _, _, name, _ in d.read_tensors()]
    finally:
        d.close()


def _verify(ours, path: str, module) -> tuple:
    d = ours.TensorDeserializer(path, device="cpu")
    try:
        return d.verify_module(module)
    finally:
        d.close()


@pytest.mark.parametrize("writer", ["reference", "ours"])
@pytest.mark.parametrize("case", _case_params(ROOT_TENSOR_CASES))
def test_verify_module_unmodified(ours, reference, ours_written, case, writer):
    """Every stored tensor, root ones (".name") included, reported once and
    True (the reference: root tensors False, twice each)."""
    written = reference if writer == "reference" else ours_written
    path = _require_written(written, case, writer)
    stored = _stored_names(ours, path)
    assert any(n.startswith(".") for n in stored), "harness: no root tensor stored"
    ok, results = _verify(ours, path, case.source_module())
    assert ok is True, [r for r in results if not r[1]]
    assert sorted((n, bool(r)) for n, r in results) == sorted((n, True) for n in stored)
    assert len(results) == len(stored)


@pytest.mark.parametrize("case", _case_params(ROOT_TENSOR_CASES))
def test_verify_module_reports_modified_tensors(ours, reference, case):
    """Changing one root parameter and one nested parameter in place makes
    exactly their entries False."""
    path = _require_written(reference, case, "reference")
    module = case.source_module()
    with torch.no_grad():
        module.w.add_(1)
        module.blocks[0].lin.weight.add_(1)
    changed = {".w", "blocks.0.lin.weight"}
    stored = _stored_names(ours, path)
    assert changed <= set(stored), "harness: the changed tensors are not stored"
    ok, results = _verify(ours, path, module)
    assert ok is False
    assert sorted((n, bool(r)) for n, r in results) == sorted((n, n not in changed) for n in stored)
