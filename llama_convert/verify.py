"""Checksum verification against the md5 checklists (``checklist.chk``) of Meta's downloads.

Downloads are hundreds of GB and arrive truncated or corrupted often enough that every model comes
with ``md5sum`` output. Hash in parallel, report, and let :class:`Md5Stream` hash what a converter
reads anyway instead of reading twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import md5lanes, md5state
from .errors import ChecksumError, InputError, MissingFileError
from .formats.storage import as_source_path

__all__ = [
    "BackgroundVerify",
    "ChecklistEntry",
    "Md5Stream",
    "VerifyReport",
    "expected_checksums",
    "find_checklists",
    "hash_file",
    "raise_for_report",
    "read_checklist",
    "verify_checksums",
]

CHUNK_SIZE = 8 << 20
STATE_EVERY = 64 << 20  # bytes hashed between saved MD5 states (a killed run loses at most this per file)
LANES = True  # hash local files in lockstep (md5lanes) where the extension is built; False: hashlib per file
LANE_CHUNK = 512 << 10  # bytes per file and round in lockstep: all lanes' chunks stay in cache until hashed
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
# Files a converter reads from a model folder: present but listed nowhere is worth reporting.
_CONVERTED = ("*.pth", "*.pt", "params.json", "tokenizer.model")
# Llama 2 downloads keep tokenizer.model and this checklist next to the model folders.
_PARENT_CHECKLIST = "tokenizer_checklist.chk"
_NO_VERIFY = "pass --no-verify to skip checksum verification"


@dataclass(frozen=True)
class ChecklistEntry:
    """One checklist line: a file name relative to the checklist's folder and its lowercase md5."""

    name: str
    md5: str


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_checksums`; file names are relative to the verified folder."""

    checked: tuple[str, ...]
    missing: tuple[str, ...]
    mismatched: tuple[tuple[str, str, str], ...]  # (name, expected md5, actual md5)
    unlisted: tuple[str, ...]  # shards, params or tokenizer present but in no checklist
    bytes_hashed: int
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every listed file is present and matches; unlisted files are only reported."""
        return not self.missing and not self.mismatched


def find_checklists(src: Path) -> list[Path]:
    """Return the ``*.chk`` and ``*.md5`` files of the model folder ``src``, then the Llama 2
    ``tokenizer_checklist.chk`` of its parent when ``src`` has no ``tokenizer.model`` of its own
    (the layout where one tokenizer next to the model folders serves them all).
    """
    src = as_source_path(src)
    if not src.is_dir():
        raise MissingFileError(f"{src} is not a folder; pass the folder holding checklist.chk and the shards.")
    found = sorted(
        p for p in src.iterdir() if p.suffix in (".chk", ".md5") and not p.name.startswith(".") and p.is_file()
    )
    shared = src.resolve().parent / _PARENT_CHECKLIST
    if not (src / "tokenizer.model").exists() and shared.is_file() and shared.parent != src.resolve():
        found.append(shared)
    return found


def read_checklist(path: Path) -> list[ChecklistEntry]:
    """Parse one checklist in ``md5sum`` form (``<md5>  <name>``, ``<md5> *<name>``, ``./<name>``)
    or with reversed columns (``<name> <md5>``), telling them apart by which column is 32 hex digits.

    Blank lines, CRLF and a BOM are fine; any other line raises ``InputError`` naming file and line.
    """
    path = as_source_path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not a text checklist; download {path.name} again or {_NO_VERIFY}.") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if (entry := _parse_line(line)) is None:
            raise InputError(
                f"{path} line {number} is not a '<md5>  <name>' checksum line: {line!r}; "
                f"download {path.name} again or {_NO_VERIFY}."
            )
        entries.append(entry)
    return entries


def _parse_line(line: str) -> ChecklistEntry | None:
    if _HEX32.fullmatch(line[:32]) and line[32:33].isspace():
        md5, name = line[:32], line[33:]
        if name[:1] in (" ", "*"):  # md5sum's text or binary mode marker
            name = name[1:]
    else:
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not _HEX32.fullmatch(parts[1]):
            return None
        name, md5 = parts[0].strip(), parts[1]
    while name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    # A file of the folder: no absolute path, no way out of it, names the filesystem can hold.
    if not name or name.startswith("/") or ".." in parts or "\0" in name or max(len(p.encode()) for p in parts) > 255:
        return None
    return ChecklistEntry(name=name, md5=md5.lower())


def expected_checksums(src: Path) -> dict[str, str]:
    """Map every file listed for ``src`` (named relative to ``src``, e.g. ``../tokenizer.model``)
    to its expected md5; raises :class:`~llama_convert.errors.MissingFileError` without a checklist.
    """
    src = as_source_path(src)
    checklists = find_checklists(src)
    if not checklists:
        raise MissingFileError(f"{src} has no checklist.chk to verify the download against; {_NO_VERIFY}.")
    expected: dict[str, str] = {}
    for checklist in checklists:
        prefix = "" if checklist.parent == src else "../"
        for entry in read_checklist(checklist):
            name = prefix + entry.name
            if expected.setdefault(name, entry.md5) != entry.md5:
                raise InputError(
                    f"{checklist} lists md5 {entry.md5} for {name} but another checklist in {src} lists "
                    f"{expected[name]}; remove the stale checklist or {_NO_VERIFY}."
                )
    return expected


def hash_file(
    path: Path,
    *,
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    drop_cache: bool = False,
    start: tuple[int, bytes] | None = None,
    on_state: Callable[[int, bytes], None] | None = None,
) -> str:
    """Return the md5 hex digest of ``path``, reading ``chunk_size`` bytes (default ``CHUNK_SIZE``) at a time.

    ``progress`` receives the size of each chunk. ``drop_cache`` evicts hashed pages from the page
    cache; the default keeps them because a conversion usually reads the same file right after.
    ``start`` = (offset, saved MD5 state of the bytes before it) continues an interrupted hash there;
    ``on_state(offset, state)`` hears the running state every ``STATE_EVERY`` bytes (where ``md5state``
    can save states), for a rerun to continue from.
    """
    saving = on_state is not None and md5state.saveable()
    if start is not None and md5lanes.is_state(start[1]):  # saved in lanes (md5lanes): as OpenSSL's, or from 0
        start = None if (state := md5lanes.to_openssl(start[1])) is None else (start[0], state)
    if start is not None and not md5state.saveable():
        start = None
    digest: Any = md5state.Md5(start[1] if start else None) if saving or start else hashlib.md5(usedforsecurity=False)
    buffer = bytearray(chunk_size or CHUNK_SIZE)
    view = memoryview(buffer)
    local = isinstance(path, (str, os.PathLike))
    with open(path, "rb", buffering=0) if local else path.open("rb") as f:  # a remote file: range reads
        fd = f.fileno() if local else -1
        md5lanes.advise(fd, 0, 0, "POSIX_FADV_SEQUENTIAL")
        offset = start[0] if start else 0
        if offset:
            f.seek(offset)
        saved = offset
        while n := f.readinto(buffer):
            digest.update(view[:n])
            if drop_cache:
                md5lanes.advise(fd, offset, n, "POSIX_FADV_DONTNEED")
            offset += n
            if progress is not None:
                progress(n)
            if saving and offset - saved >= STATE_EVERY:
                assert on_state is not None
                on_state(offset, digest.state())
                saved = offset
    return digest.hexdigest()


def verify_checksums(
    src: Path,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    skip: Collection[str] = (),
    drop_cache: bool = False,
    on_file: Callable[[str, str, str], None] | None = None,
    cancel: threading.Event | None = None,
    partial: dict[str, tuple[int, bytes]] | None = None,
    on_state: Callable[[str, int, bytes], None] | None = None,
) -> VerifyReport:
    """Hash every file the checklists of ``src`` list, in ``workers`` threads (default: one per
    file, at most one per CPU), and compare with the expected md5s. Local files are hashed in lockstep,
    several per vector instruction, in one of those threads where :mod:`md5lanes` is built.

    ``progress`` receives byte counts, one call at a time. Names in ``skip`` are only checked for
    presence: a caller hashing them while reading (:class:`Md5Stream`) compares them against
    :func:`expected_checksums`. ``on_file(name, expected, actual)`` is called as each file is
    hashed, so a caller can act on a mismatch before the rest is done; setting ``cancel`` stops
    the hashing at the next chunk (``concurrent.futures.CancelledError``). ``partial`` (name → offset, MD5
    state) continues files an interrupted run hashed part way; ``on_state(name, offset, state)`` hears running
    states (see :func:`hash_file`). Raises
    :class:`~llama_convert.errors.MissingFileError` without a checklist.
    """
    start = time.perf_counter()
    partial = partial or {}
    src = as_source_path(src)
    expected = expected_checksums(src)
    present = {name: src / name for name in expected if (src / name).is_file()}
    missing = sorted(name for name in expected if name not in present)
    # Largest first so the last file to finish is a small one.
    todo = sorted((n for n in present if n not in skip), key=lambda n: -present[n].stat().st_size)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    pool_size = workers or max(1, min(len(todo), os.cpu_count() or 1))

    lock = threading.Lock()
    stop = cancel if cancel is not None else threading.Event()
    hashed = 0

    def count(n: int) -> None:
        nonlocal hashed
        if stop.is_set():
            raise CancelledError
        with lock:
            hashed += n
            if progress is not None:
                progress(n)

    def run(name: str) -> tuple[str, str]:
        try:
            saved = None if on_state is None else lambda offset, state: on_state(name, offset, state)
            start = partial.get(name)
            actual = hash_file(present[name], progress=count, drop_cache=drop_cache, start=start, on_state=saved)
        except OSError as exc:
            raise _unreadable(present[name], exc) from exc
        if on_file is not None:
            on_file(name, expected[name], actual)
        return name, actual

    # In lanes: local files, continued from a lane state or an OpenSSL one (from a run without lanes) moved to lanes.
    def in_lanes(name: str) -> bool:
        state = partial.get(name)
        lane_state = state is None or md5lanes.is_state(state[1]) or md5lanes.from_openssl(state[1]) is not None
        return isinstance(present[name], (str, os.PathLike)) and lane_state

    lanes = [n for n in todo if in_lanes(n)] if LANES and md5lanes.available() else []
    if len(lanes) < 2 and not any(n in partial for n in lanes):  # one file: OpenSSL is faster than a lane
        lanes = []

    def run_lanes(names: list[str]) -> list[tuple[str, str]]:
        def done(i: int, actual: str) -> None:
            if on_file is not None:
                on_file(names[i], expected[names[i]], actual)

        saved = None if on_state is None else lambda i, offset, state: on_state(names[i], offset, state)
        starts = {}
        for i, n in enumerate(names):
            if (start := partial.get(n)) is not None:
                starts[i] = start if md5lanes.is_state(start[1]) else (start[0], md5lanes.from_openssl(start[1]))
        try:
            digests = md5lanes.hash_files(
                [present[n] for n in names], chunk_size=min(CHUNK_SIZE, LANE_CHUNK), state_every=STATE_EVERY,
                starts=starts, progress=count, on_done=done, on_state=saved, drop_cache=drop_cache,
            )  # fmt: skip
        except md5lanes.LaneReadError as exc:
            raise _unreadable(present[names[exc.index]], exc.error) from exc
        return list(zip(names, digests, strict=True))

    pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="md5")
    try:
        jobs = [pool.submit(run_lanes, lanes)] if lanes else []
        jobs += [pool.submit(lambda n: [run(n)], n) for n in todo if n not in lanes]
        actual = dict(pair for job in jobs for pair in job.result())
    finally:
        # On an error or Ctrl-C, stop the other threads at their next chunk instead of their last.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)

    unlisted = {p.name for pattern in _CONVERTED for p in src.glob(pattern) if p.name not in expected}
    return VerifyReport(
        checked=tuple(sorted(actual)),
        missing=tuple(missing),
        mismatched=tuple((n, expected[n], actual[n]) for n in sorted(actual) if actual[n] != expected[n]),
        unlisted=tuple(sorted(unlisted)),
        bytes_hashed=hashed,
        seconds=time.perf_counter() - start,
    )


def _unreadable(path: Path, exc: OSError) -> InputError:
    return InputError(f"Cannot read {path} ({exc.strerror}); check the file or {_NO_VERIFY}.")


def raise_for_report(report: VerifyReport, src: Path) -> None:
    """Return if ``report`` is ok, else raise :class:`~llama_convert.errors.ChecksumError` naming
    every corrupted or missing file with its expected and actual md5."""
    if report.ok:
        return
    problems = [f"{name} has md5 {actual}, expected {expected}" for name, expected, actual in report.mismatched]
    problems += [f"{name} is missing (the checklist lists it)" for name in report.missing]
    names = [name for name, _, _ in report.mismatched] + list(report.missing)
    listing = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    raise ChecksumError(
        f"Checksum verification failed in {src}: {'; '.join(problems)}; download {listing} again, or {_NO_VERIFY}."
    )


class Md5Stream:
    """Incremental md5 of one file, fed (:meth:`feed`) the blocks a reader takes from it anyway.

    Blocks come in increasing offset order; bytes already hashed (overlapping re-reads) are ignored.
    A gap (bytes the reader skipped, e.g. zip headers) raises ``ValueError`` unless the stream knows
    the file's ``path``: then it reads gaps itself and :meth:`hexdigest` hashes the tail too.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._path = None if path is None else Path(path)
        self.position = 0  # number of leading bytes of the file hashed so far

    def feed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data``, the file's bytes starting at ``offset``."""
        view = memoryview(data).cast("B")
        if offset > self.position:
            self._fill(offset)
        start = self.position - offset
        if start < len(view):
            self._md5.update(view[start:])
            self.position = offset + len(view)

    def hexdigest(self) -> str:
        """The md5 of the bytes fed so far (with ``path``: of the whole file)."""
        if self._path is not None:
            self._fill(self._path.stat().st_size)
        return self._md5.hexdigest()

    def _fill(self, until: int) -> None:
        if self._path is None:
            raise ValueError(f"Md5Stream got bytes from offset {until} but has hashed only {self.position}")
        with open(self._path, "rb", buffering=0) as f:
            f.seek(self.position)
            while self.position < until:
                chunk = f.read(min(CHUNK_SIZE, until - self.position))
                if not chunk:
                    raise InputError(f"{self._path} ends at byte {self.position}; download it again or {_NO_VERIFY}.")
                self._md5.update(chunk)
                self.position += len(chunk)


class BackgroundVerify:
    """Checksum verification running beside the conversion.

    Hashing (md5, one core) overlaps with converting (mostly I/O): the verdict is collected
    before the output is renamed into place, and a mismatch stops the conversion early.
    """

    def __init__(
        self,
        src: Path,
        *,
        workers: int,
        skip: Collection[str] = (),
        on_verified: Callable[[str, str], None] | None = None,
        partial: dict[str, tuple[int, bytes]] | None = None,
        on_state: Callable[[str, int, bytes], None] | None = None,
    ) -> None:
        """``skip`` names files an interrupted run already verified; ``on_verified(name, md5)`` is told of
        every file that matched, so a rerun can skip it; ``partial`` and ``on_state`` as in
        :func:`verify_checksums` (files hashed part way)."""
        self._src = src
        self.report: VerifyReport | None = None
        self.error: BaseException | None = None
        self.missing_checklist = False
        self.mismatch = threading.Event()
        self._cancel = threading.Event()

        def on_file(name: str, expected: str, actual: str) -> None:
            if expected != actual:
                self.mismatch.set()
            elif on_verified is not None:
                on_verified(name, actual)

        def run() -> None:
            try:
                self.report = verify_checksums(
                    src,
                    workers=workers,
                    on_file=on_file,
                    cancel=self._cancel,
                    skip=skip,
                    partial=partial,
                    on_state=on_state,
                )
            except MissingFileError:
                self.missing_checklist = True
            except CancelledError:
                pass
            except BaseException as exc:  # re-raised in the caller's thread
                self.error = exc
                self.mismatch.set()

        self._thread = threading.Thread(target=run, name="llama-convert-verify", daemon=True)
        self._thread.start()

    def result(self) -> bool:
        """Wait; raise ChecksumError on mismatch; return whether a checklist was verified."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        if self.missing_checklist or self.report is None:
            return False
        raise_for_report(self.report, self._src)
        return True

    def cancel(self) -> None:
        """Stop hashing (the conversion failed; nobody will ask for the verdict)."""
        self._cancel.set()
        self._thread.join()

    def check(self) -> None:
        """Raise at once if a file already failed (called between blocks of the conversion)."""
        if self.mismatch.is_set():
            self.result()
