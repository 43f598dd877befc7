"""The ``llama-convert`` command: a thin layer over the library that talks and picks exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import (
    ChecksumError,
    ConversionError,
    DestinationExistsError,
    DiskFullError,
    InputError,
    LlamaConvertError,
    UnsafePickleError,
    UnsupportedError,
    VerificationError,
)
from .families.llama.releases import VERSIONS
from .formats.gguf.encode import OUTTYPES
from .options import ConversionResult, Progress
from .routes import RoutePlan, convert, plan, support_matrix
from .version import __version__

__all__ = ["EXIT_CODES", "main"]

# Ordered: the first matching class decides. Documented in the README.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UnsafePickleError, 3),
    (InputError, 3),
    (UnsupportedError, 4),
    (ChecksumError, 5),
    (VerificationError, 5),
    (DestinationExistsError, 6),
    (DiskFullError, 7),
    (ConversionError, 8),
    (LlamaConvertError, 9),
)
EXIT_INTERRUPTED = 130
_COMMANDS = ("convert", "inspect", "verify", "formats", "demo")


class _Bar(Progress):
    """A tqdm bar on a terminal; nothing otherwise (a one-line summary follows at the end)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None

    def start(self, total: int, label: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _describe_plan(args: argparse.Namespace, planned: RoutePlan, *, dry_run: bool = False) -> None:
    spec = planned.spec
    reasons = "; ".join(f"{e.decision} ({e.because})" for e in spec.evidence if e.topic in ("release", "variant"))
    lines = [f"Detected {spec.name}: {reasons}."] if reasons else []
    lines.append(f"Would write {planned.headline}." if dry_run else f"  {planned.headline}.")
    lines += [f"  note: {note}" for note in planned.notes]
    _say(args, "\n".join(lines))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llama-version", choices=VERSIONS, help="override the detected release")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--instruct", dest="instruct", action="store_const", const=True, help="treat as instruct/chat")
    kind.add_argument("--base", dest="instruct", action="store_const", const=False, help="treat as a base model")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="output dtype (default: as stored)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output file (default 5GB)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-convert",
        description="Convert Meta's original Llama checkpoints into Hugging Face model folders.",
        epilog="`llama-convert SRC DST` is short for `llama-convert convert SRC DST`.",
    )
    parser.add_argument("--version", action="version", version=f"llama-convert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert a Meta checkpoint into a Hugging Face folder or GGUF, and back")
    conv.add_argument(
        "src", help="Meta or Hugging Face folder, Hub repository id (org/name[@rev]) or s3:// gs:// hf:// https:// URL"
    )
    conv.add_argument("dst", type=Path, help="output folder or .gguf file (must not exist or be empty unless --force)")
    _add_common(conv)
    conv.add_argument("--force", action="store_true", help="replace an existing destination")
    conv.add_argument("--no-verify", dest="verify", action="store_false", help="skip checklist.chk verification")
    conv.add_argument("--tokenizer-only", action="store_true", help="write only the tokenizer files")
    conv.add_argument("--keep-kv-heads", action="store_true", help="do not fold duplicated KV heads (MP16)")
    conv.add_argument(
        "--keep-fp8", action="store_true", help="FP8 release → an fbgemm_fp8 Hugging Face folder (default: bf16)"
    )
    conv.add_argument("--no-resume", dest="resume", action="store_false", help="discard an interrupted run's files")
    conv.add_argument(
        "--to", choices=("hf", "meta", "gguf"), help="target format (default: gguf for a .gguf DST, else the other)"
    )
    conv.add_argument("--mp", type=int, help="model-parallel degree of Meta output (--to meta)")
    conv.add_argument(
        "--outtype",
        type=str.lower,
        choices=tuple(OUTTYPES),
        metavar="OUTTYPE",
        help=f"GGUF type, any case: {', '.join(OUTTYPES)} (default: as stored)",
    )
    conv.add_argument(
        "--no-mmproj", dest="mmproj", action="store_false", help="GGUF: do not write the vision projector file"
    )
    conv.add_argument(
        "--adapter",
        dest="adapters",
        type=Path,
        action="append",
        default=[],
        metavar="PEFT_DIR",
        help="merge this PEFT LoRA adapter while converting (repeatable)",
    )
    conv.add_argument("--no-tokenizer", dest="tokenizer", action="store_false", help="write no tokenizer files")
    conv.add_argument("--dry-run", action="store_true", help="print the plan and exit without writing")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    conv.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    insp = sub.add_parser("inspect", help="describe a folder and what converting it would write")
    insp.add_argument("src", help="folder, Hub repository id or remote URL")
    _add_common(insp)
    insp.add_argument("--json", action="store_true", help="machine-readable output")
    insp.add_argument("--plan", action="store_true", help="also print every output tensor: sources, steps, file")

    ver = sub.add_parser("verify", help="check a Meta folder against its checklist.chk, or a GGUF file's structure")
    ver.add_argument("src", help="Meta folder (local, Hub repository id or remote URL) or .gguf file")
    ver.add_argument("-q", "--quiet", action="store_true")
    ver.add_argument("--json", action="store_true")

    fmt = sub.add_parser("formats", help="print the support matrix: every family × route, supported or why not")
    fmt.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="synthesize a tiny Llama 3.1 checkpoint, convert it and load it")
    demo.add_argument("dst", type=Path, nargs="?", help="where to put the demo (default: a temporary folder)")
    demo.add_argument("-q", "--quiet", action="store_true")
    return parser


