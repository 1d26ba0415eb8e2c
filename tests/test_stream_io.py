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


@pytest.mark.parametrize("uri", ["http://127.0.0.1:1/x.tensors", "redis://127.0.0.1:1/x"])
@pytest.mark.parametrize("mode", ["wb", "ab", "rb+"])
def test_read_only_remote_schemes_refuse_write_modes(uri, mode):
    with pytest.raises(ValueError, match='Only the mode "rb"'):
        stream_io.open_stream(uri, mode)


def test_s3_refuses_an_explicit_http_endpoint_without_force_http():
    # The reference's rule: an explicitly passed endpoint is https unless
    # force_http; it checks this before any request is made.
    with pytest.raises(ValueError, match="Non-HTTPS endpoint"):
        stream_io.open_stream("s3://b/k", "rb", "id", "secret", "http://127.0.0.1:1")


def test_s3_refuses_signature_versions_other_than_v4():
    with pytest.raises(ValueError, match="SigV4"):
        stream_io.open_stream(
            "s3://b/k", "rb", "id", "secret", "127.0.0.1:1", s3_signature_version="s3"
        )


def test_s3_missing_explicit_config_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="s3_config_path"):
        stream_io.open_stream("s3://b/k", "rb", s3_config_path=tmp_path / "missing.s3cfg")


def test_cainfo_takes_exactly_one_choice(tmp_path):
    with pytest.raises(ValueError, match="Exactly one"):
        stream_io.CAInfo()
    with pytest.raises(ValueError, match="Exactly one"):
        stream_io.CAInfo(capath=str(tmp_path), allow_untrusted=True)
    with pytest.raises(ValueError, match="cacert"):
        stream_io.CAInfo(cacert=str(tmp_path / "missing.pem"))
    assert stream_io.CAInfo(capath=str(tmp_path)).curl_flags == ("--capath", str(tmp_path))


def test_unreachable_remote_is_an_os_error_naming_the_url():
    with pytest.raises(OSError, match=r"http://127\.0\.0\.1:1/x\.tensors"):
        stream_io.open_stream("http://127.0.0.1:1/x.tensors", "rb")
