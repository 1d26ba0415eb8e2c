"""tensorizer: fast, byte-compatible serialization of model weights.

A drop-in for CoreWeave's tensorizer 2.12 API over a C++ engine.
"""

from . import (
    _errors,  # installs the engine's error mapping first
    serialization,
    stream_io,
    torch_compat,
    utils,
)
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
    "CryptographyError",
    "DecryptionParams",
    "EncryptionParams",
    "FilterFuncType",
    "HashMismatchError",
    "TensorDeserializer",
    "TensorSerializer",
    "TensorType",
    "load_model",
    "serialization",
    "serialize_model",
    "stream_io",
    "torch_compat",
    "utils",
]

del _errors
