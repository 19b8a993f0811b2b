"""URL and transport safety shared by the queue client and the result downloader.

* The key goes only to the configured base's scheme+host+port (:func:`origin`).
* Plain ``http://`` is refused unless the host is a loopback address (:func:`check_base_url`).
* Loopback traffic never goes through a proxy from the environment; TLS contexts are made once
  (:func:`tls_context`).
"""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

import httpx

from .. import __version__
from .errors import FalConfigError

USER_AGENT = f"comfyui-sam-kit/{__version__}"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``url``, lower-cased, with the scheme's default port filled in."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash, or :class:`FalConfigError` if it is unsafe."""
    base = (base_url or "").strip().rstrip("/")
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise FalConfigError(f"base URL {base_url!r} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise FalConfigError(f"base URL {base_url!r} must be an https:// URL (e.g. https://queue.fal.run)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise FalConfigError("base URL must not contain credentials, a query or a fragment; the key is read from "
                             "FAL_KEY or the config file")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise FalConfigError(f"base URL {base!r} uses plain http; the key would travel unencrypted. Use https://, "
                             "or http:// only for a server on this machine (127.0.0.1, ::1, localhost)")
    return base


@functools.lru_cache(maxsize=2)
def tls_context(trust_env: bool):
    # Building a verifying SSL context loads the CA bundle (~25 ms); every node run makes a new
    # client, so the context, which is safe to share between clients and threads, is made once.
    return httpx.create_ssl_context(trust_env=trust_env)
