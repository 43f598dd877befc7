"""Routes: every conversion is a cell of one table, planned as a value and then run.

``convert`` picks the route from the source's format and the target (``to``, or a ``.gguf``
destination), checks the destination, plans (nothing read but headers) and runs the plan. ``plan``
returns the same plan without writing anything (``--dry-run``, ``inspect --plan``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..detect import detect
from ..errors import UnsupportedError
from ..formats.storage import resolve_source
from ..options import ConversionResult, ConvertOptions, Progress
from ..output import check_destination, check_file_destination
from ..plan import ConversionPlan
from .adapters import load_adapters
from .common import Route, RoutePlan
from .matrix import support_matrix
from .meta_hf import plan_for
from .table import FORMATS, ROUTES, route_for, source_format, target_format

__all__ = [
    "FORMATS",
    "ROUTES",
    "ConversionResult",
    "ConvertOptions",
    "Progress",
    "Route",
    "RoutePlan",
    "convert",
    "plan",
    "plan_conversion",
    "route_for",
    "source_format",
    "support_matrix",
    "target_format",
]


def plan(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str | None = None, **options: Any
) -> RoutePlan:
    """What converting ``src`` into ``dst`` would write, without writing anything; ``options`` are the
    fields of ``ConvertOptions``."""
    src_path, dst_path = resolve_source(src), Path(dst)
    route = route_for(src_path, dst_path, to)
    opts = ConvertOptions(**options)
    _check_keep_fp8(route, opts)
    return route.plan(src_path, dst_path, opts)


def _check_keep_fp8(route: Route, opts: ConvertOptions) -> None:
    if opts.keep_fp8 and route.source != "meta":
        raise UnsupportedError("--keep-fp8 applies to Meta's FP8 releases; this source is not a Meta checkpoint.")


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[RoutePlan], None] | None = None,
    **options: Any,
) -> ConversionResult:
    """Convert ``src`` into ``dst``: a Meta checkpoint folder (local, a Hub repository id ``org/name[@rev]``
    or a remote ``s3://``, ``gs://``, ``hf://`` or ``https://`` folder) into a Hugging Face folder (default), a
    ``.gguf`` file (``to="gguf"``) or Meta shards (``to="meta"``, ``mp=N``); a Hugging Face folder into
    Meta's format or GGUF. ``options`` are the fields of ``ConvertOptions``.

    Nothing appears at ``dst`` unless the whole conversion (and, with ``verify``, the checksum check
    against checklist.chk) succeeded.
    """
    opts = ConvertOptions(**options)
    src_path, dst_path = resolve_source(src), Path(dst)
    route = route_for(src_path, dst_path, to)
    _check_keep_fp8(route, opts)
    check = check_file_destination if route.target == "gguf" else check_destination
    check(dst_path.absolute(), force=opts.force)
    planned = route.plan(src_path, dst_path, opts)
    if on_plan is not None:
        on_plan(planned)
    return route.run(planned, dst_path, opts, progress or Progress())


def plan_conversion(
    src: str | os.PathLike[str],
    *,
    dtype: Any = None,
    max_shard_size: str | int = "5GB",
    llama_version: str | None = None,
    instruct: bool | None = None,
    fold_kv_heads: bool = True,
    adapters: Sequence[str | os.PathLike[str]] = (),
) -> ConversionPlan:
    """Recognise the model in ``src`` and plan its conversion to Hugging Face without writing anything
    (``adapters``: PEFT LoRA folders merged on the way)."""
    spec = detect(src, llama_version=llama_version, instruct=instruct, fold_kv_heads=fold_kv_heads)
    return plan_for(spec, dtype=dtype, max_shard_size=max_shard_size, adapters=load_adapters(adapters))
