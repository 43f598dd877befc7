"""The torch-free checkpoint reader against files written by torch.save, and the torch-free writer
against torch.load."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from llama_convert.dtypes import DTYPES
from llama_convert.errors import InputError, UnsafePickleError, UnsupportedError
from llama_convert.formats.meta.torch_zip import TorchCheckpoint
from llama_convert.formats.meta.torch_zip_writer import TorchZipWriter


def as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


@pytest.mark.parametrize(
    "dtype",
    [
        torch.bfloat16,
        torch.float16,
        torch.float32,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    ],
)
def test_reads_every_dtype_bit_exactly(tmp_path, dtype):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 5, generator=g) * 100
    tensor = base.to(dtype) if dtype != torch.bool else base > 0
    torch.save({"t": tensor}, tmp_path / "x.pth")
    ckpt = TorchCheckpoint(tmp_path / "x.pth")
    assert ckpt.tensors["t"].dtype.torch_name == str(dtype).removeprefix("torch.")
    np.testing.assert_array_equal(ckpt.read("t"), as_numpy(tensor))


def test_views_offsets_strides_and_shared_storages(tmp_path):
    storage = torch.randn(12, 16).to(torch.bfloat16)
    state = {
        "head": storage[:3],  # offset 0
        "middle": storage[3:7],  # storage offset 48
        "tail_cols": storage[7:, 4:12],  # offset and a row stride wider than the row
        "transposed": storage.t(),  # non-contiguous
        "stepped": storage[::2, ::3],  # strides (32, 3)
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "other": torch.arange(10, dtype=torch.int64)[2:],
    }
    torch.save(state, tmp_path / "x.pth")
    ckpt = TorchCheckpoint(tmp_path / "x.pth")
    refs = ckpt.tensors
    assert refs["middle"].storage is refs["head"].storage  # one storage, read lazily per view
    assert refs["middle"].storage_offset == 48
    assert not refs["transposed"].is_contiguous
    for name, tensor in state.items():
        np.testing.assert_array_equal(ckpt.read(name), as_numpy(tensor), err_msg=name)
    # Row ranges of a view, straight into a caller's buffer.
    out = np.empty((2, 16), dtype=np.uint16)
    ckpt.read_rows("middle", 1, 3, out=out)
    np.testing.assert_array_equal(out, as_numpy(state["middle"][1:3]))
    np.testing.assert_array_equal(ckpt.read_rows("stepped", 2, 5), as_numpy(state["stepped"][2:5]))


def test_row_blocks_in_one_batch_equal_rows_read_one_by_one(tmp_path):
    storage = torch.randn(40, 16).to(torch.bfloat16)
    state = {"contiguous": storage[4:36], "transposed": storage[:16].t()}
    torch.save(state, tmp_path / "x.pth")
    with TorchCheckpoint(tmp_path / "x.pth") as ckpt:
        for name in state:
            blocks = [(0, 4), (5, 6), (9, 16), (12, 16)]  # overlapping and single-row blocks too
            got = ckpt.read_row_blocks(name, blocks)
            for (start, stop), rows in zip(blocks, got, strict=True):
                np.testing.assert_array_equal(rows, ckpt.read_rows(name, start, stop), err_msg=name)
                np.testing.assert_array_equal(rows, as_numpy(state[name][start:stop]), err_msg=name)


def test_parameters_and_ordered_dicts(tmp_path):
    state = torch.nn.Linear(4, 3).state_dict()
    state["p"] = torch.nn.Parameter(torch.ones(2))
    torch.save(state, tmp_path / "x.pth")
    ckpt = TorchCheckpoint(tmp_path / "x.pth")
    assert list(ckpt.tensors) == list(state)
    np.testing.assert_array_equal(ckpt.read("p"), np.ones(2, dtype=np.float32))


def test_writer_output_loads_in_torch_with_views(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(4, 6)
    with TorchZipWriter(tmp_path / "w.pth", prefix="consolidated.00") as w:
        key = w.add_storage(DTYPES["float32"], data.size, [data[:2], data[2:]])
        w.add_view("a", key, (2, 6))
        w.add_view("b", key, (2, 6), offset=12)
        w.add_view("t", key, (6, 4), stride=(1, 6))
    for mmap in (False, True):
        loaded = torch.load(tmp_path / "w.pth", weights_only=True, mmap=mmap)
        np.testing.assert_array_equal(loaded["b"].numpy(), data[2:])
        np.testing.assert_array_equal(loaded["t"].numpy(), data.T)
        assert loaded["a"].untyped_storage().data_ptr() == loaded["b"].untyped_storage().data_ptr()


# --- damaged and hostile files ---------------------------------------------------------------------


def replace_pickle(path, payload: bytes) -> None:
    """Rewrite a torch.save archive with another data.pkl, keeping every other member."""
    with zipfile.ZipFile(path) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as dst:
        for info, content in members:
            dst.writestr(info, payload if info.filename.endswith("/data.pkl") else content)


class _Exploit:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_payloads(marker):
    import builtins
    import subprocess

    cmd = f"touch {marker}"
    return {
        "os.system": pickle.dumps({"w": _Exploit(os.system, cmd)}, protocol=2),
        "builtins.eval": pickle.dumps(_Exploit(builtins.eval, f"open({str(marker)!r}, 'w')"), protocol=2),
        "builtins.exec": pickle.dumps(_Exploit(builtins.exec, f"open({str(marker)!r}, 'w')"), protocol=4),
        "subprocess.Popen": pickle.dumps(_Exploit(subprocess.Popen, ["touch", str(marker)]), protocol=2),
        # Old-style INST opcode: module and name on the text line.
        "inst": b"(S'" + cmd.encode() + b"'\nios\nsystem\n.",
        # An allowed module with a name outside the allow-list.
        "collections.namedtuple": pickle.dumps(_Exploit(__import__("collections").namedtuple, "X", "a"), protocol=2),
        # A storage class torch never had.
        "unknown storage": b"\x80\x02ctorch\nEvilStorage\n.",
    }


@pytest.mark.parametrize("kind", list(_hostile_payloads("m")))
def test_hostile_pickles_are_refused_before_anything_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pth")
    replace_pickle(tmp_path / "x.pth", _hostile_payloads(marker)[kind])
    with pytest.raises(UnsafePickleError) as err:
        TorchCheckpoint(tmp_path / "x.pth")
    assert str(tmp_path / "x.pth") in str(err.value)
    assert "nothing from the file was executed" in str(err.value)
    assert not marker.exists()


def test_truncated_file(tmp_path):
    torch.save({"w": torch.zeros(1000)}, tmp_path / "x.pth")
    data = (tmp_path / "x.pth").read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        (tmp_path / "t.pth").write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"truncated|damaged"):
            TorchCheckpoint(tmp_path / "t.pth")


def test_storage_member_shorter_than_declared(tmp_path):
    torch.save({"w": torch.zeros(100)}, tmp_path / "x.pth")
    with zipfile.ZipFile(tmp_path / "x.pth") as src:
        members = [(i, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(tmp_path / "y.pth", "w") as dst:
        for info, content in members:
            dst.writestr(info, content[:40] if "/data/" in info.filename else content)
    with pytest.raises(InputError, match="damaged"):
        TorchCheckpoint(tmp_path / "y.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"hello, this is not a zip" * 10)
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        TorchCheckpoint(tmp_path / "x.pth")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy.pth").write_bytes(buf.getvalue())
    with pytest.raises(UnsupportedError, match="legacy"):
        TorchCheckpoint(tmp_path / "legacy.pth")


def test_float8_e4m3fn_is_read_and_other_float8_kinds_are_unsupported_not_unsafe(tmp_path):
    values = torch.tensor([0.5, -448.0, 3.0, 0.0]).to(torch.float8_e4m3fn)
    torch.save({"w": values}, tmp_path / "fp8.pth")
    ckpt = TorchCheckpoint(tmp_path / "fp8.pth")
    assert ckpt.tensors["w"].dtype.torch_name == "float8_e4m3fn"
    np.testing.assert_array_equal(ckpt.read("w"), values.view(torch.uint8).numpy())
    torch.save({"w": torch.zeros(4).to(torch.float8_e5m2)}, tmp_path / "e5m2.pth")
    with pytest.raises(UnsupportedError, match="float8_e5m2 tensors"):
        TorchCheckpoint(tmp_path / "e5m2.pth")


def test_untyped_storage_with_a_separate_dtype(tmp_path):
    """torch's _rebuild_tensor_v3 form (byte storage + dtype), here with a dtype Llama files use."""
    values = torch.tensor([1, 2, 250, 7], dtype=torch.uint8).view(torch.float8_e4m3fn)
    torch.save({"w": values}, tmp_path / "x.pth")
    with zipfile.ZipFile(tmp_path / "x.pth") as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"_rebuild_tensor_v3" in data
    replace_pickle(tmp_path / "x.pth", data.replace(b"torch\nfloat8_e4m3fn\n", b"torch\nuint8\n"))
    ckpt = TorchCheckpoint(tmp_path / "x.pth")
    np.testing.assert_array_equal(ckpt.read("w"), np.array([1, 2, 250, 7], dtype=np.uint8))
