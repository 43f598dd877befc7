"""Write a Meta-format folder: ``consolidated.NN.pth`` shards in one streaming pass, and ``checklist.chk``.

Every shard is a ``torch.save``-compatible zip (``TorchZipWriter``) written through ``HashedFile``: bytes
go to disk once, strictly in order (zipfile then records each member's CRC after its data), and an
MD5 of every file is computed off the writing thread as they go, so ``checklist.chk`` needs no re-read.
All shards are open at once: a tensor is cut into its model-parallel slices as its row blocks pass. The
shards' MD5s (and the members' CRC-32) run in md5lanes' vector lanes on one thread (``shard_hashing``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ... import md5lanes
from ...dtypes import DTYPES, DType
from ..stream import Writeback
from .shard_hashing import FileHash, LaneHashes, ThreadMd5
from .torch_zip_writer import RunningCrc, StorageSink, TorchZipWriter

__all__ = ["HashedFile", "MetaShardWriter", "checklist_text", "shard_name", "write_checklist"]


def shard_name(rank: int) -> str:
    return f"consolidated.{rank:02d}.pth"


class HashedFile(io.RawIOBase):
    """A write-only, unseekable file that MD5-hashes its bytes off the writing thread and paces writeback (and,
    for the zip members that ask, computes their CRC-32 beside the MD5)."""

    writes_crc = True

    def __init__(
        self,
        path: Path,
        hashing: FileHash | ThreadPoolExecutor,
        *,
        keep: int = 0,
        md5_state: str | None = None,
    ) -> None:
        """``hashing``: this file's :class:`FileHash` (or an executor to hash it on with OpenSSL). ``keep``:
        continue after the first ``keep`` bytes an interrupted run wrote (the rest of the file is cut off); their
        MD5 continues from ``md5_state`` (:meth:`md5_state` at that point) or they are hashed again."""
        super().__init__()
        self.path = path
        self._hash = ThreadMd5(hashing) if isinstance(hashing, ThreadPoolExecutor) else hashing
        if keep and not (md5_state is not None and self._hash.restore(bytes.fromhex(md5_state))):
            with open(path, "rb") as f:
                left = keep
                while left and (block := f.read(min(left, 1 << 24))):
                    self._hash.add(memoryview(block), None)
                    left -= len(block)
            if left:
                raise OSError(f"{path} is shorter than the {keep} bytes an interrupted run recorded")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | (0 if keep else os.O_TRUNC), 0o644)
        os.ftruncate(self._fd, keep)
        os.lseek(self._fd, keep, os.SEEK_SET)
        self._pos = keep
        self._writeback = Writeback(self._fd)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, *args: object) -> int:
        raise io.UnsupportedOperation("HashedFile is written strictly in order")

    def write(self, data, crc: RunningCrc | None = None) -> int:  # type: ignore[override]
        """Write ``data``; with ``crc``, its CRC-32 is also folded into ``crc`` beside the MD5, in order."""
        view = memoryview(data).cast("B")
        size = len(view)
        done = 0
        while done < size:
            done += os.write(self._fd, view[done:])
        self._writeback.wrote(size)
        self._pos += size
        self._hash.add(view, crc)  # the caller never reuses a buffer it has written: hashing it later is safe
        return size

    def drain(self) -> None:
        """Wait until every byte written so far is hashed (and its CRC folded in)."""
        self._hash.drain()

    def md5(self) -> str:
        return self._hash.hexdigest()

    def md5_state(self) -> str | None:
        """The MD5's running state after every byte written so far (hex), or None where it cannot be saved."""
        state = self._hash.state()
        return None if state is None else state.hex()

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        os.fsync(self._fd)

    def finish(self, *, sync: bool = True) -> str:
        """Wait for the hash, fsync, close; return the MD5 hex digest."""
        digest = self.md5()
        if sync:
            os.fsync(self._fd)
        self.close()
        return digest

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                self._hash.drain()
            os.close(self._fd)
            self._fd = -1
        super().close()


def _hashing(mp: int, hasher: ThreadPoolExecutor | Sequence[ThreadPoolExecutor] | None) -> tuple[list, list]:
    """Each shard's :class:`FileHash`, and the executors made for them (to shut down). Without ``hasher``:
    all shards in md5lanes' lanes on one thread where they are built, else one OpenSSL thread per core."""
    if hasher is None and md5lanes.available():
        own = [ThreadPoolExecutor(1, thread_name_prefix="md5")]
        lanes = LaneHashes(mp, own[0])
        return [lanes.file(r) for r in range(mp)], own
    if hasher is None:
        own = [ThreadPoolExecutor(1, thread_name_prefix="md5") for _ in range(min(mp, os.cpu_count() or 1))]
        executors = own
    else:
        own, executors = [], [hasher] if isinstance(hasher, ThreadPoolExecutor) else list(hasher)
    return [ThreadMd5(executors[r % len(executors)]) for r in range(mp)], own


