"""Hub repository ids (``meta-llama/Llama-3.1-8B-Instruct[@revision]``) as sources: the snapshot in the
huggingface_hub cache, downloaded first (only the files a conversion reads) when it is not there.

The cache folder is looked up when called (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else
``~/.cache/huggingface/hub``), and ``HF_HUB_OFFLINE=1`` means the cache only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError, MissingFileError, UnsupportedError

__all__ = ["RepoId", "download_command", "hub_cache_dir", "parse_repo_id", "resolve_repo_id"]

_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,200}))?$")
# What a conversion of each kind of repository reads: Meta's checkpoint under original/ (plus the root's
# small JSON files, naming and cross-check evidence), or a Hugging Face folder's weights and tokenizer.
META_PATTERNS = ["original/*", "config.json", "generation_config.json", "tokenizer_config.json"]
HF_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class RepoId:
    repo: str
    revision: str | None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")


def parse_repo_id(text: str) -> RepoId | None:
    """``org/name`` or ``org/name@revision``; None for anything else (a path, a URL)."""
    if text.startswith((".", "/", "~")) or "://" in text or "\\" in text:
        return None
    match = _REPO_ID.match(text)
    if match is None or ".." in match.group("repo"):
        return None
    return RepoId(match.group("repo"), match.group("rev"))


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps repositories, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def download_command(repo: RepoId) -> str:
    revision = f" --revision {repo.revision}" if repo.revision else ""
    return f'hf download {repo.repo}{revision} --include "original/*"'


def _holds_checkpoint(snapshot: Path) -> bool:
    """A Meta checkpoint under original/ (or at the root), or a Hugging Face folder at the root."""
    for folder in (snapshot / "original", snapshot):
        if folder.is_dir() and ((folder / "params.json").is_file() or any(folder.glob("consolidated*.pth"))):
            return True
    if (snapshot / "original").is_dir() and any(p.is_dir() for p in (snapshot / "original").iterdir()):
        return True  # original/mpN folders: the folder reader says which
    return (snapshot / "config.json").is_file() and any(snapshot.glob("*.safetensors"))


def resolve_repo_id(repo: RepoId) -> Path:
    """The snapshot folder of ``repo``: from the cache, else downloaded (with a network), else one sentence
    giving the download command."""
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
    except ImportError:
        raise UnsupportedError(
            f"{repo} looks like a Hub repository id; reading it needs huggingface_hub: pip install huggingface_hub."
        ) from None
    cache = hub_cache_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
    try:
        cached = huggingface_hub.snapshot_download(
            repo.repo, revision=repo.revision, cache_dir=cache, local_files_only=True
        )
        if _holds_checkpoint(Path(cached)):
            return Path(cached)
    except (hub_errors.LocalEntryNotFoundError, FileNotFoundError):
        pass
    if offline:
        raise MissingFileError(
            f"{repo} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; download it with "
            f"{download_command(repo)}."
        )
    return _download(repo, cache)


def _download(repo: RepoId, cache: Path) -> Path:
    """Download only what a conversion reads: ``original/*`` when the repository has Meta's checkpoint."""
    import huggingface_hub as hub
    from huggingface_hub import errors

    login = "log in with `hf auth login` or set HF_TOKEN"
    try:
        path = hub.snapshot_download(repo.repo, revision=repo.revision, cache_dir=cache, allow_patterns=META_PATTERNS)
        if not _holds_checkpoint(Path(path)):  # no original/: a Hugging Face repository
            path = hub.snapshot_download(repo.repo, revision=repo.revision, cache_dir=cache, allow_patterns=HF_PATTERNS)
    except errors.GatedRepoError:
        raise InputError(
            f"{repo.repo} is a gated repository: accept its license on https://huggingface.co/{repo.repo} and {login}."
        ) from None
    except errors.RepositoryNotFoundError:
        raise MissingFileError(
            f"{repo.repo} is not a Hub repository you can read (no such repository, or private): check the name "
            f"or {login}."
        ) from None
    except errors.RevisionNotFoundError:
        raise MissingFileError(f"{repo.repo} has no revision {repo.revision!r}; check the name after @.") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise InputError(f"{repo.repo} refused the download ({status}): {login}.") from None
        why = _first_line(exc)
        raise InputError(f"{repo} could not be downloaded ({why}); try {download_command(repo)}.") from None
    except Exception as exc:  # no network (the client's errors are not all OSErrors), a full disk...
        raise MissingFileError(
            f"{repo} is not in the Hugging Face cache ({cache}) and the Hub cannot be reached ({_first_line(exc)}); "
            f"download it with {download_command(repo)}."
        ) from None
    return Path(path)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
