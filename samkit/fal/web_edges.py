"""What the self-hosted server does at its edge, before the queue: CORS for browser apps, and
the public URL it writes into its answers when it sits behind a TLS front.

CORS (``--cors-origin``): a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an
allowed origin is answered 204 without a key, as browsers send preflights without credentials;
every other answer to an allowed origin carries ``Access-Control-Allow-Origin`` (and exposes
``x-fal-request-id``), 401s included, so a browser app sees why it was refused. ``*`` allows
any origin. Origins not listed get no CORS headers (the browser blocks the answer).

Public URL, in this order:

1. ``--public-url`` when given;
2. ``Forwarded`` (RFC 7239: ``proto=``, ``host=``) or ``X-Forwarded-Proto`` / ``X-Forwarded-Host``,
   only from a peer on ``--trusted-proxy`` (addresses or networks); the last element is used
   (of the last header line), i.e. the one the trusted peer itself wrote: proxies append to a
   header a client may already have sent (RFC 7239 section 4), so earlier elements are the client's;
3. the request's own scheme and ``Host``.

Forwarded headers from any other peer are ignored: a client could otherwise make the server hand
out status and file URLs on a host of its choosing.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Optional

from aiohttp import web

ALLOWED_METHODS = "GET, POST, PUT, OPTIONS"
EXPOSED_HEADERS = "x-fal-request-id, x-fal-request-timeout-type, x-fal-error-type, retry-after"
_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]+$")


def parse_networks(values: Iterable[str]) -> tuple:
    """``--trusted-proxy`` values → networks. Raises ValueError naming a bad value."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {value!r} is not an IP address or network (e.g. 127.0.0.1, "
                             "10.0.0.0/8)") from None
    return tuple(networks)


def parse_origins(values: Iterable[str]) -> tuple:
    """``--cors-origin`` values → origins (``scheme://host[:port]`` or ``*``). Raises ValueError."""
    origins = []
    for value in values:
        value = value.strip().rstrip("/")
        if value != "*" and not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+$", value):
            raise ValueError(f"--cors-origin {value!r} must be an origin like https://app.example.com (scheme, "
                             "host and port only) or *")
        origins.append(value.lower())
    return tuple(origins)


def cors_middleware(origins: tuple):
    """An aiohttp middleware answering preflights and marking answers for ``origins``."""

    def allowed(origin: Optional[str]) -> Optional[str]:
        if not origin:
            return None
        if "*" in origins:
            return "*"
        return origin if origin.lower() in origins else None

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = allowed(request.headers.get("Origin"))
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if origin is None:
                return web.json_response({"detail": "This origin may not call this server (CORS); the operator "
                                                    "can allow it with --cors-origin"}, status=403)
            requested = request.headers.get("Access-Control-Request-Headers", "")
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": requested or "authorization, content-type, accept",
                "Access-Control-Max-Age": "600", "Vary": "Origin"})
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers["Vary"] = "Origin"
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return cors


def _last(request: web.Request, name: str) -> str:
    """The last element of header ``name`` (over all its lines): what the nearest proxy wrote."""
    lines = request.headers.getall(name, [])
    return lines[-1].split(",")[-1].strip() if lines else ""


def _from_forwarded(element: str) -> tuple[Optional[str], Optional[str]]:
    proto = host = None
    for pair in element.split(";"):
        name, _, value = pair.partition("=")
        value = value.strip().strip('"')
        if name.strip().lower() == "proto":
            proto = value.lower()
        elif name.strip().lower() == "host":
            host = value
    return proto, host


def public_base(request: web.Request, public_url: Optional[str], trusted: tuple) -> str:
    """The base URL clients reach this server at (see the module text for the order)."""
    if public_url:
        return public_url.rstrip("/")
    scheme, host = request.scheme, request.host
    if trusted and _is_trusted(request.remote, trusted):
        if "Forwarded" in request.headers:
            proto, fhost = _from_forwarded(_last(request, "Forwarded"))
        else:
            proto = _last(request, "X-Forwarded-Proto").lower() or None
            fhost = _last(request, "X-Forwarded-Host") or None
        if proto in ("http", "https"):
            scheme = proto
        if fhost and _HOST.match(fhost):
            host = fhost
    return f"{scheme}://{host}"


def _is_trusted(remote: Optional[str], trusted: tuple) -> bool:
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)
