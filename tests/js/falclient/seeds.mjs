// The seeds' calls (fal.ai model pages of fal-ai/tiny-sam and fal-ai/image-preprocessors/sam) made
// with fal's official JS client, @fal-ai/client 1.10.1 (package-lock.json), unchanged but for the
// host: a requestMiddleware sends https://queue.fal.run/… and https://fal.run/… to the server in
// SEED_BASE_URL (queue at /, the synchronous run at /run/). Run by
// tests/test_fal_official_clients.py with NODE_EXTRA_CA_CERTS naming the test CA. Prints one JSON
// object: what each call gave.
import { fal } from "@fal-ai/client";

const base = process.env.SEED_BASE_URL;
const IMAGE_URL = process.env.SEED_IMAGE_URL;
const POINT = JSON.parse(process.env.SEED_POINT);

fal.config({
  credentials: process.env.FAL_KEY,
  requestMiddleware: async (request) => ({
    ...request,
    url: request.url
      .replace(/^https:\/\/queue\.fal\.run\//, `${base}/`)
      .replace(/^https:\/\/fal\.run\//, `${base}/run/`),
  }),
});

const out = {};

// seed 1: subscribe with logs and onQueueUpdate (polling)
const updates = [];
const result = await fal.subscribe("fal-ai/tiny-sam", {
  input: { image_url: IMAGE_URL, size: 1024, confidence: 0.4, box_prompt: [[0, 0, 0, 0]],
           point_prompt: [POINT], point_label: [1] },
  logs: true,
  onQueueUpdate: (update) => {
    updates.push({ status: update.status, logs: (update.logs ?? []).map((log) => log.message) });
  },
});
out.subscribe = { data: result.data, requestId: result.requestId, updates };

// the same in streaming mode: the status comes as server-sent events
const streamed = [];
const viaStream = await fal.subscribe("fal-ai/image-preprocessors/sam", {
  input: { image_url: IMAGE_URL },
  logs: true,
  mode: "streaming",
  onQueueUpdate: (update) => {
    streamed.push({ status: update.status, logs: (update.logs ?? []).map((log) => log.message) });
  },
});
out.streaming = { data: viaStream.data, requestId: viaStream.requestId, updates: streamed };

// seed 2: queue.submit with webhookUrl, queue.status with logs, queue.result
const { request_id } = await fal.queue.submit("fal-ai/image-preprocessors/sam", {
  input: { image_url: IMAGE_URL },
  webhookUrl: process.env.SEED_WEBHOOK_URL,
});
let status;
for (let i = 0; i < 600; i++) { // bounded: 600 × 0.1 s
  status = await fal.queue.status("fal-ai/image-preprocessors/sam", { requestId: request_id, logs: true });
  if (status.status === "COMPLETED") break;
  await new Promise((resolve) => setTimeout(resolve, 100));
}
const queued = await fal.queue.result("fal-ai/image-preprocessors/sam", { requestId: request_id });
out.queue = { request_id, status: status.status, logs: (status.logs ?? []).map((l) => l.message),
              data: queued.data, requestId: queued.requestId };

// the synchronous API
const ran = await fal.run("fal-ai/tiny-sam", {
  input: { image_url: IMAGE_URL, point_prompt: [POINT], point_label: [1] },
});
out.run = { data: ran.data, requestId: ran.requestId };

// cancel a job queued behind another
const first = await fal.queue.submit("fal-ai/image-preprocessors/sam", { input: { image_url: IMAGE_URL } });
const second = await fal.queue.submit("fal-ai/image-preprocessors/sam", { input: { image_url: IMAGE_URL } });
await fal.queue.cancel("fal-ai/image-preprocessors/sam", { requestId: second.request_id });
const afterCancel = await fal.queue.status("fal-ai/image-preprocessors/sam", { requestId: second.request_id });
try {
  await fal.queue.result("fal-ai/image-preprocessors/sam", { requestId: second.request_id });
  out.cancelled = "result came back";
} catch (error) {
  out.cancelled = { status: error.status, body: error.body, statusAfter: afterCancel.status };
}
// the job before it still finishes
const firstDone = await fal.queue.subscribeToStatus("fal-ai/image-preprocessors/sam",
  { requestId: first.request_id, mode: "polling", pollInterval: 100 });
out.first = { status: firstDone.status, error: firstDone.error ?? null };

process.stdout.write(JSON.stringify(out));
