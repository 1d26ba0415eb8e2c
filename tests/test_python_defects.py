"""Regressions for defects of the Python layer found by the reliability
review (issue 12): the serializer's lifecycle (#18), errors that must name
the file and tensor (#24), names that cannot round-trip (#27) and secrets
in reprs and tracebacks (#28)."""

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tensorizer import TensorDeserializer, TensorSerializer, _core
from tensorizer.serialization import (
    CryptographyError,
    DecryptionParams,
    EncryptionParams,
)

# --------------------------------------------------------------------------
# #18: an unclosed serializer must not replace a good file with a partial one
# --------------------------------------------------------------------------


def save(path, state_dict):
    s = TensorSerializer(path)
    s.write_state_dict(state_dict)
    s.close()


def write_good(path):
    save(path, {"old": torch.arange(8, dtype=torch.float32)})
    return path.read_bytes()


def loaded(path):
    with TensorDeserializer(path, device="cpu") as d:
        return {k: v.clone() for k, v in d.items()}


def leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name != keep)


def test_serializer_is_a_context_manager_that_commits(tmp_path):
    path = tmp_path / "m.tensors"
    with TensorSerializer(path) as s:
        assert isinstance(s, TensorSerializer)
        s.write_state_dict({"a": torch.ones(3)})
    assert list(loaded(path)) == ["a"]


def test_exception_inside_with_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.tensors"
    before = write_good(path)
    with pytest.raises(RuntimeError, match="interrupted"):
        with TensorSerializer(path) as s:
            s.write_state_dict({"new": torch.ones(1 << 16)})
            raise RuntimeError("interrupted")
    gc.collect()
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path.name) == []
    with pytest.raises(ValueError, match="closed"):
        s.write_state_dict({"more": torch.ones(1)})


def test_unclosed_serializer_that_wrote_nothing_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.tensors"
    before = write_good(path)
    s = TensorSerializer(path)
    del s
    gc.collect()
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path.name) == []


def test_collected_unclosed_serializer_commits_completed_writes(tmp_path):
    """vLLM writes a model and never calls close(): the write must count."""
    path = tmp_path / "m.tensors"
    write_good(path)

    def save_like_vllm():
        s = TensorSerializer(path)
        s.write_state_dict({"w": torch.full((4,), 2.0)})
        s.write_state_dict({"b": torch.full((2,), 3.0)})

    save_like_vllm()
    gc.collect()
    got = loaded(path)
    assert list(got) == ["w", "b"]
    assert torch.equal(got["b"], torch.full((2,), 3.0))


def run_script(tmp_path, body):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_script_dying_between_writes_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.tensors"
    before = write_good(path)
    result = run_script(
        tmp_path,
        f"""
        import torch
        from tensorizer import TensorSerializer
        s = TensorSerializer({str(path)!r})
        s.write_state_dict({{"first": torch.ones(1 << 16)}})
        def more():
            local = TensorSerializer({str(path)!r})
            local.write_state_dict({{"x": torch.ones(4)}})
            raise RuntimeError("died between write calls")
        more()
        """,
    )
    assert "died between write calls" in result.stderr
    assert result.returncode == 1
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path.name) == ["script.py"]


def test_script_ending_without_close_commits(tmp_path):
    path = tmp_path / "m.tensors"
    write_good(path)
    result = run_script(
        tmp_path,
        f"""
        import torch
        from tensorizer import TensorSerializer
        s = TensorSerializer({str(path)!r})
        s.write_state_dict({{"kept": torch.ones(5)}})
        """,
    )
    assert result.returncode == 0, result.stderr
    assert list(loaded(path)) == ["kept"]


# --------------------------------------------------------------------------
# #24: errors that name the file and the tensor, and deep names
# --------------------------------------------------------------------------


def write_raw(path, dtype: bytes, shape, data: bytes, name=b"t"):
    """A file the engine writes as asked, with dtype strings our serializer
    never produces (what a hostile or foreign writer could store)."""
    w = _core.Writer.create(str(path), 1, None, None)
    w.write([(name, 2, 0, dtype, shape, np.frombuffer(data, dtype=np.uint8))])
    w.close()


