"""Range reads over plain HTTP (the bulk reads of an S3 source, on a URL the store signed): the bytes asked
for, straight into their buffer, and every way a server answers otherwise named as the store's client would
name it — a refused signature signed again once, throttling and short bodies tried again, a missing key
and a refusal in one sentence. The server is a small one in this process on 127.0.0.1, scripted per test."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from llama_convert.errors import InputError, MissingFileError
from llama_convert.formats.storage.backends import BACKENDS
from llama_convert.formats.storage.direct import DirectRanges, direct_ranges
from llama_convert.formats.storage.remote import RemotePath, RemoteStore

DATA = os.urandom(3 << 20)
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


class _Script:
    """What the server answers: ``answers`` is consumed one per request (then every request is served)."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (path with query, Range header)
        self.keep_alive = True


def _handler(script: _Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            script.requests.append((self.path, self.headers.get("Range", "")))
            answer = script.answers.pop(0) if script.answers else "serve"
            if answer == "redirect":
                self._reply(307, b"", {"Location": "/moved" + self.path})
            elif answer in ("403", "404", "503"):
                code = {"403": "AccessDenied", "404": "NoSuchKey", "503": "SlowDown"}[answer]
                body = f"<Error><Code>{code}</Code><Message>scripted {answer}</Message></Error>".encode()
                self._reply(int(answer), body, {"Content-Type": "application/xml"})
            elif answer == "short":  # promises the range, sends half of it and hangs up
                start, end = self._range()
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(DATA)}")
                self.send_header("Content-Length", str(end - start))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(DATA[start : start + (end - start) // 2])
                self.close_connection = True
            elif answer == "whole":  # a server that ignores Range
                self._reply(200, DATA, {})
            elif answer == "elsewhere":  # the right length from the wrong place
                start, end = self._range()
                self._reply(206, DATA[start + 1 : end + 1], {"Content-Range": f"bytes {start + 1}-{end}/{len(DATA)}"})
            else:
                start, end = self._range()
                self._reply(206, DATA[start:end], {"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"})

        def _range(self) -> tuple[int, int]:
            match = _RANGE.fullmatch(self.headers.get("Range", ""))
            assert match is not None
            return int(match[1]), min(len(DATA), int(match[2]) + 1)

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if not script.keep_alive:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[_Script, str]]:
    script = _Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield script, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@contextlib.contextmanager
def _ranges(base: str, signed: list[str]) -> Iterator[DirectRanges]:
    def locate(key: str) -> str:
        signed.append(key)
        return f"{base}/{key}?X-Amz-Signature={len(signed)}"

    direct = DirectRanges(locate, timeout=10)
    try:
        yield direct
    finally:
        direct.close()


def test_ranges_arrive_whole_read_only_and_over_one_kept_connection(server):
    script, base = server
    signed: list[str] = []
    with _ranges(base, signed) as direct:
        got = direct.fetch("bucket/blob", [(0, 10), (5, 1 << 20), (len(DATA) - 7, len(DATA))])
        assert [bytes(g) for g in got] == [DATA[0:10], DATA[5 : 1 << 20], DATA[-7:]]
        assert all(g.readonly for g in got)
        assert not np.frombuffer(got[1], np.uint8).flags.writeable  # nobody downstream can change fetched bytes
        for _ in range(3):
            assert bytes(direct.get("bucket/blob", 100, 200)) == DATA[100:200]
        assert len(direct.get("bucket/blob", 7, 7)) == 0
    assert signed == ["bucket/blob"]  # signed once for the run, not per request
    assert [r for _, r in script.requests[-3:]] == ["bytes=100-199"] * 3
    assert "X-Amz-Signature=1" in script.requests[-1][0]


def test_a_refused_signature_is_signed_again_once_then_named(server):
    script, base = server
    signed: list[str] = []
    with _ranges(base, signed) as direct:
        script.answers = ["403"]  # an expired signature: signed again, and the read goes through
        assert bytes(direct.get("bucket/blob", 0, 100)) == DATA[:100]
        assert len(signed) == 2
        script.answers = ["403", "403"]
        with pytest.raises(PermissionError, match="AccessDenied: scripted 403"):
            direct.get("bucket/blob", 0, 100)


def test_answers_become_the_errors_the_store_retries_or_refuses(server):
    script, base = server
    with _ranges(base, []) as direct:
        script.answers = ["404"]
        with pytest.raises(FileNotFoundError, match="NoSuchKey"):
            direct.get("bucket/blob", 0, 10)
        script.answers = ["503"]
        with pytest.raises(ConnectionError, match="SlowDown"):
            direct.get("bucket/blob", 0, 10)
        script.answers = ["short"]
        with pytest.raises(ConnectionError, match="short read"):
            direct.get("bucket/blob", 0, 1000)
        script.answers = ["whole"]  # a server ignoring Range is fine only when the range is the whole file
        assert bytes(direct.get("bucket/blob", 0, len(DATA))) == DATA
        script.answers = ["whole"]
        with pytest.raises(ValueError, match="HTTP 200"):
            direct.get("bucket/blob", 10, 20)
        script.answers = ["elsewhere"]
        with pytest.raises(ValueError, match="answered the range at 10 with bytes 11-"):
            direct.get("bucket/blob", 10, 20)
        script.answers = ["redirect"]
        assert bytes(direct.get("bucket/blob", 3, 9)) == DATA[3:9]
        assert script.requests[-1][0].startswith("/moved/")


class _Refusing:
    """A store's own client that refuses too (the credentials are wrong, not the signed URL)."""

    def cat_file(self, *args, **kwargs):
        raise PermissionError("AccessDenied: refused by the store's client too")


def test_the_store_retries_transient_answers_and_names_refusals(server):
    """Through RemoteStore.fetch: throttling and a dropped body are tried again; a missing key and a
    refusal become one sentence naming the URL."""
    script, base = server
    with _ranges(base, []) as direct:
        store = RemoteStore(BACKENDS["s3"], _Refusing(), direct=direct, backoff=0.001)
        script.answers = ["503", "short", "503"]
        assert bytes(store.fetch("bucket/blob", [(10, 5000)])[0]) == DATA[10:5000]
        script.answers = ["404"]
        with pytest.raises(MissingFileError, match=r"^s3://bucket/blob does not exist"):
            store.fetch("bucket/blob", [(0, 10)])
        script.answers = ["403", "403"]
        with pytest.raises(InputError, match=r"^s3://bucket/blob could not be read: access was refused"):
            store.fetch("bucket/blob", [(0, 10)])


def test_a_signed_url_the_store_refuses_falls_back_to_the_stores_own_reads(server):
    """A bucket in another region, or an object that needs headers, refuses a plain signed URL where the
    store's client gets through: that client then reads the rest of the run."""
    from fsspec.implementations.memory import MemoryFileSystem

    script, base = server
    fs = MemoryFileSystem()
    fs.pipe_file("/bucket/blob", DATA)
    with _ranges(base, []) as direct:
        store = RemoteStore(BACKENDS["s3"], fs, direct=direct, backoff=0.001)
        script.answers = ["403"] * 4  # each range refused, signed again, refused again
        assert bytes(store.fetch("/bucket/blob", [(10, 5000), (7000, 9000)])[1]) == DATA[7000:9000]
        assert store.direct is None
        served = len(script.requests)
        assert bytes(store.fetch("/bucket/blob", [(0, 10)])[0]) == DATA[:10]
        assert len(script.requests) == served


def test_a_closing_server_gets_a_new_connection_per_request(server):
    script, base = server
    script.keep_alive = False
    with _ranges(base, []) as direct:
        for start in (0, 1000, 2000):
            assert bytes(direct.get("bucket/blob", start, start + 500)) == DATA[start : start + 500]
        assert not any(direct._idle.values())


def test_close_ranges_of_one_batch_share_a_request(server):
    """Zip headers around a norm are a few KiB apart: one request for them, sliced into the ranges asked."""
    script, base = server
    with _ranges(base, []) as direct:
        store = RemoteStore(BACKENDS["s3"], object(), direct=direct)
        store.info = lambda key: {"size": len(DATA), "type": "file"}  # type: ignore[method-assign]
        source = RemotePath(store, "bucket/blob").open_bytes()
        before = len(script.requests)
        ranges = [(2 << 20, (2 << 20) + 30), (100, 130), (4200, 4230), (9000, 9100)]
        got = source.read_ranges(ranges)
        assert [bytes(g) for g in got] == [DATA[s:e] for s, e in ranges]
        assert len(script.requests) - before == 2  # the three near the start in one, the far one alone


def test_s3_stores_read_directly_unless_a_proxy_is_in_the_way(monkeypatch):
    s3fs = pytest.importorskip("s3fs")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs = s3fs.S3FileSystem(key="k", secret="s", skip_instance_cache=True)
    assert direct_ranges("s3", fs) is not None
    assert direct_ranges("gcs", fs) is None  # only stores that sign a plain URL
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert direct_ranges("s3", fs) is None  # the store's own client knows how to go through it
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert direct_ranges("s3", fs) is not None
