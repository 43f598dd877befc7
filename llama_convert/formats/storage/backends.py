"""The remote stores we read through fsspec: which package each needs, how to open it, and one sentence
for each way it refuses (missing package, bad credentials, no such bucket or key)."""

from __future__ import annotations

import errno
import importlib
from dataclasses import dataclass
from typing import Any

from ...errors import InputError, MissingFileError, UnsupportedError

__all__ = ["BACKENDS", "Backend", "backend_for", "filesystem", "is_transient", "translate"]


@dataclass(frozen=True)
class Backend:
    """A URL scheme: the fsspec protocol behind it, the module it needs and the extra that installs it."""

    scheme: str
    protocol: str
    module: str
    extra: str | None  # ``pip install 'llama-convert[<extra>]'``; None when a core dependency provides it
    credentials: str  # where the store's credentials come from, for the refusal sentence


_GOOGLE = "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`"
BACKENDS: dict[str, Backend] = {
    b.scheme: b
    for b in (
        Backend(
            "s3",
            "s3",
            "s3fs",
            "s3",
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and AWS_ENDPOINT_URL for a non-AWS store",
        ),
        Backend("gs", "gcs", "gcsfs", "gcs", _GOOGLE),
        Backend("gcs", "gcs", "gcsfs", "gcs", _GOOGLE),
        Backend("hf", "hf", "huggingface_hub", None, "HF_TOKEN or `hf auth login`"),
        Backend("https", "https", "aiohttp", "http", "the server's access rules"),
        Backend("http", "http", "aiohttp", "http", "the server's access rules"),
    )
}


def backend_for(url: str) -> Backend:
    """The backend of ``url``'s scheme, or one sentence naming the schemes there are."""
    scheme = url.split("://", 1)[0].lower()
    try:
        return BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise UnsupportedError(
            f"{url}: {scheme}:// sources are not supported; use a local folder or {known}."
        ) from None


def filesystem(backend: Backend) -> Any:
    """An fsspec filesystem for ``backend`` with the store's standard configuration (environment, profiles)."""
    try:
        importlib.import_module(backend.module)
        import fsspec
    except ImportError:
        package = f"'llama-convert[{backend.extra}]'" if backend.extra else backend.module
        raise UnsupportedError(
            f"{backend.scheme}:// sources need the {backend.module} package; install it with pip install {package}."
        ) from None
    options: dict[str, Any] = {}
    if backend.protocol in ("http", "https"):
        options["block_size"] = 0  # no read-ahead buffer of its own: our reads are ranges already
    return fsspec.filesystem(backend.protocol, skip_instance_cache=True, **options)


_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: connection resets, timeouts, throttling and server errors (not refusals)."""
    if isinstance(exc, _PERMANENT) or not isinstance(exc, Exception):
        return False
    name = type(exc).__name__
    if "Credential" in name or "NoSuchBucket" in name or "Auth" in name:
        return False
    return not (isinstance(exc, OSError) and exc.errno in (errno.EINVAL, errno.EPERM, errno.EACCES, errno.ENOENT))


def translate(exc: BaseException, url: str, backend: Backend) -> Exception:
    """One sentence for a store's refusal of ``url``."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        what = "no such bucket" if "NoSuchBucket" in text or "bucket" in text.lower() else "no such file or prefix"
        return MissingFileError(f"{url} does not exist ({what}); check the URL.")
    if isinstance(exc, PermissionError) or "Credential" in type(exc).__name__ or "AccessDenied" in text:
        return InputError(
            f"{url} could not be read: access was refused ({_first_line(exc)}); check the credentials "
            f"({backend.credentials})."
        )
    why = f"{type(exc).__name__}: {_first_line(exc)}"
    return InputError(f"{url} could not be read ({why}); check the URL and the store.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
