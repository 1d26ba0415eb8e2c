"""Data version 5 (a dimension >= 2^32) against the reference 2.12.1.

A zero-element tensor of shape (2^32, 0) needs the long-shape encoding while
holding no data, so the test stays small. It is written in the middle of
several write calls, so the writer must retro-tag the metadata entries it
already wrote (tag 1) once the first long entry (tag 5) appears."""

import subprocess
import textwrap

import torch

from tensorizer import TensorDeserializer, TensorSerializer

WRITE = textwrap.dedent(
    """
    import sys, torch
    from tensorizer import TensorSerializer
    s = TensorSerializer(sys.argv[1])
    s.write_state_dict({"a": torch.arange(4, dtype=torch.int16)})
    s.write_state_dict({"long": torch.empty((2**32, 0), dtype=torch.int8)})
    s.write_state_dict({"b": torch.ones(2, 3)})
    s.close()
    """
)

READ = textwrap.dedent(
    """
    import sys, torch
    from tensorizer import TensorDeserializer
    d = TensorDeserializer(sys.argv[1], device="cpu", verify_hash=True)
    print(sorted(d), tuple(d["long"].shape), d["a"].tolist(), d["b"].sum().item())
    """
)


def write_ours(path):
    s = TensorSerializer(path)
    s.write_state_dict({"a": torch.arange(4, dtype=torch.int16)})
    s.write_state_dict({"long": torch.empty((2**32, 0), dtype=torch.int8)})
    s.write_state_dict({"b": torch.ones(2, 3)})
    s.close()


def test_long_dimension_files_match_the_reference(tmp_path, ref_python):
    ours, theirs = tmp_path / "ours.tensors", tmp_path / "ref.tensors"
    write_ours(ours)
    subprocess.run([ref_python, "-c", WRITE, str(theirs)], check=True)
    data = ours.read_bytes()
    assert data == theirs.read_bytes()
    assert int.from_bytes(data[5:9], "little") == 5
    assert int.from_bytes(data[9:41], "little") == 2  # versioned metadata flag
    # Every metadata entry carries its tag: 1, 5, 1.
    assert data[73:77] == (1).to_bytes(4, "little")

    d = TensorDeserializer(theirs, device="cpu", verify_hash="all")
    assert tuple(d["long"].shape) == (2**32, 0)
    assert d["a"].tolist() == [0, 1, 2, 3]
    out = subprocess.run(
        [ref_python, "-c", READ, str(ours)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == "['a', 'b', 'long'] (4294967296, 0) [0, 1, 2, 3] 6.0"
