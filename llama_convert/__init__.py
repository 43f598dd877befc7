"""llama-convert: Meta's original Llama checkpoints → Hugging Face model folders.

>>> import llama_convert
>>> result = llama_convert.convert("Meta-Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct-hf")
"""

from __future__ import annotations

from .describe import FolderReport, inspect
from .detect import detect
from .errors import (
    ChecksumError,
    ConversionError,
    DestinationExistsError,
    DiskFullError,
    InputError,
    LlamaConvertError,
    MissingFileError,
    ShapeMismatchError,
    UnsafePickleError,
    UnsupportedError,
    VerificationError,
)
from .families import ModelSpec
from .options import ConversionResult, Progress
from .routes import convert, plan, plan_conversion, support_matrix
from .version import __version__

__all__ = [
    "ChecksumError",
    "ConversionError",
    "ConversionResult",
    "DestinationExistsError",
    "DiskFullError",
    "FolderReport",
    "InputError",
    "LlamaConvertError",
    "MissingFileError",
    "ModelSpec",
    "Progress",
    "ShapeMismatchError",
    "UnsafePickleError",
    "UnsupportedError",
    "VerificationError",
    "__version__",
    "convert",
    "detect",
    "inspect",
    "plan",
    "plan_conversion",
    "support_matrix",
]
