"""What every route shares: the route value, recognition, and one skeleton that runs a planned route.

The skeleton checks free space, starts checksum verification and the work that runs beside the weight
stream, stages the output beside the destination (a resumable folder, an atomic folder or atomic files),
drives progress, and returns the result; the route supplies only the body that writes the bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..detect import detect
from ..errors import UnsupportedError
from ..families import FAMILIES, Family, family_of
from ..formats.storage import is_remote
from ..options import ConversionResult, ConvertOptions, Format, Progress
from ..output import Staging, atomic_output_dir, atomic_output_files, check_free_space, resumable_output_dir
from ..resume import Checkpoint
from ..spec import ModelSpec
from ..verify import BackgroundVerify
from ..verify_remote import StreamVerify

__all__ = [
    "Beside",
    "Route",
    "RoutePlan",
    "Stage",
    "checked_advance",
    "detect_spec",
    "family_for_hf",
    "refuse_unless",
    "run_planned",
]

NO_CHECKLIST = "no checklist.chk found: checksums were not verified."


class RoutePlan(Protocol):
    """What a route will write, decided before any weight byte is read: printed by ``--dry-run`` and
    ``inspect --plan``, asserted by tests, then handed to the route's ``run``."""

    spec: ModelSpec

    @property
    def total_size(self) -> int: ...

    @property
    def notes(self) -> tuple[str, ...]: ...

    @property
    def headline(self) -> str: ...

    def lines(self) -> list[str]: ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Route:
    """One cell of the table: (source format, target format) → how to plan it and how to run the plan."""

    source: Format
    target: Format
    title: str  # "Meta checkpoint → Hugging Face folder"
    plan: Callable[[Path, Path, ConvertOptions], RoutePlan]
    run: Callable[[RoutePlan, Path, ConvertOptions, Progress], ConversionResult]

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.target)


def refuse_unless(family: Family, key: tuple[str, str], where: Path | str) -> None:
    """Raise the family's declared reason when it does not do route ``key``."""
    why = family.capabilities.why_not(key)
    if why is not None:
        source, target = key
        raise UnsupportedError(
            f"{where}: {family.title} cannot go from {_FORMAT_NAMES[source]} to {_FORMAT_NAMES[target]}: {why}."
        )


_FORMAT_NAMES = {"meta": "Meta's format", "hf": "Hugging Face", "gguf": "GGUF"}


def detect_spec(src: Path, opts: ConvertOptions, key: tuple[str, str]) -> ModelSpec:
    """Recognise the Meta checkpoint in ``src`` and check that its family does route ``key``."""
    spec = detect(src, llama_version=opts.llama_version, instruct=opts.instruct, fold_kv_heads=opts.fold_kv_heads)
    family = family_of(spec)
    refused_for = getattr(family, "refused_for", None)  # a family's refusals for one kind of checkpoint
    reason = refused_for(spec).get(key) if refused_for is not None else None
    if reason:
        raise UnsupportedError(f"{spec.folder.root}: {reason}.")
    refuse_unless(family, key, spec.folder.root)
    return keep_fp8(spec, key) if opts.keep_fp8 else spec


def keep_fp8(spec: ModelSpec, key: tuple[str, str]) -> ModelSpec:
    """``--keep-fp8``: the family's fbgemm_fp8 plan of an FP8 checkpoint (Hugging Face targets only)."""
    if key != ("meta", "hf"):
        raise UnsupportedError(
            "--keep-fp8 writes a Hugging Face folder (fbgemm_fp8); GGUF has no e4m3 type and Meta's format is "
            "written in bf16 — drop --keep-fp8 to convert the exactly dequantized model."
        )
    family = family_of(spec)
    keep = getattr(family, "keep_fp8", None)
    if keep is None:
        raise UnsupportedError(f"{spec.folder.root}: {family.title} checkpoints have no FP8 weights to keep.")
    return keep(spec)


def family_for_hf(config: dict[str, Any], where: Path, key: tuple[str, str]) -> Family:
    """The family whose Hugging Face architecture ``config.json`` names, checked to do route ``key``."""
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    for family in FAMILIES:
        if arch in family.capabilities.hf_architectures:
            refuse_unless(family, key, where)
            return family
    known = ", ".join(a for f in FAMILIES for a in f.capabilities.hf_architectures)
    raise UnsupportedError(
        f"{where} describes {arch or 'no architecture'}; this version converts Hugging Face folders of {known}."
    )


class Beside:
    """Work that runs beside the weight stream — the small files (tokenizer building is seconds of CPU) and
    the family's deferred checks — so that fixed costs overlap with the disk-bound stream. The first failure
    stops the stream (``check``); results are collected before the output is renamed into place."""

    def __init__(self, jobs: list[Callable[[], object]]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(jobs)), thread_name_prefix="llama-convert")
        self.futures: list[Future] = [self._pool.submit(job) for job in jobs]

    def check(self) -> None:
        for future in self.futures:
            if future.done() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]

    def results(self) -> list[object]:
        try:
            return [future.result() for future in self.futures]
        finally:
            self._pool.shutdown(wait=True)

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()
        self._pool.shutdown(wait=True)


def checked_advance(
    progress: Progress, verifier: BackgroundVerify | StreamVerify | None, beside: Beside | None = None
) -> Callable[[int], None]:
    """``progress.advance`` that also stops the stream at the first verification or side-job failure."""
    if verifier is None and beside is None:
        return progress.advance

    def advance(n: int) -> None:
        progress.advance(n)
        if verifier is not None:
            verifier.check()
        if beside is not None:
            beside.check()

    return advance


