"""Encryption and decryption parameters: the tensorizer 2.12.1 API.

`EncryptionParams` (for TensorSerializer) carries a 32-byte XSalsa20 key and,
when the key came from a passphrase, the Argon2id parameters that are stored
in every tensor's key-derivation chunk. `DecryptionParams` (for
TensorDeserializer) carries either an exact key or the passphrase; the
derivation parameters of a passphrase come from the file.

The classes mirror the reference's public surface: the same constructors and
factories, the same validation order, exception types and messages, and the
same dataclass reprs and equality. The crypto itself (libsodium) lives in the
engine: `_core.random_bytes` and `_core.derive_key` are looked up when called,
so this module imports on its own.

For the engine, `EncryptionParams._kdf` is ``(opslimit, memlimit, salt)`` as
plain ints and bytes for a passphrase-derived key, None for an exact key.

Secrets never show: unlike the reference, whose dataclass reprs print the
raw key and passphrase (and so does every traceback that captures locals,
pytest -l or Sentry), the reprs here say ``<redacted>``, and the objects keep
their key and passphrase in a `Secret`, whose repr is redacted too. The
public attributes (``.key``, ``.source``) still return the caller's bytes.
"""

import dataclasses
from enum import IntEnum
from typing import Optional, Tuple, Union

from . import _core
from ._errors import CryptographyError

__all__ = ["DecryptionParams", "EncryptionParams"]


