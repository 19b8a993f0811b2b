"""The seeds' calls made with fal's official Python client (fal-client, pinned in
tests/requirements.txt), unchanged but for the host: run as a script by
tests/test_fal_official_clients.py with FAL_QUEUE_RUN_HOST / FAL_RUN_HOST / SSL_CERT_FILE / FAL_KEY
set (fal_client reads the hosts when it is imported) and SEED_IMAGE_URL, SEED_WEBHOOK_URL,
SEED_OCTET_FILE naming what to send. Prints one JSON object: what each call gave.
"""

import json
import os
import sys
import time

import fal_client

IMAGE_URL = os.environ["SEED_IMAGE_URL"]
POINT = json.loads(os.environ["SEED_POINT"])  # [x, y] inside an object of the image
out: dict = {}

# seed 1: fal.subscribe("fal-ai/tiny-sam", {input, logs: true, onQueueUpdate})
updates = []


def on_queue_update(update):
    if isinstance(update, fal_client.InProgress):
        updates.append({"status": "IN_PROGRESS", "logs": [log["message"] for log in update.logs or []]})
    else:
        updates.append({"status": type(update).__name__})


out["subscribe"] = fal_client.subscribe("fal-ai/tiny-sam", arguments={
    "image_url": IMAGE_URL, "size": 1024, "confidence": 0.4, "box_prompt": [[0, 0, 0, 0]],
    "point_prompt": [POINT], "point_label": [1]}, with_logs=True, on_queue_update=on_queue_update)
out["subscribe_updates"] = updates

# seed 2: queue.submit with webhookUrl, then queue.status (logs) and queue.result
handle = fal_client.submit("fal-ai/image-preprocessors/sam", arguments={"image_url": IMAGE_URL},
                           webhook_url=os.environ["SEED_WEBHOOK_URL"])
out["submitted_id"] = handle.request_id
status = None
for _ in range(600):  # bounded: 600 × 0.1 s
    status = fal_client.status("fal-ai/image-preprocessors/sam", handle.request_id, with_logs=True)
    if isinstance(status, fal_client.Completed):
        break
    time.sleep(0.1)
out["status"] = {"type": type(status).__name__, "logs": [log["message"] for log in (status.logs or [])],
                 "error": getattr(status, "error", None)}
out["result"] = fal_client.result("fal-ai/image-preprocessors/sam", handle.request_id)

# the synchronous API (fal_client.run → https://{FAL_RUN_HOST}/fal-ai/tiny-sam), with what
# fal_client.encode_file writes for an unknown extension: data:application/octet-stream;base64,…
out["run"] = fal_client.run("fal-ai/tiny-sam", arguments={
    "image_url": fal_client.encode_file(os.environ["SEED_OCTET_FILE"]), "point_prompt": [POINT],
    "point_label": [1]})

# cancel: a second job queued behind a first one, cancelled while it waits
first = fal_client.submit("fal-ai/image-preprocessors/sam", arguments={"image_url": IMAGE_URL})
second = fal_client.submit("fal-ai/image-preprocessors/sam", arguments={"image_url": IMAGE_URL})
fal_client.cancel("fal-ai/image-preprocessors/sam", second.request_id)
try:
    fal_client.result("fal-ai/image-preprocessors/sam", second.request_id)
    out["cancelled"] = "result came back"
except fal_client.FalClientHTTPError as exc:
    out["cancelled"] = {"status_code": exc.status_code, "message": str(exc.message)}
out["after_cancel"] = first.get()  # the job before it still finishes

# a host the server was not told it may fetch from: refused at submit, saying how to allow it
try:
    fal_client.submit("fal-ai/tiny-sam", arguments={
        "image_url": "https://storage.googleapis.com/falserverless/model_tests/remove_background/elephant.jpg"})
    out["foreign_host"] = "accepted"
except fal_client.FalClientHTTPError as exc:
    out["foreign_host"] = {"status_code": exc.status_code, "message": json.dumps(exc.message)}

json.dump(out, sys.stdout)
