"""Requests the self-hosted server makes on a client's behalf: fetching an ``https://`` image_url
and delivering a webhook. Both are off unless the operator lists the hosts they may reach, and
both follow one rule set (:class:`OutboundPolicy`), because either would otherwise let anyone
with a key make the GPU box call into the studio's network (SSRF):

* ``https://`` only; no user name or password in the URL;
* the host must be on the allow-list (``--fetch-host`` / ``--webhook-host``): an exact name or
  address, or ``*.example.com`` for its sub-domains;
* every address the name resolves to must be public (not private, loopback, link-local,
  multicast, reserved or unspecified; IPv6 forms carrying an IPv4 address (mapped, NAT64,
  6to4, compatible) judged as that IPv4 address) unless
  ``allow_private``; the connection then goes to the address that was checked (the certificate
  is still verified for the name), so a DNS answer that changes between check and connect
  cannot reach an internal address;
* redirects are followed by hand, at most ``max_redirects``, each hop checked as above;
* one deadline (``timeout``) covers every hop and the body; the body is cut at ``max_bytes``.

Proxies from the environment are not used (they would connect elsewhere than the checked
address); CA certificates from ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` are.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from .transport import USER_AGENT, tls_context

REDIRECTS = (301, 302, 303, 307, 308)


class OutboundRefused(ValueError):
    """A URL the policy does not let the server reach, or a fetch that failed; the text says why."""


@dataclass(frozen=True)
class OutboundPolicy:
    """Which URLs the server may reach for a client, and how much it may read from them."""

    #: allowed hosts (lower case): names, addresses, or ``*.domain`` for sub-domains; empty: off
    hosts: tuple = ()
    allow_private: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 20.0
    max_redirects: int = 5
    #: any host name (the fal App: callers pass fal's CDN or their own storage); the address rules
    #: above still apply. Last, so positional construction (hosts, allow_private, max_bytes, ...) holds
    any_host: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.hosts) or self.any_host

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        host = host.lower().strip("[]").rstrip(".")
        for allowed in self.hosts:
            if allowed.startswith("*.") and host.endswith(allowed[1:]) and len(host) > len(allowed) - 1:
                return True
            if host == allowed.strip("[]"):
                return True
        return False


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def parse_hosts(values, option: str) -> tuple:
    """``--fetch-host`` / ``--webhook-host`` values → the allow-list of :class:`OutboundPolicy`.

    Each value is a host name (``images.example.com``), ``*.example.com`` (its sub-domains) or an
    IP address (IPv6 with or without brackets), compared with a URL's host as is. Raises ValueError
    naming ``option`` for anything else (a URL, a port, a network, ``*``), which no host could match.
    """
    hosts = []
    for value in values:
        host = value.strip().lower().rstrip(".")
        name = host[2:] if host.startswith("*.") else host.strip("[]")
        if not (_is_address(name) and not host.startswith("*.")) and not _NAME.fullmatch(name):
            raise ValueError(f"{option} {value!r} must be a host name or address such as images.example.com, "
                             "203.0.113.7 or *.example.com (no scheme, port, path or network)")
        hosts.append(host if host.startswith("*.") else name)
    return tuple(hosts)


def check_url(url: Any, policy: OutboundPolicy, what: str = "URL"):
    """The split URL if ``policy`` allows it (without looking the host up); else :class:`OutboundRefused`."""
    if not isinstance(url, str):
        raise OutboundRefused(f"{what} must be a string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise OutboundRefused(f"{what} is not a valid URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise OutboundRefused(f"{what} must be an https:// URL")
    if parts.username or parts.password:
        raise OutboundRefused(f"{what} must not contain a user name or password")
    if not policy.host_allowed(parts.hostname):
        raise OutboundRefused(f"{what}: host {parts.hostname!r} is not on this server's allow-list")
    return parts


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: a gateway connects to the IPv4
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use: not globally reachable
_V4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible form (RFC 4291 2.5.5.1)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 one reaches through a translator or tunnel (mapped, NAT64, 6to4, compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _V4_COMPATIBLE and int(ip) > 1):  # :: and ::1 stay themselves
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(address: str) -> bool:
    """Whether the server may connect to ``address`` (text, IPv4 or IPv6, optional ``%zone``): a global,
    non-multicast address; an IPv6 one that carries an IPv4 address (:func:`_embedded_ipv4`) is judged by
    that IPv4 address, since on a NAT64 / 6to4 network connecting to it reaches that IPv4 host."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        ip = _embedded_ipv4(ip) or ip
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int, policy: OutboundPolicy, what: str) -> str:
    """The address to connect to: every address ``host`` resolves to must pass the policy."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundRefused(f"{what}: cannot resolve {host!r} ({exc})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise OutboundRefused(f"{what}: {host!r} has no address")
    if not policy.allow_private:
        for address in addresses:
            if not is_public(address):
                raise OutboundRefused(f"{what}: {host!r} resolves to {address}, a private, loopback or link-local "
                                      "address; the server refuses those unless started with "
                                      "--allow-private-addresses")
    return addresses[0]


@dataclass
class Fetched:
    status: int
    headers: httpx.Headers
    body: bytes
    url: str  # the last hop


def _client(timeout: float) -> httpx.Client:
    return httpx.Client(verify=tls_context(True), trust_env=False, follow_redirects=False, timeout=timeout,
                        headers={"User-Agent": USER_AGENT})


def request(method: str, url: str, policy: OutboundPolicy, *, json: Any = None, what: str = "URL") -> Fetched:
    """One request under ``policy`` (redirects followed and checked hop by hop). Any answer status
    comes back as :class:`Fetched`; a refused URL, a network error, the deadline or a body over
    ``max_bytes`` raise :class:`OutboundRefused`."""
    deadline = time.monotonic() + policy.timeout
    with _client(policy.timeout) as client:
        for _hop in range(policy.max_redirects + 1):
            parts = check_url(url, policy, what)
            port = parts.port or 443
            address = resolve(parts.hostname, port, policy, what)
            literal = _is_address(parts.hostname)
            pinned = urlunsplit(("https", f"[{address}]:{port}" if ":" in address else f"{address}:{port}",
                                 parts.path or "/", parts.query, ""))
            left = deadline - time.monotonic()
            if left <= 0:
                raise OutboundRefused(f"{what}: no answer within {policy.timeout:g} s")
            extensions = {"timeout": {"connect": left, "read": left, "write": left, "pool": left}}
            if not literal:
                extensions["sni_hostname"] = parts.hostname  # the certificate is checked for the name
            try:
                with client.stream(method, pinned, json=json, headers={"Host": parts.netloc.split("@")[-1]},
                                   extensions=extensions) as response:
                    if response.status_code in REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        if response.status_code in (301, 302, 303) and method != "GET":
                            method, json = "GET", None
                        continue
                    body = _read_limited(response, policy, deadline, what)
                    return Fetched(response.status_code, response.headers, body, url)
            except httpx.TimeoutException:
                raise OutboundRefused(f"{what}: no answer within {policy.timeout:g} s") from None
            except httpx.HTTPError as exc:
                raise OutboundRefused(f"{what}: {type(exc).__name__}: {exc}") from None
    raise OutboundRefused(f"{what}: more than {policy.max_redirects} redirects")


def _read_limited(response: httpx.Response, policy: OutboundPolicy, deadline: float, what: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise OutboundRefused(f"{what}: the answer is {declared} bytes; this server reads at most {policy.max_bytes}")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > policy.max_bytes:
            raise OutboundRefused(f"{what}: the answer is larger than {policy.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise OutboundRefused(f"{what}: not read within {policy.timeout:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def fetch_bytes(url: str, policy: OutboundPolicy, what: str = "image_url") -> bytes:
    """``GET url`` under ``policy``: the body of a 200 answer; anything else raises :class:`OutboundRefused`."""
    fetched = request("GET", url, policy, what=what)
    if fetched.status != 200:
        raise OutboundRefused(f"{what}: the host answered HTTP {fetched.status}")
    return fetched.body


def describe_host(url: str) -> Optional[str]:
    """The host of ``url`` for logs (never the path or query, which may carry a signed token)."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None
