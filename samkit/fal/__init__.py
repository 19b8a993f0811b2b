"""fal.ai's queue protocol, both ends.

The client (httpx):

* ``client``: one job from submit to result (``FalClient.run``): polls, reports progress, cancels
  a job it walks away from.
* ``calls``: the four queue calls (submit, status, result, cancel) with their retries; the key
  goes to the configured origin only.
* ``polling``: what a status answer means and how long to wait (back-off, Retry-After).
* ``errors``: the error classes, redaction (data URIs shortened, the key scrubbed), HTTP
  answer → error.
* ``transport``: URL and transport safety (https only, plain http for loopback; origins; TLS).
* ``downloads``: the key-free result downloader (size cap, redirects checked hop by hop).
* ``keys``: where jobs go (fal or a self-hosted server) and the key, read from the machine.
* ``schemas``: the inputs and outputs of ``fal-ai/tiny-sam`` and ``fal-ai/image-preprocessors/sam``.
* ``remote``: the remote nodes' jobs (a batch of images in, IMAGE/MASK tensors out).
* ``sam3_schemas``, ``rle``, ``sam3_remote``: fal's current SAM endpoints (``sam-3/image`` and
  its RLE / 3.1 twins, ``sam2/auto-segment``): schemas, RLE decoding, the SAM 3 (fal) node's job.

The self-hosted fal-compatible server (aiohttp), ``python -m samkit serve --help``:

* ``jobs``: a job, its ``JobContext`` (log, cancel flag, input image), ``run_job``.
* ``handlers``: the handlers that bind the library to the two endpoints.
* ``job_queue``: the queue (workers, positions, cancellation, result lifetime).
* ``server``: the HTTP surface (routes, keys, errors, result files, the synchronous run).
* ``status_stream``: the server-sent-events status stream.
* ``url_fetch``: outbound requests for a client (https image_url, webhooks) under SSRF rules.
* ``webhooks``: ``?fal_webhook=`` delivery in fal's payload shape.
* ``web_edges``: CORS, and the public URL behind a TLS front (trusted forwarded headers).
* ``hosting``: running it in the foreground or on a background thread.
* ``cli``: ``python -m samkit serve``.

The same handlers on fal's serverless GPUs: ``app`` (a ``fal.App``; needs the ``fal`` SDK).
"""
