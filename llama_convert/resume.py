"""The journal of a staged conversion: which output files are proven complete, for which inputs.

A file is recorded only after it was fsync'd, so a recorded file survives a crash or power loss whole. The
journal's own lines are not fsync'd (that would wait for the disk amid the writes, and at the end of every
run): after a kill the page cache keeps them; after a power loss the last ones may be missing or torn, and a
rerun then redoes what they would have kept (a torn line is skipped, never trusted).

A file written in one long pass (a GGUF file, Meta's shards written side by side) records checkpoints
instead: after an fsync, how far it got (its size, a hash of the bytes before that point, and the writer's
position), so a rerun truncates it there and continues. Source files whose checksum was verified are
recorded too, so a rerun does not hash them again. The first line holds a fingerprint of the source files
and of everything the run would write (plan, options, version); a rerun keeps what was recorded only when
the fingerprint is the same and each file still has its recorded size (and, for complete files,
modification time) and sample hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JOURNAL_NAME", "Checkpoint", "Journal", "fingerprint"]

JOURNAL_NAME = ".llama-convert-journal"
_SAMPLE = 1 << 20  # bytes hashed at each end of a file
_LOCK = threading.Lock()  # verification threads and the writer append to the same journal


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


def _tail_hash(path: Path, size: int) -> str:
    """sha256 of the last MiB before byte ``size``."""
    with open(path, "rb") as f:
        start = max(0, size - _SAMPLE)
        f.seek(start)
        return hashlib.sha256(f.read(size - start)).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """How far files written in one long pass got: each file's size then, and the writer's position."""

    sizes: dict[str, int]
    position: Any

    @property
    def nbytes(self) -> int:
        return sum(self.sizes.values())


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
        done: dict[str, int] = {}
        for entry in self._entries():
            if "file" not in entry:
                continue
            path = self.folder / str(entry.get("file"))
            with contextlib.suppress(OSError):
                stat = path.stat()
                intact = (stat.st_size, stat.st_mtime_ns) == (entry.get("size"), entry.get("mtime_ns"))
                if intact and _sample_hash(path, stat.st_size) == entry.get("sample_sha256"):
                    done[path.name] = stat.st_size
        return done

    def checkpoint(self, key: str, files: Sequence[str], position: Any) -> None:
        """``files`` (one GGUF file, or all of Meta's shards) are fsync'd up to their current sizes, which the
        writer reached at ``position`` (JSON); ``key`` names the checkpoint."""
        sizes = {name: (self.folder / name).stat().st_size for name in files}
        tails = {name: _tail_hash(self.folder / name, size) for name, size in sizes.items()}
        self._write_line({"checkpoint": key, "sizes": sizes, "tails": tails, "position": position}, mode="a")

    def checkpoints(self) -> dict[str, Checkpoint]:
        """The last intact checkpoint under each key (every file at least as long, same bytes before the end)."""
        out: dict[str, Checkpoint] = {}
        for entry in self._entries():
            key, sizes, tails = entry.get("checkpoint"), entry.get("sizes"), entry.get("tails")
            if not isinstance(key, str) or not isinstance(sizes, dict) or not isinstance(tails, dict):
                continue
            with contextlib.suppress(OSError, TypeError, ValueError):
                if all(
                    "/" not in name
                    and (self.folder / name).stat().st_size >= size
                    and _tail_hash(self.folder / name, size) == tails.get(name)
                    for name, size in sizes.items()
                ):
                    out[key] = Checkpoint(dict(sizes), entry.get("position"))
        return out

    def verified(self, name: str, md5: str) -> None:
        """Source file ``name`` matched its checklist md5."""
        self._write_line({"verified": name, "md5": md5}, mode="a")

    def verified_files(self) -> set[str]:
        return {e["verified"] for e in self._entries() if isinstance(e.get("verified"), str)}

    def hashing(self, name: str, offset: int, state: bytes) -> None:
        """Source file ``name``'s first ``offset`` bytes hash to the saved MD5 ``state`` (``md5state``)."""
        self._write_line({"hashing": name, "offset": offset, "md5_state": state.hex()}, mode="a")

    def partial_hashes(self) -> dict[str, tuple[int, bytes]]:
        """The last saved MD5 state of each source file hashed part way: name → (offset, state)."""
        out: dict[str, tuple[int, bytes]] = {}
        for e in self._entries():
            name, offset, state = e.get("hashing"), e.get("offset"), e.get("md5_state")
            if isinstance(name, str) and isinstance(offset, int) and isinstance(state, str):
                with contextlib.suppress(ValueError):
                    out[name] = (offset, bytes.fromhex(state))
        return out

    def _entries(self) -> list[dict[str, Any]]:
        """The entries after the fingerprint line, when it is this run's fingerprint."""
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        entries = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
        if not entries or not isinstance(entries[0], dict) or entries[0].get("fingerprint") != self.fingerprint:
            return []
        return [e for e in entries[1:] if isinstance(e, dict)]

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
        with _LOCK, open(self.path, mode, encoding="utf-8") as f:  # not fsync'd: see the module's docstring
            f.write(json.dumps(value) + "\n")
