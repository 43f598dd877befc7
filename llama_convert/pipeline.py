"""``convert``: recognise → plan → (tokenizer, weights, configs) into a temporary folder → verify → rename.

The direction follows from the source and the target: a Meta folder goes to a Hugging Face folder by
default (here), to GGUF (``formats.gguf``) or to Meta shards of another model-parallel degree
(``formats.meta``); a Hugging Face folder goes back to Meta's format.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import __version__
from .detect import detect
from .dtypes import DType, dtype_by_name
from .errors import UnsupportedError
from .execute import write_weights
from .families import ModelSpec, family_of
from .formats.meta.torch_zip import TorchCheckpoint
from .output import check_destination, check_free_space, resumable_output_dir
from .plan import ConversionPlan, build_plan, parse_size
from .resume import fingerprint
from .verify import BackgroundVerify

__all__ = ["ConversionResult", "ConvertOptions", "Progress", "convert", "plan_conversion", "source_format"]

_TOKENIZER_ALLOWANCE = 32 << 20  # tokenizer + configs, for the free-space check
Format = Literal["meta", "hf", "gguf"]


@dataclass(frozen=True)
class ConvertOptions:
    """Every option of a conversion, whatever the route."""

    dtype: str | DType | None = None
    max_shard_size: str | int = "5GB"
    llama_version: str | None = None
    instruct: bool | None = None
    force: bool = False
    verify: bool = True
    tokenizer: bool = True
    tokenizer_only: bool = False
    fold_kv_heads: bool = True
    verify_workers: int = 1
    resume: bool = True
    mp: int | None = None  # model-parallel degree of Meta output
    outtype: str | None = None  # GGUF tensor type: bf16, f16, q8_0


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
    resumed_bytes: int = 0  # output bytes kept from an interrupted run


def _as_dtype(dtype: str | DType | None) -> DType | None:
    return dtype_by_name(dtype) if isinstance(dtype, str) else dtype


def source_format(src: Path) -> Format:
    """``hf`` for a Hugging Face model folder (config.json + weights, no Meta checkpoint), ``gguf`` for a
    .gguf file, else ``meta`` (whose reader then says precisely what is missing)."""
    if src.is_file() and src.suffix == ".gguf":
        return "gguf"
    hf_files = src.is_dir() and (src / "config.json").is_file() and not (src / "params.json").exists()
    if hf_files and not (src / "original").is_dir() and (any(src.glob("*.safetensors")) or any(src.glob("*.bin"))):
        return "hf"
    return "meta"


def target_format(source: Format, dst: Path, to: str | None) -> Format:
    """The target: ``to`` when given, GGUF for a ``.gguf`` destination, else the other format."""
    if to is not None:
        if to not in ("meta", "hf", "gguf"):
            raise UnsupportedError(f"--to {to!r} is not a format; use meta, hf or gguf.")
        return to  # type: ignore[return-value]
    if dst.suffix == ".gguf":
        return "gguf"
    return "hf" if source == "meta" else "meta"


def plan_conversion(
    src: str | os.PathLike[str],
    *,
    dtype: str | DType | None = None,
    max_shard_size: str | int = "5GB",
    llama_version: str | None = None,
    instruct: bool | None = None,
    fold_kv_heads: bool = True,
) -> ConversionPlan:
    """Recognise the model in ``src`` and plan its conversion to Hugging Face without writing anything."""
    spec = detect(src, llama_version=llama_version, instruct=instruct, fold_kv_heads=fold_kv_heads)
    return plan_for(spec, dtype=_as_dtype(dtype), max_shard_size=parse_size(max_shard_size))


def plan_for(spec: ModelSpec, *, dtype: DType | None, max_shard_size: int) -> ConversionPlan:
    """The Hugging Face plan of a recognised spec, tensors in the first shard's order."""
    dtype = dtype or spec.source_dtype
    with TorchCheckpoint(spec.shards[0]) as first:
        order = list(first.tensors)
    recipes = family_of(spec).recipes(spec, dtype)
    return build_plan(spec, recipes, dtype=dtype, max_shard_size=max_shard_size, source_order=order)


def _write_files(out: Path, files: dict[str, bytes]) -> list[str]:
    for name, data in files.items():
        (out / name).write_bytes(data)
    return list(files)


