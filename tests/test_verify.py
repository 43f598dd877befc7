from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from llama_convert.errors import ChecksumError, InputError, MissingFileError
from llama_convert.verify import (
    ChecklistEntry,
    Md5Stream,
    VerifyReport,
    expected_checksums,
    find_checklists,
    hash_file,
    raise_for_report,
    read_checklist,
    verify_checksums,
)


@pytest.fixture(autouse=True, params=["lanes", "hashlib"])
def hashing(request, monkeypatch):
    """Every test both ways: local files in lockstep (md5lanes, where built) and one file per thread (hashlib)."""
    from llama_convert import md5lanes

    if request.param == "lanes" and not md5lanes.available():
        pytest.skip("llama_convert._md5lanes is not built")
    if request.param == "hashlib":
        monkeypatch.setattr(md5lanes, "available", lambda: False)
    return request.param


FILES = {
    "consolidated.00.pth": b"shard zero " * 1000,
    "consolidated.01.pth": b"shard one " * 700,
    "params.json": b'{"dim": 64, "n_layers": 2, "n_heads": 4}',
    "tokenizer.model": b"IQ== 0\nIg== 1\n",
}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_model(folder: Path, files: dict[str, bytes] = FILES, *, checklist: str = "checklist.chk") -> Path:
    """Write ``files`` into ``folder`` with an md5sum-style checklist listing them, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    lines = [f"{md5(data)}  {name}\n" for name, data in sorted(files.items())]
    (folder / checklist).write_text("".join(lines))
    return folder


def flip_byte(path: Path, offset: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# Checklist parsing


A = md5(b"a")
B = md5(b"b")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"{A}  consolidated.00.pth\n{B}  params.json\n", id="plain"),
        pytest.param(f"{A}  ./consolidated.00.pth\n{B}  ./params.json\n", id="dot-slash"),
        pytest.param(f"{A} *consolidated.00.pth\n{B} *params.json\n", id="binary-mode"),
        pytest.param(f"{A} consolidated.00.pth\n{B} params.json", id="one-space-no-final-newline"),
        pytest.param(f"consolidated.00.pth {A}\nparams.json  {B}\n", id="reversed-columns"),
        pytest.param(f"consolidated.00.pth\t{A.upper()}\n./params.json {B}\n", id="reversed-tab-upper"),
        pytest.param(f"{A}  consolidated.00.pth\r\n{B}  params.json\r\n", id="crlf"),
        pytest.param(f"\n{A}  consolidated.00.pth\n\n  \n{B}  params.json\n\n", id="blank-lines"),
        pytest.param(f"\ufeff{A}  consolidated.00.pth\r\n{B}  params.json\r\n", id="bom-crlf"),
    ],
)
def test_read_checklist_variants(tmp_path: Path, text: str) -> None:
    path = tmp_path / "checklist.chk"
    path.write_bytes(text.encode())
    assert read_checklist(path) == [
        ChecklistEntry(name="consolidated.00.pth", md5=A),
        ChecklistEntry(name="params.json", md5=B),
    ]


def test_read_checklist_keeps_spaces_in_names(tmp_path: Path) -> None:
    path = tmp_path / "checklist.chk"
    path.write_text(f"{A}  my model.pth\n")
    assert read_checklist(path) == [ChecklistEntry(name="my model.pth", md5=A)]


@pytest.mark.parametrize(
    "bad",
    ["not a checksum", f"{A[:31]}  params.json", f"{A}", f"{A}  ./", f"params.json {A[:31]}"],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "checklist.chk"
    path.write_text(f"{A}  consolidated.00.pth\n\n{bad}\n{B}  params.json\n")
    with pytest.raises(InputError) as info:
        read_checklist(path)
    assert str(info.value) == (
        f"{path} line 3 is not a '<md5>  <name>' checksum line: {bad!r}; "
        "download checklist.chk again or pass --no-verify to skip checksum verification."
    )


def test_binary_checklist_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "checklist.chk"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="is not a text checklist"):
        read_checklist(path)


# Finding checklists


def test_find_checklists_in_folder(tmp_path: Path) -> None:
    model = write_model(tmp_path / "Llama3.2-1B")
    (model / "original.md5").write_text(f"params.json {md5(FILES['params.json'])}\n")
    (model / "._checklist.chk").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    assert find_checklists(model) == [model / "checklist.chk", model / "original.md5"]


def llama2_download(root: Path) -> Path:
    """The Llama 2 layout: tokenizer and its checklist shared next to the model folders."""
    model_files = {k: v for k, v in FILES.items() if k != "tokenizer.model"}
    model = write_model(root / "llama-2-7b", model_files)
    write_model(root, {"tokenizer.model": FILES["tokenizer.model"]}, checklist="tokenizer_checklist.chk")
    return model


def test_llama2_parent_tokenizer_checklist(tmp_path: Path) -> None:
    model = llama2_download(tmp_path)
    assert find_checklists(model) == [model / "checklist.chk", tmp_path / "tokenizer_checklist.chk"]
    assert expected_checksums(model)["../tokenizer.model"] == md5(FILES["tokenizer.model"])
    report = verify_checksums(model)
    assert report.ok
    assert report.checked == ("../tokenizer.model", *sorted(n for n in FILES if n != "tokenizer.model"))
    assert report.unlisted == ()


def test_llama2_parent_tokenizer_corrupted(tmp_path: Path) -> None:
    model = llama2_download(tmp_path)
    flip_byte(tmp_path / "tokenizer.model", 0)
    report = verify_checksums(model)
    actual = hash_file(tmp_path / "tokenizer.model")
    assert report.mismatched == (("../tokenizer.model", md5(FILES["tokenizer.model"]), actual),)


def test_parent_checklist_ignored_when_folder_has_its_own_tokenizer(tmp_path: Path) -> None:
    model = llama2_download(tmp_path)
    (model / "tokenizer.model").write_bytes(FILES["tokenizer.model"])
    assert find_checklists(model) == [model / "checklist.chk"]
    assert verify_checksums(model).unlisted == ("tokenizer.model",)


def test_tokenizer_checklist_in_the_folder(tmp_path: Path) -> None:
    model_files = {k: v for k, v in FILES.items() if k != "tokenizer.model"}
    model = write_model(tmp_path / "llama-2-7b", model_files)
    write_model(model, {"tokenizer.model": FILES["tokenizer.model"]}, checklist="tokenizer_checklist.chk")
    assert find_checklists(model) == [model / "checklist.chk", model / "tokenizer_checklist.chk"]
    report = verify_checksums(model)
    assert report.ok
    assert report.checked == tuple(sorted(FILES))


def test_checklists_that_disagree(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    (model / "params.md5").write_text(f"params.json {A}\n")
    with pytest.raises(InputError, match=r"params\.md5 lists md5 .* for params\.json but another checklist"):
        expected_checksums(model)


# Verifying folders


def test_ok_folder(tmp_path: Path) -> None:
    model = write_model(tmp_path / "Meta-Llama-3-8B")
    report = verify_checksums(model)
    assert report == VerifyReport(
        checked=tuple(sorted(FILES)),
        missing=(),
        mismatched=(),
        unlisted=(),
        bytes_hashed=sum(len(v) for v in FILES.values()),
        seconds=report.seconds,
    )
    assert report.ok
    assert report.seconds >= 0
    raise_for_report(report, model)  # no error


def test_flipped_byte_is_reported_with_both_hashes(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    flip_byte(model / "consolidated.01.pth", 4321)
    actual = md5((model / "consolidated.01.pth").read_bytes())
    report = verify_checksums(model, workers=2)
    assert not report.ok
    assert report.mismatched == (("consolidated.01.pth", md5(FILES["consolidated.01.pth"]), actual),)
    assert report.missing == ()
    assert len(report.checked) == len(FILES)


def test_missing_listed_file(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    (model / "consolidated.01.pth").unlink()
    report = verify_checksums(model)
    assert not report.ok
    assert report.missing == ("consolidated.01.pth",)
    assert "consolidated.01.pth" not in report.checked


def test_extra_unlisted_shard_is_reported(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    (model / "consolidated.02.pth").write_bytes(b"stray shard")
    (model / "README.md").write_text("not a file the converter reads")
    report = verify_checksums(model)
    assert report.unlisted == ("consolidated.02.pth",)
    assert report.ok  # unlisted files are reported, not failed
    assert "consolidated.02.pth" not in report.checked


def test_no_checklist(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "consolidated.00.pth").write_bytes(b"x")
    with pytest.raises(MissingFileError) as info:
        verify_checksums(model)
    assert str(info.value) == (
        f"{model} has no checklist.chk to verify the download against; pass --no-verify to skip checksum verification."
    )


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="is not a folder"):
        verify_checksums(tmp_path / "absent")


def test_skip_checks_presence_only(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    flip_byte(model / "consolidated.00.pth")
    (model / "params.json").unlink()
    report = verify_checksums(model, skip={"consolidated.00.pth", "params.json"})
    assert report.checked == ("consolidated.01.pth", "tokenizer.model")
    assert report.mismatched == ()
    assert report.missing == ("params.json",)
    assert report.bytes_hashed == len(FILES["consolidated.01.pth"]) + len(FILES["tokenizer.model"])


def test_progress_totals_the_bytes(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    seen: list[int] = []
    report = verify_checksums(model, progress=seen.append, workers=2)
    assert sum(seen) == report.bytes_hashed == sum(len(v) for v in FILES.values())
    assert all(n > 0 for n in seen)


def test_workers_must_be_positive(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    with pytest.raises(ValueError, match="workers must be at least 1"):
        verify_checksums(model, workers=0)


# Messages


def test_raise_for_report_one_mismatch(tmp_path: Path) -> None:
    report = VerifyReport(
        checked=("consolidated.00.pth", "params.json"),
        missing=(),
        mismatched=(("consolidated.00.pth", A, B),),
        unlisted=(),
        bytes_hashed=10,
        seconds=0.1,
    )
    with pytest.raises(ChecksumError) as info:
        raise_for_report(report, tmp_path)
    assert str(info.value) == (
        f"Checksum verification failed in {tmp_path}: consolidated.00.pth has md5 {B}, expected {A}; "
        "download consolidated.00.pth again, or pass --no-verify to skip checksum verification."
    )


def test_raise_for_report_mismatches_and_missing(tmp_path: Path) -> None:
    model = write_model(tmp_path / "llama-2-13b")
    flip_byte(model / "consolidated.00.pth")
    flip_byte(model / "consolidated.01.pth")
    (model / "params.json").unlink()
    report = verify_checksums(model)
    with pytest.raises(ChecksumError) as info:
        raise_for_report(report, model)
    bad0 = md5((model / "consolidated.00.pth").read_bytes())
    bad1 = md5((model / "consolidated.01.pth").read_bytes())
    assert str(info.value) == (
        f"Checksum verification failed in {model}: "
        f"consolidated.00.pth has md5 {bad0}, expected {md5(FILES['consolidated.00.pth'])}; "
        f"consolidated.01.pth has md5 {bad1}, expected {md5(FILES['consolidated.01.pth'])}; "
        "params.json is missing (the checklist lists it); "
        "download consolidated.00.pth, consolidated.01.pth and params.json again, "
        "or pass --no-verify to skip checksum verification."
    )


# Hashing


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 8 << 20])
@pytest.mark.parametrize("drop_cache", [False, True])
def test_hash_file_matches_hashlib(tmp_path: Path, chunk_size: int, drop_cache: bool) -> None:
    data = bytes(range(256)) * 40 + b"tail"
    path = tmp_path / "blob"
    path.write_bytes(data)
    seen: list[int] = []
    digest = hash_file(path, chunk_size=chunk_size, progress=seen.append, drop_cache=drop_cache)
    assert digest == md5(data)
    assert sum(seen) == len(data)


def test_hash_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert hash_file(path) == md5(b"")


DATA = bytes(range(256)) * 97 + b"end"


@pytest.mark.parametrize("size", [1, 100, 4096, len(DATA)])
def test_md5_stream_equals_hashlib_over_chunks(size: int) -> None:
    stream = Md5Stream()
    for offset in range(0, len(DATA), size):
        stream.feed(offset, DATA[offset : offset + size])
    assert stream.position == len(DATA)
    assert stream.hexdigest() == md5(DATA)


def test_md5_stream_ignores_overlapping_reads() -> None:
    stream = Md5Stream()
    stream.feed(0, DATA[:1000])
    stream.feed(500, memoryview(DATA)[500:3000])  # re-read of bytes 500..999
    stream.feed(0, DATA[:10])  # fully hashed already
    stream.feed(3000, bytearray(DATA[3000:]))
    assert stream.hexdigest() == md5(DATA)


def test_md5_stream_gap_without_path() -> None:
    stream = Md5Stream()
    stream.feed(0, DATA[:10])
    with pytest.raises(ValueError, match="got bytes from offset 20 but has hashed only 10"):
        stream.feed(20, DATA[20:30])


def test_md5_stream_reads_gaps_and_tail_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "consolidated.00.pth"
    path.write_bytes(DATA)
    stream = Md5Stream(path)
    stream.feed(100, DATA[100:5000])  # the reader skipped a header
    stream.feed(9000, DATA[9000:12000])  # and a gap
    assert stream.hexdigest() == md5(DATA)  # and never read the tail


def test_md5_stream_feeds_typed_arrays() -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    stream = Md5Stream()
    stream.feed(0, array[:5])
    stream.feed(1000, array[5:])
    assert stream.hexdigest() == md5(array.tobytes())


def test_on_file_reports_each_file_as_it_is_hashed(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    flip_byte(model / "params.json")
    seen: list[tuple[str, str, str]] = []
    report = verify_checksums(model, on_file=lambda *args: seen.append(args), workers=1)
    assert sorted(seen) == [(n, md5(FILES[n]), md5((model / n).read_bytes())) for n in sorted(FILES)]
    assert [m[0] for m in report.mismatched] == ["params.json"]
