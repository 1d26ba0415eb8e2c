"""tensorizer._crypt, as tensorizer 2.12 names it: whether encryption is
available, and its error type.

Code written for tensorizer checks ``tensorizer._crypt.available`` before
using encryption (tensorizer needs a libsodium it finds at run time). Our
engine is built with libsodium, so encryption is always available; the
value says so by asking the engine for random bytes once, as every
encrypted save does.
"""

from . import _core
from ._errors import CryptographyError

__all__ = ("CryptographyError", "available", "random_bytes")


def random_bytes(size: int) -> bytes:
    """``size`` bytes from libsodium's cryptographic random generator."""
    return _core.random_bytes(size)


def _check_available() -> bool:
    try:
        return len(random_bytes(16)) == 16
    except Exception:
        return False


available: bool = _check_available()
