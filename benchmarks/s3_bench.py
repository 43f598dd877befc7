"""S3 → Hugging Face for a full-size 1B-shaped checkpoint, against the same conversion from the local folder.

Synthesizes Llama 3.2 1B's shapes (random weights, Meta's layout, checklist.chk; ``--model 70b-mp8-2layers``
for 70B's eight shards at two layers), uploads them to moto's S3 server on 127.0.0.1 and runs, each as a
whole process under ``/usr/bin/time``:

- ``ours local``      ``llama-convert SRC DST`` (checksums verified beside the stream)
- ``ours S3``         ``llama-convert s3://bench/FOLDER DST`` (range reads, checksums on the bytes read)
- ``ours S3 --no-verify``  the same without checklist.chk
- ``S3 read limit``   every object fetched once with the conversion's client (range GETs on signed URLs,
                      16 MiB parts, 4 at a time) and discarded: what the server can deliver, the floor of
                      any S3 conversion; ``(s3fs)`` the same through s3fs's own reads, for comparison

Each row runs ``--runs`` times, the rows alternating; the table shows the median run and lists them all.
The page cache is dropped before every run (the local source and the server's spool files alike) where
the benchmark may (root); ``--warm`` keeps it.

moto's server reads a whole object for every range request (O(object), not O(range)), which would
measure moto rather than us; the server process here serves ``Range: bytes=a-b`` from the object's
spool file instead (``--serve``, a patch of the benchmark's server only). Peak RSS is of the converter
process. The machine is shared: numbers are indicative.

    PYTHONPATH=. python benchmarks/s3_bench.py [--work /big/disk/s3bench] [--model 1b] [--runs 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench  # model shapes, synthesis, cold cache

MIB = 1 << 20
TIME_BIN = "/usr/bin/time"


def serve(port: int) -> None:
    """moto's S3 server with range GETs served from the object's spool file (see the module docstring)."""
    from moto.s3.responses import S3Response
    from moto.server import main

    whole = S3Response.get_object

    def get_object(self):  # type: ignore[no-untyped-def]
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("range") or "")
        if match is None:
            return whole(self)
        key, not_modified = self._get_key()
        begin, end = int(match[1]), min(int(match[2]), key.size - 1)
        if not_modified or begin > end:
            return whole(self)
        with key.lock:
            key._value_buffer.seek(begin)
            body = key._value_buffer.read(end - begin + 1)
        headers = {
            "content-range": f"bytes {begin}-{end}/{key.size}",
            "etag": key.etag,
            "last-modified": key.last_modified_RFC1123,
            "accept-ranges": "bytes",
            "content-type": "binary/octet-stream",
        }
        return 206, headers, body

    S3Response.get_object = get_object
    main(["-H", "127.0.0.1", "-p", str(port)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB) of ``cmd`` as a whole process."""
    start = time.perf_counter()
    out = subprocess.run([TIME_BIN, "-f", "RSS %M", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    rss = int(re.findall(r"RSS (\d+)", out.stderr)[-1]) / 1024
    return {"seconds": wall, "rss_mib": rss}


READ_LIMIT = """
import sys, s3fs
from llama_convert.formats.storage.direct import direct_ranges
from llama_convert.formats.storage.remote import AHEAD_PARTS, PART_BYTES
fs = s3fs.S3FileSystem()
ranges = direct_ranges("s3", fs) if sys.argv[2] == "direct" else None
for key in fs.find(sys.argv[1]):
    size = fs.info(key)["size"]
    for first in range(0, size, AHEAD_PARTS * PART_BYTES):
        starts = list(range(first, min(size, first + AHEAD_PARTS * PART_BYTES), PART_BYTES))
        ends = [min(size, s + PART_BYTES) for s in starts]
        if ranges is not None:
            ranges.fetch(key, list(zip(starts, ends)))
        else:
            fs.cat_ranges([key] * len(starts), starts, ends)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "s3bench")
    parser.add_argument("--keep", action="store_true", help="keep the synthesized checkpoint and the outputs")
    parser.add_argument("--model", default="1b", help="1b, 3b, 8b or 70b-mp8-<N>layers")
    parser.add_argument("--runs", type=int, default=3, help="runs of each row, alternating; the median is shown")
    parser.add_argument("--warm", action="store_true", help="keep the page cache between runs (default: cold)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    from llama_convert.testing.synth import synthesize

    work = args.work
    case = bench.model_case(args.model)
    src = work / case.folder
    if not (src / "checklist.chk").is_file():
        shutil.rmtree(src, ignore_errors=True)
        synthesize(src, bench.synth_spec(case))
    size = sum(p.stat().st_size for p in src.iterdir())
    port = free_port()
    (work / "moto-tmp").mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        env={**os.environ, "TMPDIR": str(work / "moto-tmp")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows: dict[str, dict[str, float]] = {}
    cold = False
    try:
        endpoint = f"http://127.0.0.1:{port}"
        env = aws_env(endpoint)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="bench")
        started = time.perf_counter()
        for path in sorted(src.iterdir()):
            client.upload_file(str(path), "bench", f"{case.folder}/{path.name}")
        upload = time.perf_counter() - started
        py = [sys.executable, "-m", "llama_convert"]
        remote = f"s3://bench/{case.folder}"
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.runs):  # alternating, so that a slow spell of the machine hits every row alike
            for name, source, flags in (
                ("ours local", str(src), []),
                ("ours S3", remote, []),
                ("ours S3 --no-verify", remote, ["--no-verify"]),
            ):
                dst = work / ("out-local" if source == str(src) else "out-s3" if not flags else "out-s3-nv")
                shutil.rmtree(dst, ignore_errors=True)
                cold = not args.warm and bench.drop_page_cache()
                runs.setdefault(name, []).append(timed([*py, source, str(dst), "-q", *flags], env))
            for name, client in (("S3 read limit", "direct"), ("S3 read limit (s3fs)", "s3fs")):
                cold = not args.warm and bench.drop_page_cache()
                read = [sys.executable, "-c", READ_LIMIT, f"bench/{case.folder}", client]
                runs.setdefault(name, []).append(timed(read, env))
        for name, measured in runs.items():
            by_time = sorted(measured, key=lambda r: r["seconds"])
            rows[name] = {**by_time[len(by_time) // 2], "all_seconds": [r["seconds"] for r in measured]}
        same = subprocess.run(["diff", "-r", str(work / "out-local"), str(work / "out-s3")]).returncode == 0
    finally:
        server.terminate()
        server.wait(30)
    local = rows["ours local"]["seconds"]
    print(f"{case.folder} shapes, {size / 1e9:.2f} GB source; upload to moto {upload:.0f} s; outputs identical: {same}")
    print(f"median of {args.runs} alternating runs, {'cold' if cold else 'warm'} page cache")
    print("| run | wall s | × local | MB/s | peak RSS MiB | all runs s |")
    print("|---|---:|---:|---:|---:|---|")
    for name, row in rows.items():
        mbps = size / row["seconds"] / 1e6
        every = " / ".join(f"{t:.1f}" for t in row["all_seconds"])
        print(
            f"| {name} | {row['seconds']:.1f} | {row['seconds'] / local:.2f} | {mbps:.0f} | {row['rss_mib']:.0f} "
            f"| {every} |"
        )
    results = work / "s3_bench.json"
    results.write_text(
        json.dumps({"source_bytes": size, "upload_seconds": upload, "same": same, "cold": cold, "rows": rows}, indent=2)
    )
    if not args.keep:
        for path in (src, work / "out-local", work / "out-s3", work / "out-s3-nv", work / "moto-tmp"):
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
