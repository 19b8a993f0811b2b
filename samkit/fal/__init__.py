"""fal.ai's queue protocol, both ends.

* ``protocol``: the client (httpx): submit, poll, result, cancel, key-free result downloads.
* ``polling``: what a status answer means and how long to wait (back-off, Retry-After).
* ``keys``: where jobs go (fal or a self-hosted server) and the key, read from the machine.
* ``schemas``: the inputs and outputs of ``fal-ai/tiny-sam`` and ``fal-ai/image-preprocessors/sam``.
* ``remote``: the remote nodes' jobs (a batch of images in, IMAGE/MASK tensors out).
* ``server``: a self-hosted fal-compatible endpoint running the local code (aiohttp);
  ``python -m samkit serve --help``.
"""
