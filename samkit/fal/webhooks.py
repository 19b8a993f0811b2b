"""``?fal_webhook=<url>``: when a request finishes, POST fal's webhook payload to the URL.

fal's shape (docs "Webhooks", fal-js ``WebHookResponse``)::

    {"request_id": ..., "gateway_request_id": ..., "status": "OK", "payload": <the result>}
    {"request_id": ..., "gateway_request_id": ..., "status": "ERROR",
     "error": "Invalid status code: 422", "payload": <the error body>}

Only hosts on ``--webhook-host`` are called, under the same rules as image fetching
(:mod:`.url_fetch`: https only, public addresses unless ``--allow-private-addresses``, redirects
checked hop by hop). A webhook URL the policy refuses is refused at submit with a 422, so a
callback is never silently dropped. Delivery is retried (``retries`` times after the first try,
waits doubling from 1 s, at most 60 s) until the receiver answers 2xx; each try has fal's 15 s
limit. The payload is not signed (fal signs with its own keys; this server has none): a
receiver should check ``request_id`` against the requests it submitted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Optional

from .url_fetch import OutboundPolicy, OutboundRefused, check_url, describe_host, request

log = logging.getLogger("comfyui-sam-kit.fal.server")

ATTEMPT_TIMEOUT = 15.0
FIRST_WAIT, MAX_WAIT = 1.0, 60.0


def refusal(url: str, policy: OutboundPolicy) -> Optional[str]:
    """Why ``url`` cannot be a webhook on this server (None when it can). Checks the URL only; the
    address is checked at delivery, when it is resolved."""
    if not policy.enabled:
        return ("This server does not deliver webhooks; its operator can enable them with --webhook-host "
                "<host> (repeatable). Poll the status URL instead.")
    try:
        check_url(url, policy, "fal_webhook")
    except OutboundRefused as exc:
        return str(exc)
    return None


def payload(request_id: str, result_status: int, body: dict) -> dict:
    """fal's webhook body for a request that ended with HTTP ``result_status`` and ``body``."""
    out = {"request_id": request_id, "gateway_request_id": request_id,
           "status": "OK" if result_status == 200 else "ERROR", "payload": body}
    if result_status != 200:
        out["error"] = f"Invalid status code: {result_status}"
    return out


async def deliver(url: str, body: dict, policy: OutboundPolicy, retries: int, request_id: str) -> bool:
    """POST ``body`` to ``url`` until a 2xx answer or the tries run out; True when delivered.
    Runs the blocking HTTP on a thread; cancelling the task stops further tries."""
    attempt_policy = replace(policy, timeout=min(policy.timeout, ATTEMPT_TIMEOUT), max_bytes=64 * 1024)
    host = describe_host(url)
    wait = FIRST_WAIT
    for attempt in range(1, retries + 2):
        try:
            answer = await asyncio.to_thread(request, "POST", url, attempt_policy, json=body, what="fal_webhook")
            if 200 <= answer.status < 300:
                log.info("webhook for %s delivered to %s (try %d)", request_id, host, attempt)
                return True
            why = f"HTTP {answer.status}"
        except OutboundRefused as exc:
            why = str(exc)
        log.warning("webhook for %s to %s failed (try %d of %d): %s", request_id, host, attempt, retries + 1, why)
        if attempt <= retries:
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_WAIT)
    return False
