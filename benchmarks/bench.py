"""Benchmark llama-convert against the physical limits of the machine and transformers' converter.

For each model shape it synthesizes a full-size Meta checkpoint (random weights, real layout), then
runs every row as a whole process with a cold page cache:

- ``cp -r SRC DST && sync``       the disk limit (read everything once, write it once, durable)
- ``md5sum LARGEST_SHARD``        the hashing limit (verification cannot finish before this)
- ``llama-convert``               our converter, checksum verification on (the default)
- ``llama-convert --no-verify``   our converter without verification
- ``llama-convert (cgroup)``      the default conversion inside a memory cgroup (default 2 GiB)
- ``transformers 4.47.1``         the baseline converter, from a separate venv (``--baseline-python``)

and reports wall time, CPU time, peak RSS, bytes read and written and the ratios to the limits, as a
Markdown table (printed and saved with the raw numbers as JSON).

Run it as root to drop the page cache and to use the memory cgroup; both are skipped (and the table
says so) otherwise. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1 << 30
MIB = 1 << 20
TIME_BIN = "/usr/bin/time"
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
WALL_TARGET = 1.15  # × the physical limit
RSS_TARGET = 1 * GIB
FLAT_TARGET = 0.20  # peak RSS of the smallest and largest model within 20 % of each other


# -- model shapes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCase:
    """A checkpoint shape to synthesize and the flags transformers' converter needs for it."""

    key: str
    preset: str  # name in llama_convert.testing.synth.PRESETS
    folder: str  # folder name; our converter reads the release from it as Meta's downloads name it
    baseline_version: str  # --llama_version of transformers' converter
    n_layers: int | None = None  # override the preset's depth (70B layout that fits on a small disk)


def model_case(key: str) -> ModelCase:
    fixed = {
        "1b": ModelCase("1b", "llama3.2-1b", "Llama3.2-1B", "3.2"),
        "3b": ModelCase("3b", "llama3.2-3b", "Llama3.2-3B", "3.2"),
        "8b": ModelCase("8b", "llama3.1-8b", "Llama3.1-8B", "3.1"),
    }
    if key in fixed:
        return fixed[key]
    if m := re.fullmatch(r"70b-mp8-(\d+)layers", key):
        n = int(m[1])
        return ModelCase(key, "llama3.1-70b", f"Llama3.1-70B-{n}layers", "3.1", n_layers=n)
    raise SystemExit(f"unknown model {key!r}; choose from 1b, 3b, 8b, 70b-mp8-<N>layers (e.g. 70b-mp8-8layers)")


def synth_spec(case: ModelCase) -> Any:
    from llama_convert.testing.synth import PRESETS

    spec = PRESETS[case.preset]
    if case.n_layers is not None:
        spec = spec.with_(params={**spec.params, "n_layers": case.n_layers})
    return spec.with_(fill="fast")


def estimated_bytes(spec: Any) -> int:
    """Bytes of weights the synthesized checkpoint holds (the converted output is about the same)."""
    p = spec.params
    dim, layers, heads = p["dim"], p["n_layers"], p["n_heads"]
    kv = p.get("n_kv_heads", heads)
    hd = dim // heads
    mult, multiple_of = p.get("ffn_dim_multiplier", 1.0), p["multiple_of"]
    ffn = multiple_of * math.ceil(int(mult * int(8 * dim / 3)) / multiple_of)
    per_layer = dim * hd * (2 * heads + 2 * kv) + 3 * dim * ffn + 2 * dim
    return 2 * (layers * per_layer + 2 * p["vocab_size"] * dim + dim)


# -- environment: page cache, memory cgroup, process measurement -------------------------------------