def _convert(args: argparse.Namespace) -> int:
    options = {
        "dtype": args.dtype,
        "max_shard_size": args.max_shard_size,
        "llama_version": args.llama_version,
        "instruct": args.instruct,
    }
    options.update(
        force=args.force,
        verify=args.verify,
        tokenizer_only=args.tokenizer_only,
        fold_kv_heads=not args.keep_kv_heads,
        resume=args.resume,
        mp=args.mp,
        outtype=args.outtype,
        mmproj=args.mmproj,
        tokenizer=args.tokenizer,
        keep_fp8=args.keep_fp8,
        adapters=tuple(args.adapters),
    )
    if args.dry_run:
        planned = plan(args.src, args.dst, to=args.to, **options)
        if args.json:
            print(json.dumps(planned.to_json(), indent=2))
            return 0
        _describe_plan(args, planned, dry_run=True)
        print("\n".join(planned.lines()))
        return 0
    interactive = not args.quiet and not args.json and sys.stderr.isatty()
    result: ConversionResult = convert(
        args.src,
        args.dst,
        to=args.to,
        progress=_Bar(interactive),
        on_plan=None if args.quiet or args.json else lambda planned: _describe_plan(args, planned),
        **options,
    )
    if args.json:
        print(json.dumps(_result_json(result), indent=2))
        return 0
    rate = result.bytes_written / max(result.seconds, 1e-9) / 1e6
    check = "checksums verified" if result.verified else ("checksums NOT verified" if args.verify else "--no-verify")
    _say(
        args,
        f"Wrote {result.destination} ({len(result.files)} files, {result.bytes_written / 1e9:.2f} GB) in "
        f"{result.seconds:.1f} s ({rate:.0f} MB/s); {check}.",
    )
    for note in result.notes:
        _say(args, f"note: {note}")
    return 0


def _result_json(result: ConversionResult) -> dict:
    from .families import family_of

    return {
        "model": result.spec.name,
        **family_of(result.spec).details(result.spec),
        "family": result.spec.family,
        "instruct": result.spec.instruct,
        "destination": str(result.destination),
        "files": list(result.files),
        "bytes_written": result.bytes_written,
        "seconds": round(result.seconds, 3),
        "verified": result.verified,
        "notes": list(result.notes),
    }


