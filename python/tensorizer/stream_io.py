"""tensorizer.stream_io: opening byte streams by path or URI.

``open_stream`` has the reference's signature and semantics. Local paths give
ordinary file objects. Remote URIs (http://, https://, s3://, redis://) give
streams backed by the C++ engine's sources: reading one issues ranged
requests through the engine, and passing one to ``TensorDeserializer`` hands
the already-open source to the parallel load pipeline, with every option
given here (credentials, endpoint, TLS, timeouts). ``open_stream("s3://...",
"wb")`` gives a write stream that ``TensorSerializer`` turns into a streamed
multipart upload; written to directly, it uploads what is written on
``close()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from typing import Optional

import numpy as np

from . import _core

__all__ = [
    "CAInfo",
    "CURLStreamFile",
    "HttpOptions",
    "RedisStreamFile",
    "S3UploadOptions",
    "open_stream",
]

_REMOTE_SCHEMES = ("http://", "https://", "s3://", "redis://")
# Schemes the engine can read from (TensorDeserializer).
_ENGINE_READ_SCHEMES = _REMOTE_SCHEMES
_ENGINE_WRITE_SCHEMES = ("s3://",)


def _scheme(path: str) -> Optional[str]:
    head, sep, _ = path.partition("://")
    return head.lower() if sep else None


def check_local_read(path: str) -> None:
    """Kept for callers that validate before opening: every remote scheme is
    readable now, and an unknown one is refused by the engine with its name."""


def check_local_write(path: str) -> None:
    """Refuses remote destinations the engine cannot write to."""
    lowered = path.lower()
    if lowered.startswith(_REMOTE_SCHEMES) and not lowered.startswith(_ENGINE_WRITE_SCHEMES):
        raise ValueError(
            f"{path}: only local paths and s3:// URIs can be written (got a"
            f" {_scheme(path)}:// destination)"
        )


class CAInfo:
    """How TLS certificates are verified, as in tensorizer's CAInfo.

    Exactly one of ``cacert`` (a PEM bundle), ``capath`` (a hashed directory
    of certificates) or ``allow_untrusted=True`` (no verification). Pass
    ``certificate_handling=None`` for the system's default trust store.
    """

    __slots__ = ("_curl_flags", "_options")

    def __init__(
        self,
        *,
        cacert: Optional[str] = None,
        capath: Optional[str] = None,
        allow_untrusted: bool = False,
    ):
        if (cacert, capath).count(None) + (not allow_untrusted) != 2:
            raise ValueError(
                "Exactly one of cacert, capath, or allow_untrusted=True"
                " must be specified. For default certificate verification"
                " behaviour, use certificate_handling=None instead of"
                " an explicit CAInfo instance"
            )
        if cacert is not None:
            if not os.path.isfile(cacert):
                raise ValueError(f"Invalid cacert file path: {cacert!r} is not a file")
            self._curl_flags = ("--cacert", str(cacert))
            self._options = {"ca_file": os.fspath(cacert)}
        elif capath is not None:
            if not os.path.isdir(capath):
                raise ValueError(f"Invalid capath directory path: {capath!r} is not a directory")
            self._curl_flags = ("--capath", str(capath))
            self._options = {"ca_path": os.fspath(capath)}
        else:
            self._curl_flags = ("--insecure",)
            self._options = {"verify_tls": False}

    @property
    def curl_flags(self):
        return self._curl_flags

    def __hash__(self):
        return hash(self._curl_flags)

    def __eq__(self, other):
        return isinstance(other, CAInfo) and self._curl_flags == other._curl_flags


@dataclasses.dataclass(frozen=True)
class HttpOptions:
    """How remote sources connect, wait and retry (an extension of ours).

    Every field left as None keeps the engine's default (docs/configuration.md).
    Durations are in milliseconds.
    """

    connect_timeout_ms: Optional[int] = None
    # A transfer slower than min_speed_bytes_per_s (default 16 KiB/s) for
    # low_speed_timeout_ms (default 15 s) is a stall: dropped and retried from
    # where it stopped (libcurl counts whole seconds; rounded up). HTTP(S),
    # S3 and Redis alike.
    low_speed_timeout_ms: Optional[int] = None
    min_speed_bytes_per_s: Optional[int] = None
    # Consecutive failed attempts of one request before giving up; only an
    # attempt that made real progress (1 MiB, or the rest of the read) starts
    # the count afresh.
    max_retries: Optional[int] = None
    retry_base_delay_ms: Optional[int] = None
    retry_max_delay_ms: Optional[int] = None
    # A bound on the whole load, from the open: past it nothing is retried or
    # waited for, and the load fails with ETIMEDOUT (TimeoutError). None: no
    # deadline.
    deadline_ms: Optional[int] = None

    def _options(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class S3UploadOptions:
    """How an s3:// destination uploads (an extension of ours): parts of
    ``part_bytes`` (S3's minimum is 5 MiB), ``parallel_uploads`` in flight,
    up to ``max_queued_parts`` complete parts waiting before writers block,
    and parts doubling in size after every ``parts_per_size_step``. None
    keeps the engine's default (16 MiB, 4, 4, 1000)."""

    part_bytes: Optional[int] = None
    parallel_uploads: Optional[int] = None
    max_queued_parts: Optional[int] = None
    parts_per_size_step: Optional[int] = None

    def _options(self) -> dict:
        return {f"s3_{k}": v for k, v in dataclasses.asdict(self).items() if v is not None}


class _EngineReadStream(io.RawIOBase):
    """A read-only, seekable stream over an engine source.

    TensorDeserializer uses ``_source`` directly (parallel ranged reads);
    ``read``/``readinto`` issue one ranged read each, so wrap the stream in
    ``io.BufferedReader`` for many small reads.
    """

    def __init__(self, uri: str, options: dict, begin: Optional[int], end: Optional[int]):
        super().__init__()
        self._source = _core.Source.open(uri, options)
        self.name = uri
        size = self._source.size
        self._end = size if end is None else max(0, min(int(end), size))
        self._begin = max(0, min(int(begin or 0), self._end))
        self._pos = self._begin
        self.bytes_read = 0
        self.read_operations = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._end + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._end - self._pos))
        if n == 0:
            return 0
        self._source.read_into(self._pos, np.frombuffer(view[:n], dtype=np.uint8))
        self._pos += n
        self.bytes_read += n
        self.read_operations += 1
        return n

    def fileno(self) -> int:
        raise io.UnsupportedOperation("remote streams have no file descriptor")

    def close(self) -> None:
        self._source = None
        super().close()


