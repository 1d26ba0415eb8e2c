"""tensorizer.torch_compat: torch.save / torch.load with a .tensors sidecar.

The reference tensorizer 2.12.1 runs once, in its own venv, to load the files
we write and to write files for us to load; its sidecar bytes must equal
ours. The rest checks the filename rules, save_func / load_func, context
scoping and bad input locally.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REF_VERSION = "2.12.1"


def make_payload():
    """A module, storage-sharing views (one with another dtype), an opaque
    dtype, a non-contiguous view, a meta tensor and plain Python values."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(16, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)
    )
    a = torch.arange(6, dtype=torch.int64)
    c = torch.tensor((), dtype=torch.int64)
    c.set_(a)
    d = c.view(torch.float64)
    return {
        "model": model,
        "shared": [a, c, d],
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "view": torch.randn(4, 6)[:, 1:4],
        "meta": torch.empty(2, 3, device="meta"),
        "extra": [1, "two", 3.0, torch.device("meta")],
    }


def summarize(payload) -> dict:
    """What a load must give back, in a form plain torch.save can hold
    (no storage viewed by two dtypes), to compare across the two venvs."""
    a, c, d = payload["shared"]
    return {
        "model": {k: v.clone() for k, v in payload["model"].state_dict().items()},
        "shared": [t.clone() for t in payload["shared"]],
        "shared_is_set": [c.is_set_to(a), d.is_set_to(a)],
        "bf16": payload["bf16"].clone(),
        "view": payload["view"].clone(),
        "view_stride": payload["view"].stride(),
        "meta": (payload["meta"].is_meta, tuple(payload["meta"].shape), payload["meta"].dtype),
        "extra": payload["extra"],
    }


def assert_same(expected, actual, where="payload"):
    assert type(actual) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual.view(torch.uint8), expected.view(torch.uint8)), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    else:
        assert actual == expected, where


def assert_payload_equal(expected, loaded):
    assert_same(summarize(expected), summarize(loaded))
    assert summarize(loaded)["shared_is_set"] == [True, True]


# --------------------------------------------------------------------------
# The reference side: runs in the reference's venv (see run_reference)
# --------------------------------------------------------------------------


def _ref_main() -> None:
    warnings.filterwarnings("ignore")
    import tensorizer
    from tensorizer.serialization import DecryptionParams, EncryptionParams
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    job = json.loads(Path(sys.argv[1]).read_text())
    key = bytes.fromhex(job["key"])
    # Read what we wrote, and store it back with plain torch.save.
    with tensorizer_loading(device="cpu"):
        plain = torch.load(job["ours_plain"], weights_only=False)
    with tensorizer_loading(device="cpu", encryption=DecryptionParams.from_key(key)):
        encrypted = torch.load(job["ours_encrypted"], weights_only=False)
    torch.save({"plain": summarize(plain), "encrypted": summarize(encrypted)}, job["read_back"])
    # Write the same payload as we do (plain torch.save cannot hold it:
    # two dtypes view one storage).
    payload = make_payload()
    with tensorizer_saving():
        torch.save(payload, job["ref_plain"])
    with tensorizer_saving(encryption=EncryptionParams(key)):
        torch.save(payload, job["ref_encrypted"])
    info = {"version": tensorizer.__version__, "file": tensorizer.__file__}
    Path(sys.argv[2]).write_text(json.dumps(info))


