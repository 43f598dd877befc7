"""Range reads of a remote file over plain HTTP/1.1 keep-alive connections, received straight into the
buffer they fill.

Written here rather than read through fsspec because of the CPU it costs: s3fs (aiobotocore on aiohttp)
receives a range as a list of small ``bytes`` objects joined at the end, so every byte is copied twice
in user space on top of the kernel's copy, and a fresh buffer is faulted in for each. For the 3 GB of a
Llama 3.2 1B checkpoint from a local S3 server that was 2.6-4.3 CPU-s of the client against 1.05 s
here, on two cores the conversion's hashing and writing (and the server) need too.

Only the bulk reads come this way, for stores that can hand out a plain URL for a key: S3 signs one with
the store's own client (its credentials, region, endpoint, requester-pays setting), so nothing about
authentication is decided here. Listing, metadata and whole small files still go through fsspec.
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .buffers import ReceiveBuffers

__all__ = ["DirectRanges", "direct_ranges"]

SIGNED_FOR = 3600  # seconds a signed URL is valid for
RESIGN_AFTER = 900  # a key's URL is signed again when it is this old (a long run outlives one signature)
TIMEOUT = 60.0  # seconds a connection may stay silent before the read is tried again
WORKERS = 4  # concurrent requests of one batch of ranges
REDIRECTS = 5


class DirectRanges:
    """``fetch(key, ranges)`` by HTTP range GETs on ``locate(key)``'s URL, a pooled connection per request."""

    def __init__(self, locate: Callable[[str], str], *, timeout: float = TIMEOUT) -> None:
        self.locate = locate
        self.timeout = timeout
        self._urls: dict[str, tuple[float, str]] = {}
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._context: ssl.SSLContext | None = None
        self.buffers = ReceiveBuffers()

    def fetch(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        """The bytes of each range, as read-only views (a watcher may keep them; nobody can change them)."""
        if len(ranges) == 1:
            return [self.get(key, *ranges[0])]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="llama-convert-ranges")
            pool = self._pool
        return list(pool.map(lambda r: self.get(key, *r), ranges))

    def get(self, key: str, start: int, end: int) -> memoryview:
        buffer = self.buffers.take(end - start)
        if end > start:
            try:
                self._get(key, start, buffer)
            except PermissionError:  # signed again once: the signature may have expired or the clock moved
                self.forget(key)
                self._get(key, start, buffer)
        return buffer.toreadonly()

    def _get(self, key: str, start: int, out: memoryview) -> None:
        url = self._url(key)
        for _ in range(REDIRECTS + 1):
            moved = self._get_into(url, start, out)
            if moved is None:
                return
            url = moved
        raise ConnectionError(f"more than {REDIRECTS} redirects for {key}")

    def _url(self, key: str) -> str:
        now = time.monotonic()
        with self._lock:
            signed = self._urls.get(key)
        if signed is None or now - signed[0] > RESIGN_AFTER:
            signed = (now, self.locate(key))
            with self._lock:
                self._urls[key] = signed
        return signed[1]

    def forget(self, key: str) -> None:
        """Sign ``key``'s URL again at its next read (its signature was refused: expired, clock skew)."""
        with self._lock:
            self._urls.pop(key, None)

    def _get_into(self, url: str, start: int, out: memoryview) -> str | None:
        """Fill ``out`` with the bytes from ``start``; a redirect's target instead, when the server moved it."""
        parts = urllib.parse.urlsplit(url)
        where = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self._connection(where)
        try:
            conn.request("GET", target or "/", headers={"Range": f"bytes={start}-{start + len(out) - 1}"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("location"):
                response.read()
                self._release(where, conn, response)
                return urllib.parse.urljoin(url, response.getheader("location"))
            if response.status != 206 and not (response.status == 200 and start == 0 and _length(response) == len(out)):
                raise _refusal(response, url)
            sent = _RANGE.match(response.getheader("content-range") or "")
            if response.status == 206 and (sent is None or int(sent[1]) != start):
                raise ValueError(f"the server answered the range at {start} with {response.getheader('content-range')}")
            got = 0
            while got < len(out):
                n = response.readinto(out[got:])
                if not n:
                    raise ConnectionError(f"short read at {start}: {got} of {len(out)} bytes")
                got += n
            if response.read(1):
                raise ConnectionError(f"the server sent more than the {len(out)} bytes asked for at {start}")
        except BaseException:
            conn.close()
            raise
        self._release(where, conn, response)
        return None

    def _connection(self, where: tuple[str, str, int]) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(where)
            if idle:
                return idle.pop()
        scheme, host, port = where
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl())
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _release(self, where: tuple[str, str, int], conn: http.client.HTTPConnection, response: Any) -> None:
        if response.will_close:
            conn.close()
            return
        with self._lock:
            self._idle.setdefault(where, []).append(conn)

    def _ssl(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context(cafile=_ca_bundle())
        return self._context

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            idle, self._idle = self._idle, {}
        if pool is not None:
            pool.shutdown(wait=True)
        for conns in idle.values():
            for conn in conns:
                conn.close()


def direct_ranges(protocol: str, fs: Any) -> DirectRanges | None:
    """Direct range reads for an fsspec filesystem, or None where its own reads must be used: a store that
    cannot sign a plain URL, or a proxy between us and the store (the store's client knows how to use it)."""
    if protocol != "s3" or not hasattr(fs, "url"):
        return None
    endpoint = (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url")
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    host = urllib.parse.urlsplit(endpoint).hostname if endpoint else None
    if _proxied(host or "s3.amazonaws.com"):
        return None
    extra = dict(getattr(fs, "req_kw", None) or {})
    return DirectRanges(lambda key: fs.url(key, expires=SIGNED_FOR, **extra))


def _proxied(host: str) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get("https") or proxies.get("http")) and not urllib.request.proxy_bypass(host)


def _ca_bundle() -> str | None:
    """The certificates the store's own client would trust: AWS_CA_BUNDLE, else certifi's (botocore's default)."""
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if bundle:
        return bundle
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _length(response: http.client.HTTPResponse) -> int:
    try:
        return int(response.getheader("content-length") or -1)
    except ValueError:
        return -1


_RANGE = re.compile(r"bytes (\d+)-")
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")


def _refusal(response: http.client.HTTPResponse, url: str) -> Exception:
    """The exception a refused range GET stands for, named as the store's client would name it."""
    body = response.read(64 << 10)
    code = _CODE.search(body)
    message = _MESSAGE.search(body)
    name = code[1].decode(errors="replace") if code else f"HTTP {response.status}"
    text = f"{name}: {message[1].decode(errors='replace') if message else response.reason}"
    if response.status == 404:
        return FileNotFoundError(text)
    if response.status in (401, 403):
        return PermissionError(text)
    if response.status in (408, 429) or response.status >= 500:
        return ConnectionError(text)  # throttled or a server error: tried again
    return ValueError(f"{text} (for a range of {urllib.parse.urlsplit(url).path})")
