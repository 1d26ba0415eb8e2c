"""tensorizer: fast, byte-compatible serialization of model weights.

A drop-in for CoreWeave's tensorizer 2.12 API over a C++ engine.
"""

from . import _errors  # installs the engine's error mapping first
from . import serialization, stream_io, utils
from ._model_io import load_model, serialize_model
from .serialization import (
    CryptographyError,
    DecryptionParams,
    EncryptionParams,
    FilterFuncType,
    HashMismatchError,
    TensorDeserializer,
    TensorSerializer,
    TensorType,
)

__version__ = "2.12.1"

__all__ = [
    "serialization",
    "stream_io",
    "utils",
    "TensorSerializer",
    "TensorDeserializer",
    "TensorType",
    "CryptographyError",
    "EncryptionParams",
    "DecryptionParams",
    "FilterFuncType",
    "HashMismatchError",
    "serialize_model",
    "load_model",
]

del _errors