class MetaShardWriter:
    """``mp`` shard files written side by side; ``tensor()`` streams one tensor's slices into all of them."""

    def __init__(
        self,
        out_dir: Path,
        mp: int,
        hasher: ThreadPoolExecutor | Sequence[ThreadPoolExecutor] | None = None,
        *,
        resume: Sequence[dict] | None = None,
    ) -> None:
        """``hasher``: by default md5lanes on a thread of the writer's own (one OpenSSL thread per core where the
        lanes are not built); or one single-thread executor, or several: shard r hashes on executor r mod their
        number, so each file's bytes stay in order while different shards hash in parallel. ``resume``: each
        shard's ``state()`` at a checkpoint of an interrupted run, to continue from."""
        self.out_dir = Path(out_dir)
        hashing, self._own = _hashing(mp, hasher)
        keep = [int(r["size"]) for r in resume] if resume else [0] * mp
        states = [r.get("md5") for r in resume] if resume else [None] * mp
        self.files: list[HashedFile] = []
        self.writers: list[TorchZipWriter] = []
        try:
            for r in range(mp):
                path = self.out_dir / shard_name(r)
                self.files.append(HashedFile(path, hashing[r], keep=keep[r], md5_state=states[r]))
        except BaseException:
            self.abort()
            raise
        self.writers = [
            TorchZipWriter(f.path, prefix=f.path.stem, fileobj=f)
            for f in self.files  # type: ignore[arg-type]
        ]
        if resume:
            try:
                for writer, state in zip(self.writers, resume, strict=True):
                    writer.restore(state["zip"], DTYPES)
            except BaseException:
                self.abort()
                raise
        self.digests: dict[str, str] = {}

    @property
    def mp(self) -> int:
        return len(self.files)

    def open_tensor(self, name: str, dtype: DType, shard_shapes: Sequence[tuple[int, ...]]) -> list[StorageSink]:
        """One storage per shard for tensor ``name`` (its own bytes only); write the slices, then ``close_tensor``."""
        sinks = []
        for writer, shape in zip(self.writers, shard_shapes, strict=True):
            sinks.append(writer.open_storage(dtype, int(np.prod(shape, dtype=np.int64))))
        self._open = (name, list(shard_shapes), sinks)
        return sinks

    def close_tensor(self) -> None:
        name, shapes, sinks = self._open
        for writer, shape, sink in zip(self.writers, shapes, sinks, strict=True):
            sink.close()
            writer.add_view(name, sink.key, shape)

    def checkpoint(self) -> list[dict]:
        """fsync every shard and return each one's state (its size and archive state) to continue from."""
        for f in self.files:
            f.sync()
        return [
            {"size": f.tell(), "zip": w.state(), "md5": f.md5_state()}
            for f, w in zip(self.files, self.writers, strict=True)
        ]

    def finish(self, *, sync: bool = True) -> dict[str, str]:
        """Write every shard's index, flush, and return ``{file name: md5}``."""
        for writer, f in zip(self.writers, self.files, strict=True):
            writer.close()
            self.digests[f.path.name] = f.finish(sync=sync)
        self._shutdown()
        return self.digests

    def abort(self) -> None:
        for writer in self.writers:
            writer.discard()
        for f in self.files:
            with contextlib.suppress(Exception):
                f.close()
        self._shutdown()

    def _shutdown(self) -> None:
        for executor in self._own:
            executor.shutdown(wait=True, cancel_futures=True)


def checklist_text(digests: dict[str, str]) -> str:
    """``md5sum`` output for the files, sorted by name, as Meta's checklist.chk has it."""
    return "".join(f"{md5}  {name}\n" for name, md5 in sorted(digests.items()))


def write_checklist(folder: Path) -> Path:
    """Hash every file in ``folder`` (streamed) into its checklist.chk, as Meta's downloads carry one."""
    digests = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != "checklist.chk"):
        h = hashlib.md5()
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
        digests[path.name] = h.hexdigest()
    target = folder / "checklist.chk"
    target.write_text(checklist_text(digests))
    return target