class CURLStreamFile(_EngineReadStream):
    """An http(s):// (or presigned S3) URL as a readable, seekable stream."""

    def __init__(
        self,
        uri: str,
        begin: Optional[int] = None,
        end: Optional[int] = None,
        headers=None,
        *,
        buffer_size: Optional[int] = None,
        certificate_handling: Optional[CAInfo] = None,
        http_options: Optional[HttpOptions] = None,
    ) -> None:
        if headers:
            raise ValueError("custom request headers are not supported")
        options = {}
        if certificate_handling is not None:
            options.update(certificate_handling._options)
        if http_options is not None:
            options.update(http_options._options())
        super().__init__(uri, options, begin, end)


class RedisStreamFile(_EngineReadStream):
    """A redis://host:port/prefix key set (tensorizer's to_redis layout) as a
    readable, seekable stream."""

    def __init__(
        self,
        uri: str,
        *,
        begin: Optional[int] = None,
        end: Optional[int] = None,
        buffer_size: Optional[int] = None,
    ) -> None:
        super().__init__(uri, {}, begin, end)


class _S3ReadStream(_EngineReadStream):
    pass


class _S3WriteStream(io.RawIOBase):
    """An s3:// destination. TensorSerializer takes it over untouched (a
    streamed multipart upload of the file it writes); bytes written here
    directly are uploaded the same way, completed on close() and aborted if
    the stream is dropped or closed by an exception in a ``with`` block."""

    def __init__(self, uri: str, options: dict):
        super().__init__()
        self.name = uri
        self._uri = uri
        self._options = options
        self._sink = None
        self._pos = 0
        self._taken = False
        self._aborted = False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def _take_for_serializer(self):
        """(uri, options) for TensorSerializer, which then owns the upload."""
        if self._sink is not None or self._pos:
            raise ValueError(
                f"{self._uri}: bytes were already written to this stream; open a new one"
                " for TensorSerializer"
            )
        self._taken = True
        return self._uri, self._options

    def write(self, data) -> int:
        self._checkClosed()
        if self._taken:
            raise ValueError(f"{self._uri}: this stream belongs to a TensorSerializer")
        view = memoryview(data).cast("B")
        if self._sink is None:
            self._sink = _core.Sink.create(self._uri, self._options)
        self._sink.write_at(self._pos, np.frombuffer(view, dtype=np.uint8))
        self._pos += len(view)
        return len(view)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._taken and not self._aborted:
                if self._sink is None:
                    # An empty object, as closing an empty file would leave.
                    self._sink = _core.Sink.create(self._uri, self._options)
                self._sink.commit()
        finally:
            self._sink = None
            super().close()

    def _abort(self) -> None:
        self._aborted = True
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._abort()
        return super().__exit__(exc_type, exc, tb)

    def __del__(self):
        # Dropped without close(): abort rather than publish a partial object.
        with contextlib.suppress(Exception):
            self._abort()


