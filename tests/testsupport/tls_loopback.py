"""TLS on 127.0.0.1 for the official-client tests: fal's clients only speak https.

* :func:`make_certificates`: a throw-away CA and a server certificate for ``127.0.0.1`` /
  ``localhost``, made with the ``openssl`` command (clients trust it through ``SSL_CERT_FILE`` or
  ``NODE_EXTRA_CA_CERTS``).
* :class:`TlsSite`: an aiohttp app served over TLS on its own thread and loop.
* :func:`tls_front`: a reverse proxy terminating TLS in front of the plain-http server, as a studio
  runs one; it adds ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` and streams answers through
  (server-sent events included).
* :func:`image_and_webhook_site`: an https host serving one image and recording webhook POSTs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "proxy-authorization",
              "proxy-authenticate", "host", "content-length"}


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(folder: Path) -> Certificates:
    """A CA and a server certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``) in ``folder``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make the test certificates")
    f = Path(folder)

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(f / "ca.key"), "-out", str(f / "ca.pem"), "-days", "2",
        "-subj", "/CN=samkit test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(f / "key.pem"), "-out", str(f / "req.csr"), "-subj", "/CN=127.0.0.1")
    (f / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                               "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", str(f / "req.csr"), "-CA", str(f / "ca.pem"), "-CAkey", str(f / "ca.key"),
        "-CAcreateserial", "-out", str(f / "cert.pem"), "-days", "2", "-extfile", str(f / "ext.cnf"))
    return Certificates(f / "ca.pem", f / "cert.pem", f / "key.pem")


class TlsSite:
    """Serve ``app`` over TLS on 127.0.0.1 (a free port) from a background thread."""

    def __init__(self, app: web.Application, certs: Certificates):
        self.app, self.certs = app, certs
        self.port: Optional[int] = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="tls-site")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certs.cert, self.certs.key)
        runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> "TlsSite":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TLS site did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _front_app(backend: str, seen: list) -> web.Application:
    session: dict = {}

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        if "s" not in session:
            session["s"] = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-Proto"] = "https"
        headers["X-Forwarded-Host"] = request.host
        async with session["s"].request(request.method, backend + request.rel_url.path_qs, headers=headers,
                                        data=await request.read(), allow_redirects=False) as upstream:
            answer = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})
            await answer.prepare(request)
            async for chunk in upstream.content.iter_any():
                await answer.write(chunk)
            await answer.write_eof()
            return answer

    async def close(_app):
        if "s" in session:
            await session["s"].close()

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close)
    return app


@contextmanager
def tls_front(backend: str, certs: Certificates):
    """``(url, seen)``: ``https://127.0.0.1:<port>`` forwarding to ``backend`` (plain http) with
    X-Forwarded-* headers; ``seen`` lists the requests it forwarded (``"METHOD /path"``)."""
    seen: list = []
    with TlsSite(_front_app(backend.rstrip("/"), seen), certs) as site:
        yield site.url, seen


@dataclass
class Recorded:
    webhooks: list
    #: POST /flaky-hook answers 500 this many times before it records and answers 200
    flaky_failures: int = 0
    flaky_tries: int = 0


@contextmanager
def image_and_webhook_site(png: bytes, certs: Certificates):
    """``(base_url, recorded)``: ``GET /cat.png`` answers ``png``; ``/moved.png`` redirects to it,
    ``/away.png`` redirects to it on ``localhost`` (another host name), ``/slow.png`` answers after
    2 s, ``/text.png`` answers text; ``POST /hook`` records the JSON body it gets in
    ``recorded.webhooks``, ``POST /flaky-hook`` too after ``recorded.flaky_failures`` 500s."""
    recorded = Recorded([])

    async def away(request):
        raise web.HTTPFound(f"https://localhost:{request.url.port}/cat.png")

    async def slow(_request):
        await asyncio.sleep(2)
        return web.Response(body=png, content_type="image/png")

    async def text(_request):
        return web.Response(text="<html>not an image</html>", content_type="image/png")

    async def flaky(request):
        recorded.flaky_tries += 1
        if recorded.flaky_tries <= recorded.flaky_failures:
            return web.json_response({"detail": "try later"}, status=500)
        return await hook(request)

    async def image(_request):
        return web.Response(body=png, content_type="image/png")

    async def moved(_request):
        raise web.HTTPFound("/cat.png")

    async def hook(request):
        recorded.webhooks.append(json.loads(await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/cat.png", image)
    app.router.add_get("/moved.png", moved)
    app.router.add_post("/hook", hook)
    app.router.add_get("/away.png", away)
    app.router.add_get("/slow.png", slow)
    app.router.add_get("/text.png", text)
    app.router.add_post("/flaky-hook", flaky)
    with TlsSite(app, certs) as site:
        yield site.url, recorded
