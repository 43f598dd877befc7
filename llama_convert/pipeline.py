"""``convert``: detect → plan → (tokenizer, weights, configs) into a temporary folder → verify → rename."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path

from .dtypes import DType, dtype_by_name
from .errors import MissingFileError
from .execute import write_weights
from .hf_config import config_json, generation_config_json
from .io.torch_zip import TorchCheckpoint
from .output import atomic_output_dir, check_destination, check_free_space
from .plan import ConversionPlan, build_plan, parse_size
from .releases import Version
from .spec import ModelSpec, detect
from .tokenizer import json_bytes, tokenizer_files
from .verify import VerifyReport, raise_for_report, verify_checksums

__all__ = ["ConversionResult", "Progress", "convert", "plan_conversion"]

_TOKENIZER_ALLOWANCE = 32 << 20  # tokenizer + configs, for the free-space check


class Progress:
    """Progress sink; the CLI passes a terminal bar, the library default does nothing."""

    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert`` did."""

    spec: ModelSpec
    destination: Path
    files: tuple[str, ...]
    bytes_written: int
    seconds: float
    verified: bool  # checksums were checked against checklist.chk and matched
    notes: tuple[str, ...]


def _as_dtype(dtype: str | DType | None) -> DType | None:
    return dtype_by_name(dtype) if isinstance(dtype, str) else dtype


def plan_conversion(
    src: str | os.PathLike[str],
    *,
    dtype: str | DType | None = None,
    max_shard_size: str | int = "5GB",
    llama_version: Version | None = None,
    instruct: bool | None = None,
    fold_kv_heads: bool = True,
) -> ConversionPlan:
    """Detect the model in ``src`` and plan its conversion without writing anything."""
    spec = detect(src, llama_version=llama_version, instruct=instruct, fold_kv_heads=fold_kv_heads)
    with TorchCheckpoint(spec.shards[0]) as first:
        order = list(first.tensors)
    return build_plan(spec, dtype=_as_dtype(dtype), max_shard_size=parse_size(max_shard_size), source_order=order)


def _metadata_files(spec: ModelSpec, dtype: DType, *, tokenizer: bool) -> dict[str, bytes]:
    """Everything but the weights, built in memory first so that a bad tokenizer fails before any write."""
    files = {
        "config.json": json_bytes(config_json(spec, dtype)),
        "generation_config.json": json_bytes(generation_config_json(spec)),
    }
    if tokenizer:
        files.update(_tokenizer_files(spec))
    return files


def _tokenizer_files(spec: ModelSpec) -> dict[str, bytes]:
    assert spec.folder.tokenizer is not None
    return tokenizer_files(
        spec.folder.tokenizer,
        version=spec.release.version,
        instruct=spec.instruct,
        context_length=spec.release.context_length,
    )


def _write_files(out: Path, files: dict[str, bytes]) -> list[str]:
    for name, data in files.items():
        (out / name).write_bytes(data)
    return list(files)


class _BackgroundVerify:
    """Checksum verification running beside the conversion.

    Hashing (md5, one core) overlaps with converting (mostly I/O): the verdict is collected
    before the output is renamed into place, and a mismatch stops the conversion early.
    """

    def __init__(self, src: Path, *, workers: int) -> None:
        self._src = src
        self.report: VerifyReport | None = None
        self.error: BaseException | None = None
        self.missing_checklist = False
        self.mismatch = threading.Event()
        self._cancel = threading.Event()

        def on_file(name: str, expected: str, actual: str) -> None:
            if expected != actual:
                self.mismatch.set()

        def run() -> None:
            try:
                self.report = verify_checksums(src, workers=workers, on_file=on_file, cancel=self._cancel)
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


def _advance(progress: Progress, verifier: _BackgroundVerify | None) -> Callable[[int], None]:
    if verifier is None:
        return progress.advance

    def advance(n: int) -> None:
        progress.advance(n)
        verifier.check()

    return advance


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    dtype: str | DType | None = None,
    max_shard_size: str | int = "5GB",
    llama_version: Version | None = None,
    instruct: bool | None = None,
    force: bool = False,
    verify: bool = True,
    tokenizer: bool = True,
    tokenizer_only: bool = False,
    fold_kv_heads: bool = True,
    verify_workers: int = 1,
    progress: Progress | None = None,
    on_plan: Callable[[ConversionPlan], None] | None = None,
) -> ConversionResult:
    """Convert the Meta checkpoint folder ``src`` into a Hugging Face model folder ``dst``.

    Nothing appears at ``dst`` unless the whole conversion (and, with ``verify``, the
    checksum check against checklist.chk) succeeded. Verification hashes in ``verify_workers``
    background threads while converting; a mismatch stops the conversion as soon as it is known.
    """
    started = time.perf_counter()
    progress = progress or Progress()
    dst = Path(dst)
    check_destination(dst.absolute(), force=force)
    plan = plan_conversion(
        src,
        dtype=dtype,
        max_shard_size=max_shard_size,
        llama_version=llama_version,
        instruct=instruct,
        fold_kv_heads=fold_kv_heads,
    )
    spec = plan.spec
    if on_plan is not None:
        on_plan(plan)
    notes = list(spec.notes)
    weight_bytes = 0 if tokenizer_only else plan.total_size
    check_free_space(dst.absolute(), weight_bytes + _TOKENIZER_ALLOWANCE)
    metadata = _tokenizer_files(spec) if tokenizer_only else _metadata_files(spec, plan.dtype, tokenizer=tokenizer)
    verifier = _BackgroundVerify(spec.folder.root, workers=verify_workers) if verify and not tokenizer_only else None
    try:
        with atomic_output_dir(dst, force=force) as tmp:
            names: list[str] = []
            if not tokenizer_only:
                progress.start(plan.total_size, f"Converting {spec.name}")
                try:
                    names += write_weights(plan, tmp, advance=_advance(progress, verifier))
                finally:
                    progress.finish()
            names += _write_files(tmp, metadata)
            verified = verifier.result() if verifier is not None else False
    except BaseException:
        if verifier is not None:
            verifier.cancel()
        raise
        if verifier is not None and not verified:
            notes.append("no checklist.chk found: checksums were not verified.")
    return ConversionResult(
        spec=spec,
        destination=dst,
        files=tuple(names),
        bytes_written=weight_bytes,
        seconds=time.perf_counter() - started,
        verified=verified,
        notes=tuple(notes),
    )
