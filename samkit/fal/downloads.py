"""The key-free result downloader: result files (https, ``data:`` URIs, loopback http when the
queue runs on this machine) fetched by clients that never hold a key, with a size cap."""

from __future__ import annotations

import threading
from typing import Optional
from urllib.parse import urlsplit

import httpx

from .errors import FalDownloadError, redact
from .schemas import decode_data_uri
from .transport import USER_AGENT, is_loopback_host, tls_context

DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


class ResultDownloader:
    """Fetches result files without any credentials: https (any host) and ``data:`` URIs; plain
    http only from loopback, and only when ``allow_loopback_http`` (the queue itself is on this
    machine), so a result URL from a remote service cannot make us probe local ports. Redirects
    are followed by hand (at most 5), each hop checked the same way.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES, timeout: float = 60.0,
                 allow_loopback_http: bool = False):
        self.max_bytes = max_bytes
        self.allow_loopback_http = allow_loopback_http
        self._lock = threading.Lock()
        self._clients: dict[bool, httpx.Client] = {}
        self.timeout = timeout

    def _client(self, loopback: bool) -> httpx.Client:
        with self._lock:
            if loopback not in self._clients:
                self._clients[loopback] = httpx.Client(headers={"User-Agent": USER_AGENT}, follow_redirects=False,
                                                       trust_env=not loopback, verify=tls_context(not loopback),
                                                       timeout=httpx.Timeout(self.timeout, connect=10.0))
            return self._clients[loopback]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> "ResultDownloader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fetch(self, url: str, request_id: Optional[str] = None, what: Optional[str] = None) -> bytes:
        """The bytes at ``url`` (rules: class docstring). ``what`` names the file in errors (default: a
        result file of ``request_id``). Raises :class:`FalDownloadError`."""
        where = what or f"result file of request {request_id or '?'}"
        expired = "" if what else " (results expire soon after the job; run again)"
        if url.startswith("data:"):
            try:
                return decode_data_uri(url, self.max_bytes)[1]
            except ValueError as exc:
                raise FalDownloadError(f"{where}: {exc}", request_id=request_id) from None
        for _hop in range(6):
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise FalDownloadError(f"{where}: unsupported URL {redact(url, limit=120)}", request_id=request_id)
            loopback = is_loopback_host(parts.hostname)
            if parts.scheme == "http" and not (loopback and self.allow_loopback_http):
                raise FalDownloadError(f"{where}: refusing plain http from {parts.hostname} (result files must come "
                                       "over https, or from this machine when the server runs here)",
                                       request_id=request_id)
            try:
                with self._client(loopback).stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise FalDownloadError(f"{where}: HTTP {response.status_code} from {parts.hostname}{expired}",
                                               status_code=response.status_code, request_id=request_id)
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise FalDownloadError(f"{where}: {int(declared)} bytes is over the {self.max_bytes}-byte limit",
                                               request_id=request_id)
                    chunks, total = [], 0
                    for chunk in response.iter_bytes():
                        total += len(chunk)
                        if total > self.max_bytes:
                            raise FalDownloadError(f"{where}: larger than the {self.max_bytes}-byte limit",
                                                   request_id=request_id)
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise FalDownloadError(f"{where}: download from {parts.hostname} failed ({type(exc).__name__})",
                                       request_id=request_id) from None
        raise FalDownloadError(f"{where}: too many redirects", request_id=request_id)
