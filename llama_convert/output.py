"""Atomic output folders: write beside the destination, rename into place only when complete."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConversionError, DestinationExistsError, DiskFullError
from .resume import JOURNAL_NAME, Checkpoint, Journal

__all__ = [
    "Staging",
    "atomic_output_dir",
    "atomic_output_files",
    "check_destination",
    "check_file_destination",
    "check_free_space",
    "clear_stale_temporaries",
    "resumable_output_dir",
]

_TMP_TAG = ".llama-convert-tmp-"
_TRASH_TAG = ".llama-convert-old-"
_PARTIAL_TAG = ".llama-convert-partial"
_LOCK_NAME = ".llama-convert-lock"


def _temp_name(dst: Path, tag: str) -> Path:
    return dst.parent / f".{dst.name}{tag}{os.getpid()}"


def partial_dir(dst: Path) -> Path:
    """Where a resumable conversion to ``dst`` stages its files."""
    return dst.parent / f".{dst.name}{_PARTIAL_TAG}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_temporaries(dst: Path) -> list[Path]:
    """Remove temporaries of earlier runs for ``dst`` whose process is gone (killed, crashed)."""
    removed = []
    if not dst.parent.is_dir():
        return removed
    for tag in (_TMP_TAG, _TRASH_TAG):
        for path in dst.parent.glob(f".{dst.name}{tag}*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_destination(dst: Path, *, force: bool) -> None:
    """Refuse an existing non-empty destination unless ``force``."""
    if dst.is_file() or (dst.is_symlink() and not dst.is_dir()):
        raise DestinationExistsError(f"{dst} exists and is a file; choose another destination.")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise DestinationExistsError(
            f"{dst} already exists and is not empty; choose another destination or pass --force to replace it."
        )


def check_file_destination(dst: Path, *, force: bool) -> None:
    """Refuse a folder where a file is to be written, or an existing file unless ``force``."""
    if dst.is_dir():
        raise DestinationExistsError(f"{dst} is a folder; give a file name ending in {dst.suffix or '.gguf'}.")
    if dst.exists() and not force:
        raise DestinationExistsError(f"{dst} already exists; choose another name or pass --force to replace it.")


def check_free_space(dst: Path, needed: int) -> None:
    """Fail before writing anything when the destination filesystem cannot hold ``needed`` bytes."""
    parent = dst.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folders to be created will live on the nearest existing one
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise DiskFullError(
            f"{parent} has {free / 1e9:.2f} GB free but the converted model needs {needed / 1e9:.2f} GB; "
            "free some space or choose another destination."
        )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(dst: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it becomes ``dst``, on any failure it vanishes.

    An interrupted run (SIGKILL) leaves only a hidden temporary, which the next run removes.
    """
    dst = Path(dst).absolute()
    check_destination(dst, force=force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temporaries(dst)
    tmp = _temp_name(dst, _TMP_TAG)
    tmp.mkdir()
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(dst, exc, tmp, 0) from None
            raise
        _publish(tmp, dst, force=force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_files(dsts: list[Path], *, force: bool = False) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``dsts`` (a GGUF file and its mmproj, say); when the body
    succeeds they replace ``dsts`` together, on any failure they all vanish."""
    dsts = [Path(d).absolute() for d in dsts]
    for dst in dsts:
        check_file_destination(dst, force=force)
        dst.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_temporaries(dst)
    tmps = [_temp_name(dst, _TMP_TAG) for dst in dsts]
    try:
        try:
            yield tmps
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(dsts[0], exc, dsts[0], 0) from None
            raise
        for dst in dsts:
            check_file_destination(dst, force=force)
        for tmp, dst in zip(tmps, dsts, strict=True):
            os.replace(tmp, dst)
        for parent in {dst.parent for dst in dsts}:
            _fsync_dir(parent)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _disk_full(dst: Path, exc: OSError, where: Path, kept: int) -> DiskFullError:
    name = Path(exc.filename or where).name
    if kept:
        return DiskFullError(
            f"{dst.parent} ran out of space while writing {name}; {kept} completed file(s) are kept in {where.name}: "
            "free some space and run the same command again to continue (--no-resume starts over)."
        )
    return DiskFullError(
        f"{dst.parent} ran out of space while writing {name}; "
        "free some space or choose another destination (nothing was left behind)."
    )


def _publish(tmp: Path, dst: Path, *, force: bool) -> None:
    _fsync_dir(tmp)
    if dst.exists():
        check_destination(dst, force=force)
        trash = _temp_name(dst, _TRASH_TAG)
        os.replace(dst, trash)
        os.replace(tmp, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dst)
    _fsync_dir(dst.parent)


@dataclass
class Staging:
    """A resumable staging folder: write files into ``path``; ``resumed`` lists those already complete."""

    path: Path
    journal: Journal
    resumed: dict[str, int]  # name → size of files kept from an interrupted run
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)  # files written part way
    verified: set[str] = field(default_factory=set)  # source files an interrupted run already verified
    hashes: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # … hashed part way: (offset, MD5 state)

    def record(self, name: str) -> None:
        """``name`` is written and fsync'd: a rerun may keep it."""
        self.journal.record(name)

    def checkpoint(self, key: str, files: Sequence[str], position: Any) -> None:
        """``files`` are fsync'd up to here, reached at writer ``position``: a rerun may continue from it."""
        self.journal.checkpoint(key, files, position)


def _lock(folder: Path, dst: Path) -> int:
    fd = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConversionError(
            f"another llama-convert is writing {dst} right now; wait for it to finish or choose another destination."
        ) from None
    return fd


def _clear(folder: Path, keep: set[str]) -> None:
    for entry in folder.iterdir():
        if entry.name not in keep:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _kept(journal: Journal) -> tuple[dict[str, int], dict[str, Checkpoint], set[str]]:
    return journal.completed(), journal.checkpoints(), journal.verified_files()


def _files(checkpoints: dict[str, Checkpoint]) -> set[str]:
    return {name for c in checkpoints.values() for name in c.sizes}


def _publish_files(folder: Path, dsts: list[Path], *, force: bool) -> None:
    for dst in dsts:
        check_file_destination(dst, force=force)
    for dst in dsts:
        os.replace(folder / dst.name, dst)
    shutil.rmtree(folder, ignore_errors=True)
    for parent in {dst.parent for dst in dsts}:
        _fsync_dir(parent)


@contextlib.contextmanager
def resumable_output_dir(
    dst: str | os.PathLike[str],
    *,
    fingerprint: str,
    force: bool = False,
    resume: bool = True,
    files: list[Path] | None = None,
) -> Iterator[Staging]:
    """Like ``atomic_output_dir``, but the staging folder survives a crash (kill -9, power loss) and a full
    disk with a journal of complete files and checkpoints; a rerun with the same ``fingerprint`` keeps them.
    With ``files`` (output files rather than a folder: a GGUF file and its mmproj), the folder stages them
    under their names and they replace ``files`` at the end."""
    dst = Path(dst).absolute()
    dsts = [Path(f).absolute() for f in files] if files else []
    for target in dsts:
        check_file_destination(target, force=force)
    if not dsts:
        check_destination(dst, force=force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temporaries(dst)
    folder = partial_dir(dst)
    folder.mkdir(exist_ok=True)
    lock = _lock(folder, dst)
    succeeded = keep = False
    try:
        journal = Journal(folder, fingerprint)
        resumed, checkpoints, verified = _kept(journal) if resume else ({}, {}, set())
        hashes = journal.partial_hashes() if resume else {}
        anything = bool(resumed or checkpoints or verified or hashes)
        _clear(folder, {*resumed, *_files(checkpoints), JOURNAL_NAME, _LOCK_NAME} if anything else {_LOCK_NAME})
        if not anything:
            journal.start()
        staging = Staging(folder, journal, resumed, checkpoints, verified, hashes)
        try:
            yield staging
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                done, partial, _ = _kept(journal)
                keep = bool(done or partial)
                if keep:
                    _clear(folder, {*done, *_files(partial), JOURNAL_NAME, _LOCK_NAME})
                raise _disk_full(dst, exc, folder, len(done) + len(partial)) from None
            raise
        (folder / JOURNAL_NAME).unlink(missing_ok=True)
        (folder / _LOCK_NAME).unlink(missing_ok=True)
        if dsts:
            _publish_files(folder, dsts, force=force)
        else:
            _publish(folder, dst, force=force)
        succeeded = True
    finally:
        os.close(lock)
        if not succeeded and not keep and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
