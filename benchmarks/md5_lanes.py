"""MD5 throughput of one thread: hashlib (one stream) against md5lanes with 1, 2, 4, 8 and 16 streams at once.

Two columns: from memory (buffers already in RAM: the hashing alone) and from files in the page cache
(md5lanes.hash_files with verification's chunk size, reads included; 16 streams read the 8 files twice).
Prints a Markdown table of GB/s (bytes of all streams / wall time, best of ``--repeat``). Keep it small on a
shared machine: the default is 8 × 64 MiB. ``--isa vector`` runs the generic (SSE2) code on an AVX2 machine.

    python benchmarks/md5_lanes.py [--mib 64] [--repeat 3] [--dir /tmp] [--isa avx2|vector|scalar]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

from llama_convert import md5lanes, verify


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _hashlib_files(paths: list[Path], chunk: int) -> None:
    buffer = bytearray(chunk)
    for path in paths:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                digest.update(memoryview(buffer)[:n])
        digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB per stream (default 64)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="folder for the page-cache files (default: the temp folder)")
    parser.add_argument("--isa", default=None, help="the lanes code to run (default: the best this CPU has)")
    args = parser.parse_args()
    if not md5lanes.available():
        raise SystemExit("llama_convert._md5lanes is not built: pip install -e . with a C compiler")
    if args.isa:
        md5lanes._c.isa(args.isa)
    size, chunk = args.mib << 20, verify.LANE_CHUNK
    data = [os.urandom(size) for _ in range(8)]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths = [Path(tmp) / f"shard{i}" for i in range(8)]
        for path, blob in zip(paths, data, strict=True):
            path.write_bytes(blob)
            path.read_bytes()  # in the page cache
        seconds = _best(lambda: hashlib.md5(data[0], usedforsecurity=False).hexdigest(), args.repeat)
        files = _best(lambda: _hashlib_files(paths[:1], verify.CHUNK_SIZE), args.repeat)
        rows.append(("hashlib (OpenSSL), 1 stream", size / seconds, size / files))
        for n in (1, 2, 4, 8, 16):

            def in_memory(n=n):
                lanes = md5lanes.Md5Lanes(n)
                lanes.update([data[j % 8] for j in range(n)])
                return [lanes.hexdigest(j) for j in range(n)]

            def from_files(n=n):
                return md5lanes.hash_files([paths[j % 8] for j in range(n)], chunk_size=chunk, state_every=1 << 40)

            assert in_memory() == [hashlib.md5(data[j % 8]).hexdigest() for j in range(n)]
            rows.append(
                (
                    f"md5lanes ({md5lanes._c.isa()}), {n} stream{'s' if n > 1 else ''}",
                    n * size / _best(in_memory, args.repeat),
                    n * size / _best(from_files, args.repeat),
                )
            )
        checks = []
        listing = "".join(f"{hashlib.md5(d).hexdigest()}  shard{i}\n" for i, d in enumerate(data))
        (Path(tmp) / "checklist.chk").write_text(listing)
        for lanes in (False, True):
            for workers in (1, 2):
                verify.LANES = lanes
                cpu = time.process_time()
                wall = _best(lambda w=workers: verify.verify_checksums(Path(tmp), workers=w), args.repeat)
                cpu = (time.process_time() - cpu) / args.repeat
                checks.append(("lanes" if lanes else "hashlib", workers, wall, cpu))
        verify.LANES = True
    print(
        f"MD5, one thread, {args.mib} MiB per stream, best of {args.repeat}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| hashing | GB/s from memory | GB/s from page-cache files |")
    print("|---|---:|---:|")
    for name, mem, files in rows:
        print(f"| {name} | {mem / 1e9:.2f} | {files / 1e9:.2f} |")
    print(f"\nverify_checksums of the 8 files (a checklist of them), page cache, best of {args.repeat}\n")
    print("| hashing | workers | wall s | GB/s | CPU s (mean) |")
    print("|---|---:|---:|---:|---:|")
    for name, workers, wall, cpu in checks:
        print(f"| {name} | {workers} | {wall:.3f} | {8 * size / wall / 1e9:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