def drop_page_cache() -> bool:
    """Write back dirty pages and drop the page cache; False when not permitted (not root, container)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def parse_size(text: str) -> int:
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m[2].lower() not in units:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a size; write e.g. 2GiB or 40GB")
    return int(float(m[1]) * units[m[2].lower()])


@dataclass
class MemoryCgroup:
    """A child memory cgroup of our own, with a hard limit; processes join it before exec."""

    path: Path
    version: int  # 1 or 2
    limit: int

    @classmethod
    def create(cls, limit: int) -> MemoryCgroup:
        """Create it under the cgroup this process is in; raise OSError with the reason if impossible."""
        mounts = _cgroup_mounts()
        own = _own_cgroups()
        name = f"llama-convert-bench-{os.getpid()}"
        if "memory" in mounts and "memory" in own:  # cgroup v1 memory controller
            path = mounts["memory"] / own["memory"].lstrip("/") / name
            path.mkdir()
            group = cls(path, 1, limit)
            try:
                (path / "memory.limit_in_bytes").write_text(str(limit))
                with contextlib.suppress(OSError):  # absent without swap accounting
                    (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            except OSError:
                group.remove()
                raise
            return group
        if "" in mounts and "" in own:  # cgroup v2: needs memory delegated to our subtree
            parent = mounts[""] / own[""].lstrip("/")
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                raise OSError(f"the memory controller is not enabled for children of cgroup {own['']}")
            path = parent / name
            path.mkdir()
            group = cls(path, 2, limit)
            try:
                (path / "memory.max").write_text(str(limit))
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
            except OSError:
                group.remove()
                raise
            return group
        raise OSError("no writable memory cgroup controller (neither v1 memory nor v2 with memory delegated)")

    def join(self) -> None:
        """Move the calling process into the group (called in the child between fork and exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict[str, int]:
        def read(name: str) -> str | None:
            try:
                return (self.path / name).read_text()
            except OSError:
                return None

        out: dict[str, int] = {}
        if self.version == 1:
            for key, name in (("peak_bytes", "memory.max_usage_in_bytes"), ("failcnt", "memory.failcnt")):
                if (text := read(name)) is not None:
                    out[key] = int(text)
            for line in (read("memory.oom_control") or "").splitlines():
                if line.startswith("oom_kill "):
                    out["oom_kills"] = int(line.split()[1])
        else:
            if (text := read("memory.peak")) is not None:
                out["peak_bytes"] = int(text)
            for line in (read("memory.events") or "").splitlines():
                key, _, value = line.partition(" ")
                if key in ("max", "oom_kill"):
                    out["failcnt" if key == "max" else "oom_kills"] = int(value)
        return out

    def remove(self) -> None:
        for _ in range(50):  # the last process may still be exiting
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def _cgroup_mounts() -> dict[str, Path]:
    """Controller name ("" for the v2 hierarchy) → mount point."""
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            pre, _, post = line.partition(" - ")
            fstype, _, options = [*post.split(" "), "", "", ""][:3]
            point = Path(pre.split(" ")[4])
            if fstype == "cgroup2":
                mounts.setdefault("", point)
            elif fstype == "cgroup" and "memory" in options.split(","):
                mounts.setdefault("memory", point)
    return mounts


def _own_cgroups() -> dict[str, str]:
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
    return own


def cpu_busy_seconds() -> tuple[float, float]:
    """CPU seconds all processes spent so far in user mode (user, nice) and in the kernel (system, irq,
    softirq, steal: includes the kernel's writeback threads), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice) / tick, (system + irq + softirq + steal) / tick


def disk_sectors() -> tuple[int, int]:
    """Sectors read and written by all whole disks so far (/proc/diskstats)."""
    read = written = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/diskstats").read_text().splitlines():
            f = line.split()
            if Path(f"/sys/block/{f[2]}/device").exists():
                read, written = read + int(f[5]), written + int(f[9])
    return read, written


def wait_for_idle(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` of the CPUs; return the
    busy fraction last seen. Other people's jobs on a shared 2-core machine make timings meaningless."""
    deadline = time.monotonic() + max_wait
    while True:
        before = sum(cpu_busy_seconds())
        time.sleep(2.0)
        busy = (sum(cpu_busy_seconds()) - before) / (2.0 * (os.cpu_count() or 1))
        if busy < threshold or time.monotonic() > deadline:
            return busy
        time.sleep(3.0)


@dataclass
class Measurement:
    """One process run: what /usr/bin/time -v (or wait4's rusage) reported."""

    wall_s: float
    user_s: float
    sys_s: float
    max_rss_bytes: int
    read_bytes: int  # block-device reads (rusage inblock × 512): page cache hits are free
    written_bytes: int  # rusage oublock × 512: bytes the process dirtied for writing
    exit_code: int
    measured_by: str
    cgroup: dict[str, int] = field(default_factory=dict)
    others_user_s: float = 0.0  # user CPU time of other processes during the run: noise on a shared machine
    kernel_other_s: float = 0.0  # system time outside the process: writeback threads, interrupts, others
    disk_read_bytes: int = 0  # the whole disk during the run, all processes and writeback
    disk_written_bytes: int = 0

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


_TIME_FIELDS = {
    "User time (seconds)": "user",
    "System time (seconds)": "sys",
    "Maximum resident set size (kbytes)": "rss_kb",
    "File system inputs": "inblock",
    "File system outputs": "oublock",
    "Exit status": "exit",
}


def run_measured(
    argv: list[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cgroup: MemoryCgroup | None = None,
) -> Measurement:
    """Run ``argv`` as a child process (under /usr/bin/time -v when present) and measure it."""
    use_time = os.access(TIME_BIN, os.X_OK)
    with tempfile.NamedTemporaryFile("r", prefix="time-", suffix=".txt", delete=False) as tf:
        time_out = Path(tf.name)
    full = [TIME_BIN, "-v", "-o", str(time_out), *argv] if use_time else argv
    preexec: Callable[[], None] | None = cgroup.join if cgroup is not None else None
    try:
        with open(log, "wb") as out:
            busy0, (r0, w0) = cpu_busy_seconds(), disk_sectors()
            start = time.perf_counter()
            proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            (u1, k1), (r1, w1) = cpu_busy_seconds(), disk_sectors()
            proc.returncode = os.waitstatus_to_exitcode(status)
        if use_time:
            values = _parse_time_v(time_out.read_text(errors="replace"))
            if "exit" not in values:  # time itself was killed (e.g. OOM in the cgroup)
                values["exit"] = proc.returncode
            m = Measurement(
                wall_s=wall,
                user_s=values.get("user", usage.ru_utime),
                sys_s=values.get("sys", usage.ru_stime),
                max_rss_bytes=int(values.get("rss_kb", usage.ru_maxrss)) * 1024,
                read_bytes=int(values.get("inblock", usage.ru_inblock)) * 512,
                written_bytes=int(values.get("oublock", usage.ru_oublock)) * 512,
                exit_code=int(values["exit"]),
                measured_by="/usr/bin/time -v",
            )
        else:
            m = Measurement(
                wall_s=wall,
                user_s=usage.ru_utime,
                sys_s=usage.ru_stime,
                max_rss_bytes=usage.ru_maxrss * 1024,  # kilobytes on Linux
                read_bytes=usage.ru_inblock * 512,
                written_bytes=usage.ru_oublock * 512,
                exit_code=proc.returncode,
                measured_by="os.wait4 rusage",
            )
    finally:
        time_out.unlink(missing_ok=True)
    m.others_user_s = max(0.0, u1 - busy0[0] - m.user_s)
    m.kernel_other_s = max(0.0, k1 - busy0[1] - m.sys_s)
    m.disk_read_bytes, m.disk_written_bytes = (r1 - r0) * 512, (w1 - w0) * 512
    if cgroup is not None:
        m.cgroup = cgroup.stats()
    return m


def _parse_time_v(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key in _TIME_FIELDS:
            with contextlib.suppress(ValueError):
                values[_TIME_FIELDS[key]] = float(value)
    return values


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# -- rows ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    argv: Callable[[Path, Path], list[str]]  # (source folder, destination) → command
    writes: bool = True  # has an output folder to measure and remove
    in_cgroup: bool = False
    env: dict[str, str] | None = None
    disk_factor: float = 1.0  # output + temporaries, in multiples of the checkpoint size


def largest_shard(src: Path) -> Path:
    return max(src.glob("consolidated.*.pth"), key=lambda p: p.stat().st_size)


def make_rows(args: argparse.Namespace, case: ModelCase, baseline_ok: bool) -> list[Row]:
    py = args.python
    ours = [py, "-m", "llama_convert", "convert"]
    rows = [
        Row("cp", "`cp -r SRC DST && sync`", lambda s, d: ["sh", "-c", 'cp -r "$0" "$1" && sync', str(s), str(d)]),
        Row("md5sum", "`md5sum` largest shard", lambda s, d: ["md5sum", str(largest_shard(s))], writes=False),
        Row("ours", "llama-convert", lambda s, d: [*ours, str(s), str(d), "--json"]),
        Row(
            "ours-noverify", "llama-convert --no-verify", lambda s, d: [*ours, str(s), str(d), "--json", "--no-verify"]
        ),
    ]
    if args.cgroup_limit:
        rows.append(
            Row(
                "ours-cgroup",
                f"llama-convert, cgroup {args.cgroup_limit / GIB:g} GiB",
                lambda s, d: [*ours, str(s), str(d), "--json"],
                in_cgroup=True,
            )
        )
    if baseline_ok:
        script = (
            '"$0" -m transformers.models.llama.convert_llama_weights_to_hf --input_dir "$1" --output_dir "$2" '
            '--llama_version "$3" --num_shards "$4" && sync'
        )
        rows.append(
            Row(
                "baseline",
                "transformers 4.47.1 + `sync`",
                lambda s, d: [
                    "sh",
                    "-c",
                    script,
                    args.baseline_python,
                    str(s),
                    str(d),
                    case.baseline_version,
                    str(len(list(s.glob("consolidated.*.pth")))),
                ],
                # It writes per-layer temporary .bin files (into TMPDIR) before the output.
                env={**os.environ, "TMPDIR": str(args.workdir / "tmp"), "HF_HUB_OFFLINE": "1"},
                disk_factor=2.0,
            )
        )
    return [r for r in rows if not args.rows or r.key in args.rows]


def check_baseline(python: str | None) -> tuple[bool, str]:
    if not python:
        return False, "no --baseline-python given"
    try:
        out = subprocess.run(
            [python, "-c", "import torch, transformers; print(transformers.__version__, torch.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"baseline python does not work ({exc})"
    return True, f"transformers {out[0]}, torch {out[1]}"


# -- the run --------------------------------------------------------------------------------------------


def _fingerprint(case: ModelCase) -> str:
    return json.dumps(dataclasses.asdict(synth_spec(case)), sort_keys=True, default=str)


def reusable(case: ModelCase, workdir: Path) -> bool:
    """A previous --keep run left this very checkpoint."""
    stamp = workdir / f"{case.folder}.synth.json"
    return (workdir / case.folder).is_dir() and stamp.is_file() and stamp.read_text() == _fingerprint(case)


def synthesize_case(case: ModelCase, workdir: Path) -> tuple[Path, float | None]:
    """Synthesize (or reuse, when a previous --keep run left the same one) the checkpoint."""
    from llama_convert.testing.synth import synthesize

    spec = synth_spec(case)
    src = workdir / case.folder
    stamp = workdir / f"{case.folder}.synth.json"
    fingerprint = _fingerprint(case)
    if reusable(case, workdir):
        return src, None
    remove(src)
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    synthesize(src, spec)
    os.sync()
    stamp.write_text(fingerprint)
    return src, time.perf_counter() - start


def run_row(row: Row, src: Path, workdir: Path, args: argparse.Namespace, cold: bool) -> dict[str, Any]:
    dst = workdir / f"out-{row.key}"
    remove(dst)
    (workdir / "tmp").mkdir(exist_ok=True)
    cgroup = None
    if row.in_cgroup:
        try:
            cgroup = MemoryCgroup.create(args.cgroup_limit)
        except OSError as exc:
            return {"skipped": f"memory cgroup unavailable: {exc}"}
    if cold:
        drop_page_cache()
    idle = wait_for_idle(args.idle_wait) if args.idle_wait > 0 else None
    log = workdir / f"log-{src.name}-{row.key}.txt"
    try:
        m = run_measured(row.argv(src, dst), log=log, env=row.env, cgroup=cgroup)
    finally:
        if cgroup is not None:
            cgroup.remove()
    result: dict[str, Any] = dataclasses.asdict(m)
    result["cpu_s"] = m.cpu_s
    result["busy_before"] = idle
    if m.exit_code != 0:
        result["log_tail"] = log.read_text(errors="replace")[-2000:]
    elif row.key.startswith("ours"):
        with contextlib.suppress(ValueError, OSError):
            text = log.read_text()
            result["converter"] = json.loads(text[text.index("{") : text.rindex("}") + 1])
    if row.writes and dst.exists():
        result["output_bytes"] = tree_bytes(dst)
    remove(dst)
    shutil.rmtree(workdir / "tmp", ignore_errors=True)
    if m.exit_code == 0:
        log.unlink(missing_ok=True)
    os.sync()  # let the deletions settle (ext4 with discard) before the next cold run
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the repeats (by wall time); all runs are kept in the JSON."""
    ok = [r for r in runs if "skipped" not in r and r["exit_code"] == 0]
    if not ok:
        return runs[-1] | {"runs": len(runs)}
    ok.sort(key=lambda r: r["wall_s"])
    median = dict(ok[(len(ok) - 1) // 2])
    median["runs"] = len(runs)
    median["wall_s_all"] = [round(r["wall_s"], 2) for r in runs if "wall_s" in r]
    median["max_rss_bytes"] = max(r["max_rss_bytes"] for r in ok)
    median["all_runs"] = runs
    if len(ok) > 1:
        median["wall_s_stdev"] = statistics.stdev(r["wall_s"] for r in ok)
    return median


def bench_model(case: ModelCase, args: argparse.Namespace, baseline: tuple[bool, str]) -> dict[str, Any]:
    spec = synth_spec(case)
    size = estimated_bytes(spec)
    rows = make_rows(args, case, baseline[0])
    print(f"\n== {case.key}: {case.folder}, ~{size / 1e9:.1f} GB of weights", file=sys.stderr)
    need = size if reusable(case, args.workdir) else 2 * size  # checkpoint + one output
    if need + tree_bytes(args.workdir) > args.disk_budget or need > shutil.disk_usage(args.workdir).free:
        return {"model": case.key, "skipped": f"needs {need / 1e9:.0f} GB of disk, over the budget"}
    src, synth_s = synthesize_case(case, args.workdir)
    src_bytes = tree_bytes(src)
    largest = largest_shard(src).stat().st_size
    if synth_s is not None:
        print(f"   synthesized {src_bytes / 1e9:.2f} GB in {synth_s:.0f} s", file=sys.stderr)
    results: dict[str, Any] = {}
    cold = drop_page_cache()
    try:
        for row in rows:
            need = src_bytes * row.disk_factor
            if tree_bytes(args.workdir) + need > args.disk_budget or need > shutil.disk_usage(args.workdir).free:
                results[row.key] = {"skipped": f"needs {need / 1e9:.0f} GB more disk than the budget allows"}
                print(f"   {row.key:14s} skipped: {results[row.key]['skipped']}", file=sys.stderr)
                continue
            runs = []
            for i in range(args.repeat):
                r = run_row(row, src, args.workdir, args, cold)
                runs.append(r)
                if "skipped" in r:
                    break
                status = "ok" if r["exit_code"] == 0 else f"FAILED (exit {r['exit_code']})"
                print(
                    f"   {row.key:14s} #{i + 1}: {r['wall_s']:7.1f} s wall, {r['cpu_s']:7.1f} s CPU, "
                    f"{r['max_rss_bytes'] / MIB:8.0f} MiB RSS, others' user CPU {r['others_user_s']:5.1f} s  {status}",
                    file=sys.stderr,
                )
            results[row.key] = summarize(runs) | {"label": row.label}
    finally:
        if not args.keep:
            remove(src)
            (args.workdir / f"{case.folder}.synth.json").unlink(missing_ok=True)
    return {
        "model": case.key,
        "folder": case.folder,
        "preset": case.preset,
        "n_layers": spec.params["n_layers"],
        "mp": spec.mp,
        "source_bytes": src_bytes,
        "largest_shard_bytes": largest,
        "synth_seconds": synth_s,
        "cold_cache": cold,
        "rows": results,
    }


# -- reporting ----------------------------------------------------------------------------------------------


def _ok(row: dict[str, Any] | None) -> bool:
    return bool(row) and "skipped" not in row and row.get("exit_code") == 0


def physical_limit(model: dict[str, Any]) -> float | None:
    rows = model["rows"]
    walls = [rows[k]["wall_s"] for k in ("cp", "md5sum") if _ok(rows.get(k))]
    return max(walls) if len(walls) == 2 else None


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# llama-convert benchmark: {report['started']}", ""]
    env = report["environment"]
    cache = "dropped before every run" if env["cold"] else "NOT dropped (not permitted): warm runs"
    lines += [
        f"{env['cpus']} CPUs, {env['ram_gib']:.0f} GiB RAM, Linux {env['kernel']}, Python {env['python']}; "
        f"llama-convert {env['llama_convert']}; page cache {cache}; "
        f"measured with {env['measured_by']}; median of {report['repeat']} run(s).",
        "",
        "Limit = the slower of `cp -r SRC DST && sync` and `md5sum` of the largest shard. "
        "Read/written = block-device bytes from rusage (page-cache hits read nothing). "
        "Other procs' user CPU = user time of other processes during the run (noise on a shared machine); "
        "kernel CPU outside = system time not charged to the run (writeback threads, interrupts, other processes).",
        "",
    ]
    for model in report["models"]:
        if "skipped" in model:
            lines += [f"## {model['model']}: skipped ({model['skipped']})", ""]
            continue
        limit = physical_limit(model)
        cp = model["rows"].get("cp", {}).get("wall_s") if _ok(model["rows"].get("cp")) else None
        lines += [
            f"## {model['model']} ({model['folder']}: {model['n_layers']} layers, MP{model['mp']}, "
            f"{model['source_bytes'] / 1e9:.2f} GB, largest shard {model['largest_shard_bytes'] / 1e9:.2f} GB)",
            "",
            "| run | wall s | × cp | × limit | CPU s (user+sys) | peak RSS MiB | read GB | written GB "
            "| other procs' user CPU s | kernel CPU s outside | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for key, row in model["rows"].items():
            if "skipped" in row:
                lines.append(
                    f"| {row.get('label', key)} | – | – | – | – | – | – | – | – | – | skipped: {row['skipped']} |"
                )
                continue
            note = []
            if row["exit_code"] != 0:
                note.append(f"FAILED exit {row['exit_code']}")
            if row.get("cgroup"):
                cg = row["cgroup"]
                note.append(
                    f"cgroup peak {cg.get('peak_bytes', 0) / MIB:.0f} MiB incl. page cache, "
                    f"{cg.get('oom_kills', 0)} OOM kills"
                )
            if row.get("converter", {}).get("verified"):
                note.append("checksums verified")
            if len(row.get("wall_s_all", [])) > 1:
                note.append("walls " + ", ".join(f"{w:.1f}" for w in row["wall_s_all"]))
            lines.append(
                f"| {row['label']} | {row['wall_s']:.1f} | {_ratio(row['wall_s'], cp)} "
                f"| {_ratio(row['wall_s'], limit)} "
                f"| {row['cpu_s']:.1f} ({row['user_s']:.1f}+{row['sys_s']:.1f}) | {row['max_rss_bytes'] / MIB:.0f} "
                f"| {row['read_bytes'] / 1e9:.2f} | {row['written_bytes'] / 1e9:.2f} | {row['others_user_s']:.1f} "
                f"| {row['kernel_other_s']:.1f} "
                f"| {'; '.join(note)} |"
            )
        lines.append("")
    lines += targets(report)
    return "\n".join(lines) + "\n"


def _ratio(value: float, ref: float | None) -> str:
    return f"{value / ref:.2f}" if ref else "–"


def targets(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Targets",
        "",
        f"| model | limit s | llama-convert s | × limit (≤ {WALL_TARGET}) | peak RSS MiB (≤ {RSS_TARGET // MIB}) "
        "| cgroup run |",
        "|---|---:|---:|---:|---:|---|",
    ]
    rss: list[tuple[str, int]] = []
    for model in report["models"]:
        if "skipped" in model:
            continue
        rows = model["rows"]
        ours = rows.get("ours")
        limit = physical_limit(model)
        cg = rows.get("ours-cgroup")
        if cg is None:
            cg_text = "not run"
        elif "skipped" in cg:
            cg_text = f"skipped ({cg['skipped']})"
        else:
            cg_text = "completed" if cg["exit_code"] == 0 else f"FAILED (exit {cg['exit_code']})"
            if cg["exit_code"] == 0:
                cg_text += f" in {cg['wall_s']:.1f} s"
        if not _ok(ours):
            lines.append(f"| {model['model']} | {limit or '–'} | – | – | – | {cg_text} |")
            continue
        rss.append((model["model"], ours["max_rss_bytes"]))
        ratio = ours["wall_s"] / limit if limit else None
        verdict = "–" if ratio is None else f"{ratio:.2f} {'PASS' if ratio <= WALL_TARGET else 'FAIL'}"
        rss_verdict = "PASS" if ours["max_rss_bytes"] <= RSS_TARGET else "FAIL"
        lines.append(
            f"| {model['model']} | {limit:.1f} | {ours['wall_s']:.1f} | {verdict} "
            f"| {ours['max_rss_bytes'] / MIB:.0f} {rss_verdict} | {cg_text} |"
            if limit
            else f"| {model['model']} | – | {ours['wall_s']:.1f} | – | {ours['max_rss_bytes'] / MIB:.0f} {rss_verdict} "
            f"| {cg_text} |"
        )
    if len(rss) > 1:
        low, high = min(v for _, v in rss), max(v for _, v in rss)
        spread = high / low - 1
        lines += [
            "",
            f"Peak RSS across models: {low / MIB:.0f}–{high / MIB:.0f} MiB, spread {spread:.0%} "
            f"({'PASS' if spread <= FLAT_TARGET else 'FAIL'}: flat means within {FLAT_TARGET:.0%}).",
        ]
    return [*lines, ""]


def environment(args: argparse.Namespace, cold: bool) -> dict[str, Any]:
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        where = subprocess.run(
            [args.python, "-c", "import llama_convert, os; print(os.path.dirname(llama_convert.__file__))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        git = ["git", "-C", where]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True).stdout
        commit = (commit or "unknown") + (" (+ uncommitted changes)" if dirty.strip() else "")
    return {
        "cpus": os.cpu_count(),
        "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "llama_convert": commit,
        "cold": cold,
        "measured_by": "/usr/bin/time -v" if os.access(TIME_BIN, os.X_OK) else "os.wait4 rusage",
    }


def scrub(value: Any, workdir: Path) -> Any:
    """Replace the work folder's path by a placeholder: results get committed and shared."""
    if isinstance(value, dict):
        return {k: scrub(v, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, workdir) for v in value]
    if isinstance(value, str):
        return value.replace(str(workdir), "WORKDIR")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="1b,8b,70b-mp8-8layers", help="comma-separated: 1b, 3b, 8b, 70b-mp8-<N>layers"
    )
    parser.add_argument("--workdir", type=Path, help="where checkpoints and outputs go (needs disk)")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the synthesized checkpoints")
    parser.add_argument("--baseline-python", help="python of a venv with torch and transformers 4.47.1")
    parser.add_argument("--no-baseline", action="store_true", help="skip transformers' converter")
    parser.add_argument(
        "--cgroup-limit", type=parse_size, default=parse_size("2GiB"), help="memory cgroup run limit; 0 skips the row"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for .md and .json")
    parser.add_argument("--name", help="result file name (default: bench-<models>)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the table shows the median")
    parser.add_argument("--rows", help="only these rows: cp,md5sum,ours,ours-noverify,ours-cgroup,baseline")
    parser.add_argument("--disk-budget", type=parse_size, default=parse_size("40GB"), help="most data kept at once")
    parser.add_argument(
        "--idle-wait", type=float, default=300, help="wait up to this many s for other CPU load to stop; 0: never"
    )
    parser.add_argument("--python", default=sys.executable, help="python that has llama_convert installed")
    parser.add_argument("--render", type=Path, help="only print the tables of a saved .json result")
    args = parser.parse_args(argv)
    if args.render:
        print(markdown(json.loads(args.render.read_text())), end="")
        return 0
    if args.workdir is None:
        parser.error("--workdir is required")
    args.rows = set(args.rows.split(",")) if args.rows else None
    cases = [model_case(k.strip()) for k in args.models.split(",") if k.strip()]
    args.workdir = args.workdir.absolute()
    args.workdir.mkdir(parents=True, exist_ok=True)

    baseline = (False, "--no-baseline") if args.no_baseline else check_baseline(args.baseline_python)
    print(f"baseline: {'yes, ' if baseline[0] else 'no: '}{baseline[1]}", file=sys.stderr)
    cold = drop_page_cache()
    if not cold:
        print("cannot drop the page cache (needs root): runs are warm-cache", file=sys.stderr)
    report: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "repeat": args.repeat,
        "baseline": baseline[1],
        "environment": environment(args, cold),
        "models": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or "bench-" + "-".join(c.key for c in cases)
    for case in cases:
        report["models"].append(bench_model(case, args, baseline))
        # Saved after every model: a long run that fails later keeps what it measured.
        (args.out / f"{name}.json").write_text(json.dumps(scrub(report, args.workdir), indent=2) + "\n")
    text = markdown(scrub(report, args.workdir))
    print("\n" + text)
    (args.out / f"{name}.md").write_text(text)
    print(f"saved {args.out / name}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