class Secret:
    """A key or passphrase that no repr or str shows."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    @staticmethod
    def reveal(secret: Optional["Secret"]):
        return None if secret is None else secret.value


def _secret_property(slot: str, doc: str) -> property:
    def get(self):
        return Secret.reveal(getattr(self, slot))

    def set_(self, value):
        setattr(self, slot, None if value is None else Secret(value))

    return property(get, set_, doc=doc)


def _redacted(value) -> str:
    return "None" if value is None else "<redacted>"

# libsodium constants (crypto_secretbox_xsalsa20poly1305 and crypto_pwhash
# with Argon2id v1.3), identical on every 64-bit platform.
KEY_BYTES = 32
SALT_BYTES = 16
ALG_ARGON2ID13 = 2
OPSLIMIT_MIN = 1
OPSLIMIT_INTERACTIVE = 2
OPSLIMIT_MODERATE = 3
OPSLIMIT_SENSITIVE = 4
OPSLIMIT_MAX = 0xFFFFFFFF
MEMLIMIT_MIN = 8192
MEMLIMIT_INTERACTIVE = 67108864
MEMLIMIT_MODERATE = 268435456
MEMLIMIT_SENSITIVE = 1073741824
MEMLIMIT_MAX = 4398046510080
PASSWD_MIN = 0
PASSWD_MAX = 0xFFFFFFFF

_Buffer = Union[bytes, bytearray, memoryview]


def _byte_length(buffer) -> int:
    # A memoryview of wider items has len() in items, not bytes; the reference
    # measures len() and then keeps bytes(buffer), so it would accept such a
    # view with the wrong number of key bytes. Count bytes instead.
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def _range_check(value, lower: int, upper: int, name: str) -> None:
    if not (lower <= value <= upper):
        # "[lower, upper)" although upper is allowed: the reference's wording.
        raise ValueError(f"Invalid {name}, must be in the range [{lower}, {upper})")


@dataclasses.dataclass(init=False)
class PWHash:
    """Argon2id parameters of a passphrase-derived key (reference: _crypt.PWHash).

    Fields keep what the caller passed (enums stay enums, a bytearray salt
    stays a bytearray) so reprs and equality match the reference; the engine
    reads the snapshot taken at construction through `params()`.
    """

    __slots__ = ("_snapshot", "alg", "memlimit", "opslimit", "salt")

    opslimit: int
    memlimit: int
    alg: int
    salt: _Buffer

    def __init__(
        self,
        salt: Optional[_Buffer] = None,
        opslimit: int = OPSLIMIT_MODERATE,
        memlimit: int = MEMLIMIT_MODERATE,
    ):
        if salt is None:
            salt = _core.random_bytes(SALT_BYTES)
        elif not isinstance(salt, (bytes, bytearray, memoryview)):
            raise TypeError(
                "Invalid type for salt,"
                " expected bytes, bytearray, or memoryview;"
                f" got {type(salt).__name__}"
            )
        length = _byte_length(salt)
        if length != SALT_BYTES:
            raise ValueError(f"Invalid salt size, {length} != {SALT_BYTES}")
        _range_check(opslimit, OPSLIMIT_MIN, OPSLIMIT_MAX, "opslimit")
        _range_check(memlimit, MEMLIMIT_MIN, MEMLIMIT_MAX, "memlimit")
        self.opslimit = opslimit
        self.memlimit = memlimit
        self.alg = ALG_ARGON2ID13
        self.salt = salt
        self._snapshot = (int(opslimit), int(memlimit), bytes(salt))

    def params(self) -> Tuple[int, int, bytes]:
        return self._snapshot

    def hash(self, passwd: bytes) -> bytes:
        if not isinstance(passwd, bytes):
            raise TypeError(
                f"Invalid type for password, expected bytes, got {type(passwd).__name__}"
            )
        _range_check(len(passwd), PASSWD_MIN, PASSWD_MAX, "password length")
        passwd = Secret(passwd)  # not in tracebacks that show locals
        opslimit, memlimit, salt = self._snapshot
        try:
            key = _core.derive_key(passwd.value, opslimit, memlimit, salt)
        except (CryptographyError, MemoryError) as exc:
            raise CryptographyError("Password hashing failed. May have run out of memory.") from exc
        return bytes(key)


@dataclasses.dataclass(init=False, repr=False)
class EncryptionParams:
    """
    Defines encryption parameters for a TensorSerializer.

    Three ways to make one:

    #. `EncryptionParams.random()`: a random 32-byte key. Fastest and most
       secure; save ``.key`` to decrypt later with
       `DecryptionParams.from_key()`.
    #. `EncryptionParams.from_string()`: a key derived from a passphrase with
       Argon2id (RFC 9106). The salt and difficulty are stored in the file, so
       `DecryptionParams.from_string()` with the same passphrase decrypts it.
    #. `EncryptionParams(key=...)`: an exact 32-byte key of your own.
    """

    __slots__ = ("_algorithm", "_key")

    class _Algorithm:
        __slots__ = ()

    @dataclasses.dataclass
    class _FromStringPWHashAlgorithm(_Algorithm):
        __slots__ = ("pwhash_params",)
        pwhash_params: PWHash

    key: bytes
    _algorithm: Optional[_Algorithm]

    def __init__(self, key: bytes):
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(
                "Encryption key must be a cryptographically secure bytestring."
                " To derive an encryption key from an arbitrary string,"
                " use EncryptionParams.from_string()"
            )
        length = _byte_length(key)
        if length != KEY_BYTES:
            raise ValueError(
                "Invalid encryption key length,"
                f" should be {KEY_BYTES} bytes;"
                f" got {length} bytes instead."
                " To generate a valid encryption key from any string"
                " or bytes object,"
                " use EncryptionParams.from_string()"
            )
        self.key = bytes(key)
        self._algorithm = None

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(key=<redacted>, _algorithm={self._algorithm!r})"

    @classmethod
    def random(cls) -> "EncryptionParams":
        """
        Generates a random encryption key with no associated source string.

        Save the resulting key (``EncryptionParams.key``) to decrypt later
        with `DecryptionParams.from_key()`.
        """
        return cls(_core.random_bytes(KEY_BYTES))

    class OpsLimit(IntEnum):
        """
        Argon2id CPU cost presets (libsodium's crypto_pwhash OPSLIMIT_*):
        `MIN` < `INTERACTIVE` < `MODERATE` < `SENSITIVE`.
        """

        MIN = OPSLIMIT_MIN
        INTERACTIVE = OPSLIMIT_INTERACTIVE
        MODERATE = OPSLIMIT_MODERATE
        SENSITIVE = OPSLIMIT_SENSITIVE

    class MemLimit(IntEnum):
        """
        Argon2id memory cost presets in bytes (libsodium's crypto_pwhash
        MEMLIMIT_*): `MIN` < `INTERACTIVE` < `MODERATE` < `SENSITIVE`.
        """

        MIN = MEMLIMIT_MIN
        INTERACTIVE = MEMLIMIT_INTERACTIVE
        MODERATE = MEMLIMIT_MODERATE
        SENSITIVE = MEMLIMIT_SENSITIVE

    @property
    def salt(self) -> bytes:
        """
        Cryptographic salt used for key derivation (stored in the file).

        Raises:
            ValueError: If no salt is being used for key derivation.
        """
        if isinstance(self._algorithm, self._FromStringPWHashAlgorithm):
            # The salt the key was derived with and the file stores, even if
            # the caller's buffer changed since.
            return self._algorithm.pwhash_params.params()[2]
        elif self._algorithm is None:
            raise ValueError(
                "An exact binary key is being used."
                " Exact binary keys do not use key derivation algorithms,"
                " and thus have no salt."
            )
        else:
            raise ValueError("The key derivation algorithm in use does not use a salt.")

    @property
    def _kdf(self) -> Optional[Tuple[int, int, bytes]]:
        """(opslimit, memlimit, salt) of a passphrase-derived key, else None."""
        if isinstance(self._algorithm, self._FromStringPWHashAlgorithm):
            return self._algorithm.pwhash_params.params()
        return None

    @classmethod
    def from_string(
        cls,
        source: Union[str, bytes],
        opslimit: Union[OpsLimit, int, None] = None,
        memlimit: Union[MemLimit, int, None] = None,
        salt: Union[str, bytes, None] = None,
        *,
        encoding="utf-8",
    ) -> "EncryptionParams":
        """
        Generates an encryption key from any string with Argon2id.

        Args:
            source: The source string from which to derive a key.
            opslimit: CPU difficulty, an `EncryptionParams.OpsLimit` preset or
                an int; None (default) means ``OpsLimit.MODERATE``.
            memlimit: RAM in bytes, an `EncryptionParams.MemLimit` preset or an
                int; None (default) means ``MemLimit.MODERATE``.
            salt: 16 bytes stored in the file; None (default) for a random one.
            encoding: Encoding of `source` when it is a ``str``.

        Returns:
            An `EncryptionParams` instance to pass to a `TensorSerializer`.
        """
        source = Secret(source)  # not in tracebacks that show locals
        if not source.value:
            raise ValueError("Source cannot be empty")
        if isinstance(opslimit, cls.MemLimit) or not isinstance(
            opslimit, (cls.OpsLimit, int, type(None))
        ):
            raise TypeError(
                "opslimit parameter: expected EncryptionParams.OpsLimit,"
                f" int, or None; {opslimit.__class__.__name__} found"
            )
        if isinstance(memlimit, cls.OpsLimit) or not isinstance(
            memlimit, (cls.MemLimit, int, type(None))
        ):
            raise TypeError(
                "memlimit parameter: expected EncryptionParams.MemLimit,"
                f" int, or None; {memlimit.__class__.__name__} found"
            )
        if isinstance(source.value, str):
            source = Secret(source.value.encode(encoding))
        if opslimit is None:
            opslimit = cls.OpsLimit.MODERATE
        if memlimit is None:
            memlimit = cls.MemLimit.MODERATE
        pwhash_params = PWHash(salt=salt, opslimit=opslimit, memlimit=memlimit)
        encryption_params = cls(key=pwhash_params.hash(source.value))
        encryption_params._algorithm = cls._FromStringPWHashAlgorithm(pwhash_params=pwhash_params)
        return encryption_params


@dataclasses.dataclass(init=False, repr=False)
class DecryptionParams:
    """
    Defines decryption parameters for a TensorDeserializer.

    #. `DecryptionParams.from_string()`: the passphrase given to
       `EncryptionParams.from_string()`; the salt and difficulty come from
       the file.
    #. `DecryptionParams.from_key()`: an exact key, ``EncryptionParams.key``,
       however it was made (always faster).
    """

    key: Optional[bytes]
    source: Optional[bytes]

    def __init__(self):
        self.key = None
        self.source = None
        # The most Argon2id work (opslimit, and memory in bytes) a file may
        # ask of a passphrase load; a tensor asking for more is refused with
        # CryptographyError. The file chooses its parameters, so the default
        # is the strongest preset (sensitive: 4, 1 GiB); raise them on the
        # instance only for files you trust. Plain attributes rather than
        # dataclass fields or from_string() arguments, so reprs, equality and
        # signatures stay the reference's.
        self.max_opslimit = OPSLIMIT_SENSITIVE
        self.max_memlimit = MEMLIMIT_SENSITIVE

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(key={_redacted(self._key)},"
            f" source={_redacted(self._source)})"
        )

    @classmethod
    def from_string(cls, source: Union[str, bytes], *, encoding="utf-8") -> "DecryptionParams":
        """
        Reverses `EncryptionParams.from_string()`. Files encrypted with
        `EncryptionParams.random()` or an exact key need `from_key()`.
        A load refuses files whose key derivation asks for more than
        `max_opslimit` / `max_memlimit` (attributes of the result).

        Args:
            source: Source string to use for decryption.
            encoding: Encoding of `source` when it is a ``str``.
        """
        if not source:
            raise ValueError("Source cannot be empty")
        if isinstance(source, str):
            source = source.encode(encoding)
        elif not isinstance(source, bytes):
            raise TypeError("Invalid source type: must be str or bytes")
        params = cls()
        params.source = source
        return params

    @classmethod
    def from_key(cls, key: bytes) -> "DecryptionParams":
        """Decrypt with an exact key (``EncryptionParams.key``)."""
        if not key:
            raise ValueError("Key cannot be empty")
        elif len(key) != KEY_BYTES:
            raise ValueError(
                "Invalid decryption key length,"
                f" should be {KEY_BYTES} bytes;"
                f" got {len(key)} bytes instead."
                " DecryptionParams.from_key() should be used with a key"
                " read from EncryptionParams.key."
                " To decrypt with an arbitrary string instead of a binary key,"
                " use DecryptionParams.from_string() instead."
            )
        params = cls()
        params.key = key
        return params


# The dataclass fields stay `key` (and `source`), as in the reference, for
# fields(), equality and the constructors; their values live in Secrets.
EncryptionParams.key = _secret_property("_key", "The 32-byte key.")
DecryptionParams.key = _secret_property("_key", "The exact key, or None.")
DecryptionParams.source = _secret_property("_source", "The passphrase bytes, or None.")

# Public names live in tensorizer.serialization, as in the reference (type
# reprs, pickles). The nested classes resolve through EncryptionParams.
for _cls in (
    EncryptionParams,
    EncryptionParams.OpsLimit,
    EncryptionParams.MemLimit,
    EncryptionParams._Algorithm,
    EncryptionParams._FromStringPWHashAlgorithm,
    DecryptionParams,
):
    _cls.__module__ = "tensorizer.serialization"
del _cls