@pytest.mark.parametrize(
    ("dtype", "count", "width"),
    [
        (b"<V3\x00torch.uint8", 2, 3),
        (b"<V5\x00torch.int8", 2, 5),
        (b"<V16\x00torch.float32", 1, 16),
    ],
)
def test_opaque_widths_numpy_lacks_give_a_clear_error(tmp_path, dtype, count, width):
    path = tmp_path / "v.tensors"
    write_raw(path, dtype, (count,), bytes(count * width))
    with pytest.raises(ValueError) as info:
        TensorDeserializer(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and "'t'" in message and "wrong width" in message, message


def test_opaque_sixteen_byte_width_loads_and_reads_raw(tmp_path):
    path = tmp_path / "v16.tensors"
    values = torch.tensor([1 + 2j, -3.5 + 0.25j], dtype=torch.complex128)
    write_raw(path, b"<V16\x00torch.complex128", (2,), values.numpy().tobytes())
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        assert torch.equal(d["t"], values)
        ((_, _, name, arr, opaque, torch_dtype),) = d.read_numpy_arrays(allow_raw_data=True)
    assert (name, opaque, torch_dtype, arr.dtype.itemsize) == ("t", True, "torch.complex128", 16)
    assert arr.tobytes() == values.numpy().tobytes()


def test_zero_element_tensor_with_huge_dimensions(tmp_path):
    path = tmp_path / "z.tensors"
    write_raw(path, b"<f4", (0, 1 << 40, 1 << 40), b"")
    with pytest.raises(ValueError) as info:
        TensorDeserializer(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and "'t'" in message and "overflow" in message, message
    # Huge but representable: loads as the empty tensor it is.
    write_raw(path, b"<f4", (1 << 40, 0), b"")
    assert loaded(path)["t"].shape == (1 << 40, 0)


def test_quantized_dtype_is_refused_clearly(tmp_path):
    path = tmp_path / "q.tensors"
    write_raw(path, b"|V1\x00torch.qint8", (4,), bytes(4))
    with pytest.raises(ValueError) as info:
        TensorDeserializer(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and "'t'" in message and "quantized" in message, message


def test_load_into_module_with_an_unknown_submodule(tmp_path):
    path = tmp_path / "m.tensors"
    s = TensorSerializer(path)
    s.write_tensor(0, "nosuch.weight", 0, torch.ones(2))
    s.close()
    with pytest.raises(KeyError) as info:
        TensorDeserializer(path, device="cpu").load_into_module(torch.nn.Linear(2, 2))
    message = str(info.value)
    assert str(path) in message and "'nosuch'" in message and "nosuch.weight" in message


def test_key_for_an_unencrypted_file_names_the_file(tmp_path):
    path = tmp_path / "plain.tensors"
    write_good(path)
    with pytest.raises(CryptographyError) as info:
        TensorDeserializer(path, encryption=DecryptionParams.from_key(b"k" * 32))
    assert str(path) in str(info.value)
    data = bytearray(path.read_bytes())
    data[5:9] = (4).to_bytes(4, "little")  # data version 4, not flagged encrypted
    path.write_bytes(bytes(data))
    with pytest.raises(CryptographyError, match="not flagged") as info:
        TensorDeserializer(path, encryption=DecryptionParams.from_key(b"k" * 32))
    assert str(path) in str(info.value)


DEPTH = 3000


def test_structured_names_thousands_of_levels_deep(tmp_path):
    path = tmp_path / "deep.tensors"
    deep = ("a",) * DEPTH
    s = TensorSerializer(path)
    s.write_tensor(0, deep, 2, torch.arange(3))
    s.write_tensor(0, ("b", 0), 2, torch.ones(1))
    s.close()
    for kwargs in ({}, {"lazy_load": True}, {"filter_func": lambda name: name[0] == "a"}):
        with TensorDeserializer(path, device="cpu", **kwargs) as d:
            node = d["a"]
            for _ in range(DEPTH - 1):
                node = node["a"]
            assert torch.equal(node, torch.arange(3))
            tree = d.tree()
            for _ in range(DEPTH):
                tree = tree["a"]
            assert torch.equal(tree, torch.arange(3))
            assert len(d.tree(("a",) * (DEPTH - 1))) == 1
    with TensorDeserializer(path, device="cpu") as d:
        assert [name for _, _, name, _ in d.read_tensors()] == [deep, ("b", 0)]
        assert isinstance(d.tree()["b"], list)


# --------------------------------------------------------------------------
# #27: names starting with 0x1E do not round-trip
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\x1ebad", '\x1e["a"]'])
def test_record_separator_names_are_refused_before_writing(tmp_path, name):
    path = tmp_path / "n.tensors"
    s = TensorSerializer(path)
    with pytest.raises(ValueError, match="0x1E"):
        s.write_state_dict({"fine": torch.ones(2), name: torch.ones(2)})
    with pytest.raises(ValueError, match="0x1E"):
        s.write_tensor(0, name, 2, torch.ones(2))
    # Nothing was written, and the serializer is still usable.
    assert s.total_tensor_bytes == 0
    s.write_state_dict({"fine": torch.ones(2)})
    s.close()
    assert list(loaded(path)) == ["fine"]
    # Inside a structured name the separator is JSON-escaped and round-trips.
    save(path, {"outer": {name: torch.ones(1)}})
    assert list(TensorDeserializer(path, device="cpu")["outer"]) == [name]


# --------------------------------------------------------------------------
# #28: keys and passphrases in reprs and in tracebacks that capture locals
# --------------------------------------------------------------------------

KEY = bytes(range(65, 97))  # printable, so a leak shows in any repr
PASSPHRASE = "correct horse battery staple"


def secrets_in(text: str):
    return [s for s in (KEY.decode(), KEY.hex(), PASSPHRASE) if s in text]


def reachable_reprs(obj):
    """repr() of the object and of every attribute value it holds, as a
    debugger, pytest -l or Sentry would show them."""
    out = [repr(obj)]
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names += list(getattr(cls, "__slots__", ()))
    for name in names:
        try:
            out.append(repr(object.__getattribute__(obj, name)))
        except AttributeError:
            pass
    return out


def test_params_reprs_and_attributes_redact_secrets():
    params = [
        EncryptionParams(KEY),
        EncryptionParams(bytearray(KEY)),
        DecryptionParams.from_key(KEY),
        DecryptionParams.from_string(PASSPHRASE),
        DecryptionParams.from_string(PASSPHRASE.encode()),
    ]
    for p in params:
        for text in reachable_reprs(p) + [str(p)]:
            assert not secrets_in(text), text
        assert "<redacted>" in repr(p)
    # The public attributes still give the caller's values.
    assert params[0].key == KEY and params[2].key == KEY
    assert params[3].source == PASSPHRASE.encode() and params[3].key is None
    key_object = bytearray(KEY)
    assert DecryptionParams.from_key(key_object).key is key_object
    assert EncryptionParams(KEY) == EncryptionParams(KEY) != EncryptionParams(bytes(32))


def frame_locals_text(exc: BaseException) -> str:
    """What pytest -l prints: the repr of every local of every frame."""
    parts = []
    tb = exc.__traceback__
    while tb is not None:
        for name, value in tb.tb_frame.f_locals.items():
            try:
                text = repr(value)
            except Exception as exc:  # a half-built object, as saferepr shows it
                text = f"<repr failed: {exc!r}>"
            parts.append(f"{name} = {text}")
        tb = tb.tb_next
    return "\n".join(parts)


def test_tracebacks_with_locals_show_no_secret(tmp_path):
    plain = tmp_path / "plain.tensors"
    write_good(plain)
    failures = []
    with pytest.raises(CryptographyError) as info:
        TensorDeserializer(plain, encryption=DecryptionParams.from_string(PASSPHRASE))
    failures.append(info.value)
    blocked = tmp_path / "file"
    blocked.write_bytes(b"")
    with pytest.raises(OSError) as info:
        TensorSerializer(blocked / "sub" / "x.tensors", encryption=EncryptionParams(KEY))
    failures.append(info.value)
    with pytest.raises(ValueError) as info:
        EncryptionParams.from_string(PASSPHRASE, salt=b"short")
    failures.append(info.value)
    for exc in failures:
        text = frame_locals_text(exc)
        assert not secrets_in(text), text
