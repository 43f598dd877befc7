"""Atomic output folders: write beside the destination, rename into place only when complete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import DestinationExistsError, DiskFullError

__all__ = ["atomic_output_dir", "check_destination", "check_free_space", "clear_stale_temporaries"]

_TMP_TAG = ".llama-convert-tmp-"
_TRASH_TAG = ".llama-convert-old-"


def _temp_name(dst: Path, tag: str) -> Path:
    return dst.parent / f".{dst.name}{tag}{os.getpid()}"


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
                shutil.rmtree(path, ignore_errors=True)
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
                raise DiskFullError(
                    f"{dst.parent} ran out of space while writing {Path(exc.filename or tmp).name}; "
                    "free some space or choose another destination (nothing was left behind)."
                ) from None
            raise
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
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
