"""What a source argument names: a local path, a Hub repository id, or a remote URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .hub import parse_repo_id, resolve_repo_id
from .remote import RemotePath

__all__ = ["SourcePath", "as_source_path", "is_remote", "resolve_source"]

SourcePath = Union[Path, RemotePath]  # noqa: UP007 - a runtime alias, usable on Python 3.10


def is_remote(path: object) -> bool:
    return isinstance(path, RemotePath)


def as_source_path(src: str | os.PathLike[str] | RemotePath) -> SourcePath:
    """``src`` as a path object without any lookup: a RemotePath for a URL, else a Path."""
    if isinstance(src, (Path, RemotePath)):
        return src
    text = os.fspath(src)
    return RemotePath.from_url(text) if "://" in text else Path(text)


def resolve_source(src: str | os.PathLike[str] | RemotePath) -> SourcePath:
    """The source ``src`` names: an existing local path (which always wins), a remote URL
    (``s3://bucket/prefix``…), or a Hub repository id ``org/name[@revision]`` resolved to its snapshot in
    the huggingface_hub cache (downloaded when missing and a network is there)."""
    if isinstance(src, (Path, RemotePath)):
        return src
    text = os.fspath(src)
    if "://" in text:
        return RemotePath.from_url(text)
    path = Path(text)
    if path.exists():
        return path
    repo = parse_repo_id(text)
    return resolve_repo_id(repo) if repo is not None else path
