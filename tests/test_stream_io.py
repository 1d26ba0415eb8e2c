"""tensorizer.stream_io.open_stream for local paths (remote schemes arrive
with the remote-sources work and are refused clearly until then)."""

import pytest

from tensorizer import stream_io


def test_write_mode_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "c.bin"
    with stream_io.open_stream(str(target), "wb") as f:
        f.write(b"0123456789")
    assert target.read_bytes() == b"0123456789"


def test_begin_seeks_and_pathlike_and_bytes_paths(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"0123456789")
    with stream_io.open_stream(target, "rb", begin=4) as f:
        assert f.read() == b"456789"
    with stream_io.open_stream(bytes(target), "rb") as f:
        assert f.read(3) == b"012"


def test_text_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="binary"):
        stream_io.open_stream(str(tmp_path / "t.txt"), "w")


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1/x.tensors", "s3://bucket/x.tensors", "redis://localhost/x"]
)
def test_remote_schemes_are_refused_clearly(uri):
    with pytest.raises(ValueError, match="not supported by this release"):
        stream_io.open_stream(uri, "rb")