@dataclass
class Stage:
    """Where a running route writes: ``paths`` (one folder, or one staged file per output file) and, when the
    staging is resumable, what an interrupted run left: complete files (``resumed``, keep them; ``record`` a
    newly finished one) and files written part way (``checkpoints``: key → ``resume.Checkpoint``;
    ``checkpoint(key, files, position)`` records how far they got after an fsync)."""

    paths: list[Path]
    advance: Callable[[int], None]
    beside: Beside
    resumed: dict[str, int] = field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    record: Callable[[str], None] = lambda name: None
    checkpoint: Callable[[str, list[str], Any], None] = lambda key, files, position: None

    @property
    def path(self) -> Path:
        return self.paths[0]


StagingKind = Literal["resumable", "resumable-files", "folder", "files"]


@contextmanager
def _staging(
    kind: StagingKind, dsts: list[Path], opts: ConvertOptions, fingerprint: str
) -> Iterator[tuple[list[Path], Staging | None]]:
    """(the paths to write, the resumable staging or None): a resumable staging folder (for a folder or for
    files), or an atomic folder or atomic files without a journal."""
    if kind in ("resumable", "resumable-files"):
        files = dsts if kind == "resumable-files" else None
        with resumable_output_dir(
            dsts[0], fingerprint=fingerprint, force=opts.force, resume=opts.resume, files=files
        ) as st:
            yield ([st.path / d.name for d in dsts] if files else [st.path]), st
    elif kind == "folder":
        with atomic_output_dir(dsts[0], force=opts.force) as tmp:
            yield [tmp], None
    else:
        with atomic_output_files(dsts, force=opts.force) as tmps:
            yield tmps, None


def _resumed_hashing(st: Staging | None) -> dict[str, Any]:
    """What a resumable staging tells the verifier: files verified and hashed part way by an interrupted run,
    and where to record progress for the next one."""
    if st is None:
        return {}
    journal = st.journal
    return {"skip": st.verified, "on_verified": journal.verified, "partial": st.hashes, "on_state": journal.hashing}


def _cancel(beside: Beside, verifier: BackgroundVerify | None) -> None:
    beside.cancel()
    if verifier is not None:
        verifier.cancel()


def run_planned(
    plan: RoutePlan,
    dsts: list[Path],
    opts: ConvertOptions,
    progress: Progress,
    *,
    body: Callable[[Stage], tuple[str, ...]],
    label: str,
    staging: StagingKind,
    verify_root: Path | None,
    jobs: list[Callable[[], object]] | None = None,
    fingerprint: str = "",
    allowance: int = 32 << 20,
    result_spec: ModelSpec | None = None,
    planned_files: int = 1,
    total: int | None = None,
) -> ConversionResult:
    """Run a planned route: free-space check, verification and ``jobs`` beside the stream, staging, progress,
    then publish and return the result. ``body`` writes into the stage and returns the file names."""
    started = time.perf_counter()
    total = plan.total_size if total is None else total
    check_free_space(dsts[0].absolute(), total + allowance)
    notes = list(plan.notes)
    beside = Beside(jobs or [])
    verifier: BackgroundVerify | StreamVerify | None = None
    resumed = 0
    try:
        with _staging(staging, dsts, opts, fingerprint) as (paths, st):
            try:
                if verify_root is not None and opts.verify:
                    # A remote source is hashed from the bytes the conversion reads, not read a second time.
                    if is_remote(verify_root):
                        skip, on_verified = (st.verified, st.journal.verified) if st is not None else (set(), None)
                        verifier = StreamVerify(verify_root, skip=skip, on_verified=on_verified)
                    else:
                        verifier = BackgroundVerify(verify_root, workers=opts.verify_workers, **_resumed_hashing(st))
                stage = Stage(paths, checked_advance(progress, verifier, beside), beside)
                if st is not None:
                    stage = Stage(paths, stage.advance, beside, st.resumed, st.checkpoints, st.record, st.checkpoint)
                if stage.resumed or stage.checkpoints:
                    resumed = sum(stage.resumed.values()) + sum(c.nbytes for c in stage.checkpoints.values())
                    done = f"kept {len(stage.resumed)} of {planned_files} weight file(s)"
                    part = f", {len(stage.checkpoints)} written part way" if stage.checkpoints else ""
                    notes.append(f"resumed an interrupted run: {done}{part}, {resumed / 1e9:.2f} GB.")
                progress.start(total, label)
                try:
                    files = body(stage)
                finally:
                    progress.finish()
                verified = verifier.result() if verifier is not None else False
            except BaseException:
                _cancel(beside, verifier)  # before the staging is removed: nothing writes into it afterwards
                raise
    except BaseException:
        _cancel(beside, verifier)
        raise
    beside.results()
    if verifier is not None and not verified:
        notes.append(NO_CHECKLIST)
    written = sum(p.stat().st_size for p in dsts if p.is_file()) if staging.endswith("files") else total
    return ConversionResult(
        spec=result_spec or plan.spec,
        destination=dsts[0],
        files=files,
        bytes_written=written,
        seconds=time.perf_counter() - started,
        verified=verified,
        notes=tuple(notes),
        resumed_bytes=resumed,
    )