@pytest.fixture(scope="module")
def interop(ref_python, tmp_path_factory):
    from tensorizer import EncryptionParams
    from tensorizer.torch_compat import tensorizer_saving

    workdir = tmp_path_factory.mktemp("torch_compat")
    payload = make_payload()
    encryption = EncryptionParams.random()
    job = {
        "key": bytes(encryption.key).hex(),
        "ours_plain": str(workdir / "ours" / "m.pt"),
        "ours_encrypted": str(workdir / "ours" / "enc.pt"),
        "ref_plain": str(workdir / "ref" / "m.pt"),
        "ref_encrypted": str(workdir / "ref" / "enc.pt"),
        "read_back": str(workdir / "read_back.pt"),
    }
    (workdir / "ours").mkdir()
    (workdir / "ref").mkdir()
    with tensorizer_saving():
        torch.save(payload, job["ours_plain"])
    with tensorizer_saving(encryption=encryption):
        torch.save(payload, job["ours_encrypted"])

    job_path, out_path = workdir / "job.json", workdir / "out.json"
    job_path.write_text(json.dumps(job))
    script = (
        f"import sys; sys.path.insert(0, {str(HERE)!r});"
        " import test_torch_compat; test_torch_compat._ref_main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [ref_python, "-c", script, str(job_path), str(out_path)],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"reference side failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    info = json.loads(out_path.read_text())
    if info["version"] != REF_VERSION or "site-packages" not in info["file"]:
        pytest.fail(f"the reference side imported {info}, not tensorizer {REF_VERSION}")
    return payload, encryption, job


def test_reference_loads_our_files(interop):
    payload, _, job = interop
    read_back = torch.load(job["read_back"], weights_only=False)
    for name in ("plain", "encrypted"):
        assert_same(summarize(payload), read_back[name], name)


def test_we_load_reference_files(interop):
    from tensorizer import CryptographyError, DecryptionParams
    from tensorizer.torch_compat import tensorizer_loading

    payload, encryption, job = interop
    with tensorizer_loading(device="cpu"):
        assert_payload_equal(payload, torch.load(job["ref_plain"], weights_only=False))
    with tensorizer_loading(device="cpu", encryption=DecryptionParams.from_key(encryption.key)):
        assert_payload_equal(payload, torch.load(job["ref_encrypted"], weights_only=False))
    with pytest.raises(CryptographyError), tensorizer_loading(device="cpu"):
        torch.load(job["ref_encrypted"], weights_only=False)


def test_sidecar_bytes_match_reference(interop):
    _, _, job = interop
    ours = Path(job["ours_plain"] + ".tensors").read_bytes()
    theirs = Path(job["ref_plain"] + ".tensors").read_bytes()
    assert ours == theirs
    # Only the storages with data went to the sidecar: model (5), shared (1),
    # bf16, view; the meta tensor stays in the .pt file.
    from tensorizer import TensorDeserializer

    with TensorDeserializer(job["ours_plain"] + ".tensors", device="cpu") as d:
        assert len(d.tree()) == 8


# --------------------------------------------------------------------------
# Filename rules
# --------------------------------------------------------------------------


@pytest.fixture
def sd():
    torch.manual_seed(1)
    return {"w": torch.randn(4, 4), "b": torch.arange(3)}


def assert_sd_equal(expected, loaded):
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("kind", ["str", "path"])
def test_default_sidecar_is_f_plus_tensors(tmp_path, sd, kind):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    pt = tmp_path / "model.pt"
    f = {"str": str(pt), "path": pt}[kind]
    with tensorizer_saving():
        torch.save(sd, f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.tensors"]
    with tensorizer_loading(device="cpu"):
        assert_sd_equal(sd, torch.load(f))


def test_file_object_uses_its_name(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    pt = tmp_path / "model.pt"
    with tensorizer_saving(), open(pt, "wb") as f:
        torch.save(sd, f)
    assert (tmp_path / "model.pt.tensors").is_file()
    with tensorizer_loading(device="cpu"), open(pt, "rb") as f:
        assert_sd_equal(sd, torch.load(f))


def test_bytesio_saves_plainly_with_a_warning(sd, caplog):
    from tensorizer.torch_compat import tensorizer_saving

    buffer = io.BytesIO()
    with caplog.at_level(logging.WARNING, "tensorizer.torch_compat"), tensorizer_saving():
        torch.save(sd, buffer)
    assert "Cannot infer a .tensors location from an io.BytesIO" in caplog.text
    buffer.seek(0)
    assert_sd_equal(sd, torch.load(buffer))  # an ordinary torch file


def test_nameless_file_object_is_a_clear_error(sd):
    from tensorizer.torch_compat import tensorizer_saving

    class Sink(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            return len(b)

    with pytest.raises(TypeError, match="Cannot infer a .tensors location from Sink"):
        with tensorizer_saving():
            torch.save(sd, Sink())


def test_callback_chooses_the_location_or_none(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    def location(f):
        name = os.fspath(f)
        return None if name.endswith("plain.pt") else name.replace(".pt", "-data.tensors")

    with tensorizer_saving(location):
        torch.save(sd, tmp_path / "m.pt")
        torch.save(sd, tmp_path / "plain.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-data.tensors", "m.pt", "plain.pt"]
    with tensorizer_loading(location, device="cpu"):
        assert_sd_equal(sd, torch.load(tmp_path / "m.pt"))
        assert_sd_equal(sd, torch.load(tmp_path / "plain.pt"))


def test_save_without_tensors_writes_no_sidecar(tmp_path):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with tensorizer_saving():
        torch.save({"a": 1, "meta": torch.empty(3, device="meta")}, tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    with tensorizer_loading():
        loaded = torch.load(tmp_path / "m.pt")
    assert loaded["a"] == 1 and loaded["meta"].is_meta


# --------------------------------------------------------------------------
# save_func / load_func, arguments
# --------------------------------------------------------------------------


def test_save_func_and_load_func(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    saved = {}

    def save_func(file_obj, tensors, kwargs):
        saved.update(file_obj=file_obj, tensors=list(tensors), kwargs=kwargs)

    with tensorizer_saving(save_func=save_func, marker=1):
        torch.save(sd, tmp_path / "m.pt")
    assert saved["file_obj"] == str(tmp_path / "m.pt") + ".tensors"
    assert saved["kwargs"] == {"marker": 1}
    assert [t.dtype for t in saved["tensors"]] == [torch.uint8, torch.uint8]
    assert not (tmp_path / "m.pt.tensors").exists()

    # Hand the bytes back as views into one buffer, which a storage cannot
    # be: they must be copied out.
    buffer = torch.cat(saved["tensors"])
    views, start = [], 0
    for t in saved["tensors"]:
        views.append(buffer[start : start + t.numel()])
        start += t.numel()
    calls = []

    def load_func(file_obj, kwargs):
        calls.append((file_obj, kwargs))
        return views

    with tensorizer_loading(load_func=load_func, device="cpu"):
        assert_sd_equal(sd, torch.load(tmp_path / "m.pt"))
    assert calls == [(str(tmp_path / "m.pt") + ".tensors", {"device": "cpu"})]


def test_positional_arguments_pass_through(tmp_path, sd):
    # tensorizer 2.12.1 passes pickle_module by keyword after *args, so
    # torch.save(obj, f, pickle, 2) fails there; here it reaches torch.
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with tensorizer_saving():
        torch.save(sd, tmp_path / "m.pt", pickle, 4)
    with tensorizer_loading(device="cpu"):
        assert_sd_equal(sd, torch.load(tmp_path / "m.pt", "cpu", pickle))


def test_other_pickle_module_is_refused(tmp_path, sd):
    import types

    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    other = types.ModuleType("other_pickle")
    with pytest.raises(ValueError, match="pickle_module other than the default"):
        with tensorizer_saving():
            torch.save(sd, tmp_path / "m.pt", pickle_module=other)
    with pytest.raises(ValueError, match="pickle_module other than the default"):
        with tensorizer_loading():
            torch.load(tmp_path / "m.pt", pickle_module=other)


def test_legacy_torch_format(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with tensorizer_saving():
        torch.save(sd, tmp_path / "m.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "m.pt.tensors").is_file()
    with tensorizer_loading(device="cpu"):
        assert_sd_equal(sd, torch.load(tmp_path / "m.pt"))


def test_weights_only(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with tensorizer_saving():
        torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(RuntimeError, match="explicit pickle_module"):
        with tensorizer_loading(device="cpu"):
            torch.load(tmp_path / "m.pt", weights_only=True)
    with tensorizer_loading(device="cpu", suppress_weights_only=True):
        assert_sd_equal(sd, torch.load(tmp_path / "m.pt", weights_only=True))


# --------------------------------------------------------------------------
# Scoping
# --------------------------------------------------------------------------


def test_torch_functions_are_restored_even_after_an_exception(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    original_save, original_load = torch.save, torch.load
    with pytest.raises(KeyError), tensorizer_saving(), tensorizer_loading():
        assert torch.save is not original_save and torch.load is not original_load
        with tensorizer_saving():
            pass
        assert torch.save is not original_save
        raise KeyError("boom")
    assert torch.save is original_save and torch.load is original_load


def test_other_threads_save_plainly(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_saving

    def save_elsewhere():
        torch.save(sd, tmp_path / "thread.pt")

    with tensorizer_saving():
        thread = threading.Thread(target=save_elsewhere)
        thread.start()
        thread.join()
        torch.save(sd, tmp_path / "main.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.pt", "main.pt.tensors", "thread.pt"]
    assert_sd_equal(sd, torch.load(tmp_path / "thread.pt"))


def test_asyncio_tasks_have_their_own_contexts(tmp_path, sd):
    from tensorizer import DecryptionParams, EncryptionParams
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    keys = [EncryptionParams.random() for _ in range(2)]

    async def round_trip(i, started):
        pt = tmp_path / f"{i}.pt"
        with tensorizer_saving(encryption=keys[i]):
            started.set()
            await asyncio.sleep(0)  # the other task runs its own context here
            torch.save(sd, pt)
        with tensorizer_loading(device="cpu", encryption=DecryptionParams.from_key(keys[i].key)):
            await asyncio.sleep(0)
            return torch.load(pt)

    async def main():
        events = [asyncio.Event(), asyncio.Event()]
        return await asyncio.gather(*(round_trip(i, events[i]) for i in range(2)))

    for loaded in asyncio.run(main()):
        assert_sd_equal(sd, loaded)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_missing_sidecar_names_the_file(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with tensorizer_saving():
        torch.save(sd, tmp_path / "m.pt")
    (tmp_path / "m.pt.tensors").unlink()
    with pytest.raises(OSError, match="m.pt.tensors") as raised, tensorizer_loading():
        torch.load(tmp_path / "m.pt")
    assert raised.value.errno == errno.ENOENT


def test_sidecar_with_too_few_tensors(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with tensorizer_saving():
        torch.save(sd, tmp_path / "m.pt")
        torch.save({"w": sd["w"]}, tmp_path / "one.pt")
    os.replace(tmp_path / "one.pt.tensors", tmp_path / "m.pt.tensors")
    with pytest.raises(pickle.UnpicklingError, match=r"refers to tensor 1.*holds 1"):
        with tensorizer_loading(device="cpu"):
            torch.load(tmp_path / "m.pt")


def test_sidecar_that_is_not_a_torch_compat_file(tmp_path, sd):
    from tensorizer import TensorSerializer
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with tensorizer_saving():
        torch.save(sd, tmp_path / "m.pt")
    with TensorSerializer(tmp_path / "m.pt.tensors") as serializer:
        serializer.write_state_dict(sd)
    with pytest.raises(pickle.UnpicklingError, match="not a torch_compat .tensors file"):
        with tensorizer_loading(device="cpu"):
            torch.load(tmp_path / "m.pt")


def test_sidecar_data_without_a_location(tmp_path, sd):
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with tensorizer_saving():
        torch.save(sd, tmp_path / "m.pt")
    buffer = io.BytesIO((tmp_path / "m.pt").read_bytes())
    with pytest.raises(pickle.UnpicklingError, match="no location for it is known"):
        with tensorizer_loading():
            torch.load(buffer)


def test_unknown_format_version(tmp_path, sd, monkeypatch):
    from tensorizer import torch_compat
    from tensorizer.torch_compat import tensorizer_loading, tensorizer_saving

    with monkeypatch.context() as patch:
        patch.setattr(torch_compat, "_PID_VERSION", 1)
        with tensorizer_saving():
            torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(pickle.UnpicklingError, match=r"data version \(1\)"):
        with tensorizer_loading(device="cpu"):
            torch.load(tmp_path / "m.pt")
