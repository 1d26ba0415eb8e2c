"""tensorizer.stream_io: opening byte streams by path or URI.

TensorDeserializer reads local paths and http(s):// URLs (through the C++
engine's HttpSource). open_stream opens local paths only in this release;
s3:// and redis:// everywhere, and remote destinations, raise a clear error
until those backends land.
"""

import io
import os
from typing import Optional

_REMOTE_SCHEMES = ("http://", "https://", "s3://", "redis://")
# Schemes the engine can read from (TensorDeserializer).
_ENGINE_READ_SCHEMES = ("http://", "https://", "s3://", "redis://")


def _scheme_error(path: str) -> ValueError:
    return ValueError(
        f"{path}: remote sources and destinations (http, https, s3, redis) are"
        " not supported by this release yet"
    )


def check_local_read(path: str) -> None:
    """Refuses the schemes that the engine cannot read from yet."""
    lowered = path.lower()
    if lowered.startswith(_REMOTE_SCHEMES) and not lowered.startswith(_ENGINE_READ_SCHEMES):
        raise _scheme_error(path)


def check_local_write(path: str) -> None:
    if path.lower().startswith(_REMOTE_SCHEMES):
        raise _scheme_error(path)


def open_stream(
    path_uri,
    mode: str = "rb",
    s3_access_key_id: Optional[str] = None,
    s3_secret_access_key: Optional[str] = None,
    s3_endpoint: Optional[str] = None,
    s3_config_path=None,
    buffer_size: Optional[int] = None,
    force_http: Optional[bool] = None,
    *,
    begin: Optional[int] = None,
    end: Optional[int] = None,
    s3_region_name: Optional[str] = None,
    s3_signature_version: Optional[str] = None,
    certificate_handling=None,
):
    """Opens a binary stream, like tensorizer.stream_io.open_stream.

    Write modes create missing parent directories. ``begin`` seeks to that
    offset; ``end`` applies to ranged remote reads only.
    """
    if isinstance(path_uri, os.PathLike):
        path_uri = os.fspath(path_uri)
    if isinstance(path_uri, bytes):
        path_uri = os.fsdecode(path_uri)
    if "b" not in mode:
        raise ValueError(f"Only binary modes are supported (got mode {mode!r})")
    path = str(path_uri)
    # open_stream returns local file objects only: every remote scheme is
    # still refused here.
    check_local_write(path)
    if any(c in mode for c in "wax+"):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
    handle = open(path, mode, buffering=buffer_size or io.DEFAULT_BUFFER_SIZE)
    if begin:
        handle.seek(begin)
    return handle
