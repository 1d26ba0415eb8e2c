"""The one place where engine errors become Python exceptions.

The C++ engine reports failures as (code, message, errno). Each code maps to
the exception type that tensorizer users already catch; every class here also
derives from the builtin that matches it (ValueError for bad files, OSError
for I/O, KeyError for missing names).
"""

import errno as _errno

from . import _core


class CryptographyError(Exception):
    """Encrypted data could not be read or written as asked."""


class HashMismatchError(Exception):
    """A tensor's stored hash does not match its bytes."""


class TensorizerFormatError(ValueError):
    """The bytes are not a valid .tensors file."""


class UnsupportedVersionError(TensorizerFormatError):
    """A .tensors file from a data version or with features we do not know."""


class TensorizerIOError(OSError):
    """Reading or writing the underlying storage failed.

    Raised as the subclass that also derives from the builtin OSError
    subclass for its errno (FileNotFoundError for ENOENT, PermissionError for
    EACCES, ConnectionRefusedError for ECONNREFUSED, ...), so code written
    for local files and sockets catches it unchanged.
    """


def _io_error_classes() -> dict:
    """errno -> a TensorizerIOError subclass per builtin OSError subclass.

    Python itself says which builtin an errno selects (OSError(errno, ...)
    constructs the subclass), so no table of ours can drift from it."""
    by_builtin = {}
    classes = {}
    for number in sorted(_errno.errorcode):
        builtin = type(OSError(number, ""))
        if builtin is OSError:
            continue
        if builtin not in by_builtin:
            by_builtin[builtin] = type(
                f"Tensorizer{builtin.__name__}",
                (TensorizerIOError, builtin),
                {
                    "__module__": __name__,
                    "__doc__": f"A TensorizerIOError that is a {builtin.__name__}.",
                },
            )
        classes[number] = by_builtin[builtin]
    return classes


_IO_ERROR_CLASSES = _io_error_classes()
# Module attributes, so the errors pickle (multiprocessing, concurrent.futures).
globals().update({cls.__name__: cls for cls in _IO_ERROR_CLASSES.values()})


def io_error(number: int, message: str) -> TensorizerIOError:
    """The TensorizerIOError for `number`, as the builtin subclass it selects."""
    return _IO_ERROR_CLASSES.get(number, TensorizerIOError)(number, message)


class TensorNotFoundError(KeyError):
    """A tensor or object named by the caller does not exist."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def _make_error(code: str, message: str, sys_errno: int) -> BaseException:
    if code == "hash_mismatch":
        return HashMismatchError(message)
    if code == "cryptography":
        return CryptographyError(message)
    if code == "format_error":
        return TensorizerFormatError(message)
    if code == "unsupported_version":
        return UnsupportedVersionError(message)
    if code == "io_error":
        return io_error(sys_errno or _errno.EIO, message)
    if code == "not_found":
        return TensorNotFoundError(message)
    if code == "invalid_argument":
        if sys_errno == _errno.ENOENT:
            # A named configuration file that is missing (s3_config_path).
            return io_error(sys_errno, message)
        return ValueError(message)
    if code == "resource_exhausted":
        # The reference raises RuntimeError("Metadata overflow") here.
        return RuntimeError(message)
    return RuntimeError(message)


_core._set_error_factory(_make_error)
