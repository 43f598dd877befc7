"""One exception hierarchy for everything llama-convert refuses or fails at.

Library code raises these; only the CLI turns them into a message and an exit code
(see ``cli.EXIT_CODES``). Every message is one sentence that names the file and says
what to do next.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "ConversionError",
    "DestinationExistsError",
    "DiskFullError",
    "InputError",
    "LlamaConvertError",
    "MissingFileError",
    "ShapeMismatchError",
    "UnsafePickleError",
    "UnsupportedError",
    "VerificationError",
]


class LlamaConvertError(Exception):
    """Base class of every error llama-convert raises on purpose."""


class InputError(LlamaConvertError):
    """The source folder or one of its files is unusable (missing, truncated, malformed)."""


class MissingFileError(InputError):
    """A required file (shard, params.json, tokenizer.model) is absent."""


class ShapeMismatchError(InputError):
    """A tensor's shape disagrees with params.json or with the other shards."""


class UnsafePickleError(InputError):
    """A checkpoint's pickle references something outside the allow-list; nothing was executed."""


class UnsupportedError(LlamaConvertError):
    """The input is valid but describes a model or format this version does not convert."""


class VerificationError(LlamaConvertError):
    """Integrity checks failed."""


class ChecksumError(VerificationError):
    """A file's hash differs from checklist.chk, or listed files are missing."""


class ConversionError(LlamaConvertError):
    """Writing the output failed for a reason outside the input (e.g. the destination)."""


class DestinationExistsError(ConversionError):
    """The destination exists and is not empty; pass force=True / --force to replace it."""


class DiskFullError(ConversionError):
    """The destination filesystem ran out of space while writing."""
