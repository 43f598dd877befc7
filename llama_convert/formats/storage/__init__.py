"""Where a source's bytes come from: a local folder, a Hub repository in the huggingface_hub cache, or a
remote store read through fsspec (``s3://``, ``gs://``, ``hf://``, ``https://``) with range reads.

Readers take a *source path* — a ``pathlib.Path`` or a :class:`RemotePath` with the same small subset of
its API — and read bytes through :func:`open_bytes`, so no reader assumes a local file. Output stays local.
"""

from __future__ import annotations

from .bytes import ByteSource, LocalBytes, open_bytes
from .remote import RemotePath, RemoteStore
from .resolve import SourcePath, as_source_path, is_remote, resolve_source

__all__ = [
    "ByteSource",
    "LocalBytes",
    "RemotePath",
    "RemoteStore",
    "SourcePath",
    "as_source_path",
    "is_remote",
    "open_bytes",
    "resolve_source",
]