def _enforce_endpoint_scheme(endpoint: str, force_http: bool) -> str:
    # The reference's rule for an explicitly passed endpoint: https unless
    # force_http; an explicit http:// endpoint needs force_http.
    scheme = _scheme(endpoint)
    if scheme is None:
        return ("http://" if force_http else "https://") + endpoint
    if scheme == "https":
        return "http://" + endpoint[len("https://") :] if force_http else endpoint
    if scheme == "http" and force_http:
        return endpoint
    raise ValueError("Non-HTTPS endpoint URLs are not allowed.")


def _s3_options(
    s3_access_key_id,
    s3_secret_access_key,
    s3_endpoint,
    s3_config_path,
    force_http,
    s3_region_name,
    s3_signature_version,
) -> dict:
    if s3_signature_version not in (None, "v4", "s3v4"):
        raise ValueError(
            f"s3_signature_version {s3_signature_version!r} is not supported: requests are"
            " signed with SigV4 ('v4')"
        )
    options = {}
    if s3_access_key_id is not None:
        options["s3_access_key_id"] = s3_access_key_id
    if s3_secret_access_key is not None:
        options["s3_secret_access_key"] = s3_secret_access_key
    if s3_endpoint:
        options["s3_endpoint"] = _enforce_endpoint_scheme(s3_endpoint, bool(force_http))
    elif force_http is not None:
        options["force_http"] = bool(force_http)
    if s3_config_path is not None:
        path = os.fsdecode(s3_config_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Explicitly specified s3_config_path does not exist: {path}")
        options["s3_config_path"] = path
    if s3_region_name is not None:
        options["s3_region"] = s3_region_name
    return options


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
    certificate_handling: Optional[CAInfo] = None,
    http_options: Optional[HttpOptions] = None,
    s3_upload_options: Optional[S3UploadOptions] = None,
):
    """Opens a local path, an http(s):// URL, an s3:// URI or a redis:// URI.

    Remote URIs are readable with mode "rb"; s3:// is also writable with
    "wb", "wb+", "ab" or "ab+" (a new object, uploaded as it is written).
    S3 credentials and the endpoint come from the arguments, then ~/.s3cfg
    (or ``s3_config_path``), the AWS environment variables and the AWS
    config files (docs/configuration.md). ``http_options`` and
    ``s3_upload_options`` (extensions) set timeouts, retries and the S3
    multipart upload's parts. An os.PathLike is always a
    local path. Write modes on local paths create missing parent directories.
    """
    local_only = isinstance(path_uri, os.PathLike)
    if local_only:
        path_uri = os.fspath(path_uri)
    if isinstance(path_uri, bytes):
        path_uri = os.fsdecode(path_uri)
    path = str(path_uri)
    normalized_mode = "".join(sorted(mode))
    scheme = None if local_only else _scheme(path)

    if scheme in ("http", "https", "redis", "s3"):
        writing = any(c in mode for c in "wax+")
        remote_options = {}
        if certificate_handling is not None:
            remote_options.update(certificate_handling._options)
        if http_options is not None:
            remote_options.update(http_options._options())
        if scheme == "s3":
            if normalized_mode not in ("br", "bw", "ab", "+bw", "+ab"):
                raise ValueError(
                    'Only the modes "rb", "wb[+]", and "ab[+]" are valid'
                    " when opening s3:// streams."
                )
            remote_options.update(
                _s3_options(
                    s3_access_key_id,
                    s3_secret_access_key,
                    s3_endpoint,
                    s3_config_path,
                    force_http,
                    s3_region_name,
                    s3_signature_version,
                )
            )
            if writing:
                if s3_upload_options is not None:
                    remote_options.update(s3_upload_options._options())
                return _S3WriteStream(path, remote_options)
            return _S3ReadStream(path, remote_options, begin, end)
        if normalized_mode != "br":
            raise ValueError(f'Only the mode "rb" is valid when opening {scheme}:// streams.')
        return _EngineReadStream(path, remote_options, begin, end)

    if "b" not in normalized_mode:
        raise ValueError(
            'Only binary modes ("rb", "wb", "wb+", etc.) are valid when opening local file streams.'
        )
    if any(c in normalized_mode for c in "wax"):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
    handle = open(path, mode, buffering=buffer_size or io.DEFAULT_BUFFER_SIZE)
    handle.seek(begin or 0)
    return handle