class _Beside:
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
    progress: Progress, verifier: BackgroundVerify | None, beside: _Beside | None = None
) -> Callable[[int], None]:
    if verifier is None and beside is None:
        return progress.advance

    def advance(n: int) -> None:
        progress.advance(n)
        if verifier is not None:
            verifier.check()
        if beside is not None:
            beside.check()

    return advance


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[ConversionPlan], None] | None = None,
    **options: object,
) -> ConversionResult:
    """Convert ``src`` into ``dst``: a Meta checkpoint folder into a Hugging Face folder (default), a
    ``.gguf`` file (``to="gguf"``) or Meta shards (``to="meta"``, ``mp=N``); a Hugging Face folder into
    Meta's format. ``options`` are the fields of ``ConvertOptions``.

    Nothing appears at ``dst`` unless the whole conversion (and, with ``verify``, the checksum check
    against checklist.chk) succeeded.
    """
    opts = ConvertOptions(**options)  # type: ignore[arg-type]
    progress = progress or Progress()
    src_path, dst_path = Path(src), Path(dst)
    source = source_format(src_path)
    target = target_format(source, dst_path, to)
    if source == "gguf":
        raise UnsupportedError(f"{src_path} is a GGUF file; converting from GGUF is not supported.")
    if (source, target) == ("meta", "hf"):
        return convert_to_hf(src_path, dst_path, opts, progress=progress, on_plan=on_plan)
    if target == "gguf":
        from .formats.gguf.route import convert_to_gguf

        return convert_to_gguf(src_path, dst_path, opts, progress=progress)
    if target == "meta":
        from .formats.meta.route import convert_to_meta

        return convert_to_meta(src_path, dst_path, opts, progress=progress)
    raise UnsupportedError(f"{src_path} is already a Hugging Face model folder; nothing to convert.")


def convert_to_hf(
    src: Path,
    dst: Path,
    opts: ConvertOptions,
    *,
    progress: Progress,
    on_plan: Callable[[ConversionPlan], None] | None = None,
) -> ConversionResult:
    """A Meta checkpoint → a Hugging Face model folder. Verification hashes in background threads while
    converting; a mismatch stops the conversion as soon as it is known."""
    started = time.perf_counter()
    check_destination(dst.absolute(), force=opts.force)
    spec = detect(src, llama_version=opts.llama_version, instruct=opts.instruct, fold_kv_heads=opts.fold_kv_heads)
    plan = plan_for(spec, dtype=_as_dtype(opts.dtype), max_shard_size=parse_size(opts.max_shard_size))
    if on_plan is not None:
        on_plan(plan)
    family = family_of(spec)
    notes = list(spec.notes)
    weight_bytes = 0 if opts.tokenizer_only else plan.total_size
    check_free_space(dst.absolute(), weight_bytes + _TOKENIZER_ALLOWANCE)
    with_tokenizer = opts.tokenizer or opts.tokenizer_only
    checks = [] if opts.tokenizer_only else getattr(family, "deferred_checks", lambda spec: [])(spec)
    beside = _Beside([lambda: family.metadata_files(spec, plan.dtype, tokenizer=with_tokenizer), *checks])
    verify = opts.verify and not opts.tokenizer_only
    verifier = BackgroundVerify(spec.folder.root, workers=opts.verify_workers) if verify else None
    sources = [*spec.shards, spec.folder.params_path, *([spec.folder.tokenizer] if spec.folder.tokenizer else [])]
    options = (opts.tokenizer_only, with_tokenizer)
    key = fingerprint(sources, __version__, "hf", options, plan.to_json(), spec.name, spec.instruct)
    resumed = 0
    try:
        with resumable_output_dir(dst, fingerprint=key, force=opts.force, resume=opts.resume) as staging:
            names: list[str] = []
            if not opts.tokenizer_only:
                resumed = sum(staging.resumed.values())
                if staging.resumed:
                    notes.append(
                        f"resumed an interrupted run: kept {len(staging.resumed)} of {len(plan.files)} weight "
                        f"file(s), {resumed / 1e9:.2f} GB."
                    )
                progress.start(plan.total_size, f"Converting {spec.name}")
                try:
                    names += write_weights(
                        plan,
                        staging.path,
                        advance=checked_advance(progress, verifier, beside),
                        skip=frozenset(staging.resumed),
                        on_file_done=staging.record,
                    )
                finally:
                    progress.finish()
            metadata = beside.results()[0]
            assert isinstance(metadata, dict)
            if opts.tokenizer_only:
                metadata = {k: v for k, v in metadata.items() if k not in ("config.json", "generation_config.json")}
            names += _write_files(staging.path, metadata)
            verified = verifier.result() if verifier is not None else False
    except BaseException:
        beside.cancel()
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
        resumed_bytes=resumed,
    )
