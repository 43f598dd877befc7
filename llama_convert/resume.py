"""The journal of a staged conversion: which output files are proven complete, for which inputs.

A file is recorded only after it was fsync'd, and the journal line is fsync'd in turn, so a recorded
file survives a crash or power loss whole. The first line holds a fingerprint of the source files and
of everything the run would write (plan, options, version); a rerun keeps recorded files only when the
fingerprint is the same and each file still has its recorded size, modification time and sample hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JOURNAL_NAME", "Journal", "fingerprint"]

JOURNAL_NAME = ".llama-convert-journal"
_SAMPLE = 1 << 20  # bytes hashed at each end of a file


def fingerprint(sources: Iterable[Path], *values: Any) -> str:
    """A hash of the source files' names, sizes and modification times and of ``values`` (JSON)."""
    h = hashlib.sha256()
    for path in sources:
        stat = path.stat()
        h.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    h.update(json.dumps(values, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _sample_hash(path: Path, size: int) -> str:
    """sha256 of the first and last MiB: catches a truncated, replaced or rewritten file cheaply (whole
    files are not re-read: completeness is proven by the fsync-then-record order)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(_SAMPLE, size - _SAMPLE))
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


@dataclass
class Journal:
    """Append-only record of complete output files in a staging folder."""

    folder: Path
    fingerprint: str

    @property
    def path(self) -> Path:
        return self.folder / JOURNAL_NAME

    def start(self) -> None:
        """Begin a fresh journal (the folder holds nothing else worth keeping)."""
        self._write_line({"fingerprint": self.fingerprint}, mode="w")

    def completed(self) -> dict[str, int]:
        """Files recorded by an earlier run with the same fingerprint and still intact: name → size."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            entries = [json.loads(line) for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        if not entries or entries[0].get("fingerprint") != self.fingerprint:
            return {}
        done: dict[str, int] = {}
        for entry in entries[1:]:
            path = self.folder / str(entry.get("file"))
            with contextlib.suppress(OSError):
                stat = path.stat()
                intact = (stat.st_size, stat.st_mtime_ns) == (entry.get("size"), entry.get("mtime_ns"))
                if intact and _sample_hash(path, stat.st_size) == entry.get("sample_sha256"):
                    done[path.name] = stat.st_size
        return done

    def record(self, name: str) -> None:
        """Record ``name`` as complete; call only after the file was fsync'd."""
        stat = (self.folder / name).stat()
        entry = {
            "file": name,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sample_sha256": _sample_hash(self.folder / name, stat.st_size),
        }
        self._write_line(entry, mode="a")

    def _write_line(self, value: dict[str, Any], *, mode: str) -> None:
        with open(self.path, mode, encoding="utf-8") as f:
            f.write(json.dumps(value) + "\n")
            f.flush()
            os.fsync(f.fileno())