def _inspect(args: argparse.Namespace) -> int:
    from .describe import inspect

    report = inspect(
        args.src,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        llama_version=args.llama_version,
        instruct=args.instruct,
    )
    if args.json:
        data = report.to_json()
        if args.plan and report.plan is not None:
            data["plan"] = report.plan.to_json()
        print(json.dumps(data, indent=2))
        return 0
    print(f"{report.path}: {report.summary}")
    if report.kind == "gguf":
        print("  tensor types by class:")
        for cls, row in report.details.get("class_types", {}).items():
            print(f"  {cls:<12} " + ", ".join(f"{n} {name}" for name, n in row.items()))
    if report.kind != "meta":
        return 0
    d = report.details
    print(f"  model        {d['summary']} ({d['parameters'] / 1e9:.2f} B parameters)")
    print(f"  layout       MP{d['model_parallel']}, {d['source_dtype']} → {d['output_dtype']}")
    for e in d["evidence"]:
        print(f"  {e['topic']:<12} {e['decision']} ← {e['because']}")
    print(f"  reads        {d['source_bytes'] / 1e9:.2f} GB; writes {d['output_bytes'] / 1e9:.2f} GB")
    print(
        f"  needs        {d['disk_needed_bytes'] / 1e9:.2f} GB free; about {d['estimated_seconds']:.0f} s at 500 MB/s"
    )
    print("  files        " + ", ".join(d["files"]))
    for note in d["notes"]:
        print(f"  note         {note}")
    if args.plan and report.plan is not None:
        print("\n".join(report.plan.lines()))
    return 0


def _verify_gguf(args: argparse.Namespace) -> int:
    from .formats.gguf.reader import describe_gguf, verify_gguf

    if args.json:
        report = describe_gguf(args.src)
        print(json.dumps({"ok": not report.problems, **report.to_json()}, indent=2))
        return 0 if not report.problems else 5
    report = verify_gguf(args.src)
    _say(args, f"{args.src}: structure OK — {report.summary}.")
    for line in report.type_lines():
        _say(args, line)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .formats.storage import resolve_source
    from .verify import expected_checksums, raise_for_report, verify_checksums

    src = resolve_source(args.src)
    if src.suffix == ".gguf" and src.is_file():
        return _verify_gguf(args)
    listed = [src / name for name in expected_checksums(src)]
    total = sum(p.stat().st_size for p in listed if p.is_file())
    bar = _Bar(not args.quiet and not args.json and sys.stderr.isatty())
    bar.start(total, f"Verifying {args.src}")
    try:
        report = verify_checksums(src, progress=bar.advance)
    finally:
        bar.finish()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "checked": list(report.checked),
                    "missing": list(report.missing),
                    "mismatched": [list(m) for m in report.mismatched],
                    "unlisted": list(report.unlisted),
                    "bytes_hashed": report.bytes_hashed,
                    "seconds": round(report.seconds, 3),
                },
                indent=2,
            )
        )
        return 0 if report.ok else 5
    raise_for_report(report, src)
    rate = report.bytes_hashed / max(report.seconds, 1e-9) / 1e6
    _say(
        args,
        f"{args.src}: {len(report.checked)} files match checklist.chk "
        f"({report.bytes_hashed / 1e9:.2f} GB in {report.seconds:.1f} s, {rate:.0f} MB/s).",
    )
    for name in report.unlisted:
        _say(args, f"note: {name} is not listed in any checklist.")
    return 0


def _formats(args: argparse.Namespace) -> int:
    rows = support_matrix()
    if args.json:
        print(json.dumps({"routes": rows}, indent=2))
        return 0
    print(format_matrix(rows))
    return 0


def format_matrix(rows: list[dict]) -> str:
    """The support matrix as a Markdown table: one row per family × route (the README shows this)."""
    out = ["| family | from | to | status | GGUF types / why not |", "|---|---|---|---|---|"]
    for r in rows:
        detail = ", ".join(r.get("outtypes") or []) if r["status"] == "supported" else r["why"]
        out.append(f"| {r['family']} | {r['from']} | {r['to']} | {r['status']} | {detail} |")
    return "\n".join(out)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.dst, say=lambda text: _say(args, text))
    return 0


def _debug() -> bool:
    """``LLAMA_CONVERT_DEBUG`` asks for tracebacks; the usual false spellings (0, false, no, off, empty) do not."""
    return os.environ.get("LLAMA_CONVERT_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _exit_code(exc: BaseException) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llama-convert``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in _COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "convert")
    args = _parser().parse_args(argv)
    handler = {"convert": _convert, "inspect": _inspect, "verify": _verify, "formats": _formats, "demo": _demo}[
        args.command
    ]
    started = time.perf_counter()
    try:
        return handler(args)
    except LlamaConvertError as exc:
        if _debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted after {time.perf_counter() - started:.0f} s; nothing was written "
            "(temporary files were removed).",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except OSError as exc:  # the machine said no (permissions, I/O error): say it plainly
        if _debug():
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; nothing was written.", file=sys.stderr)
        return 8
