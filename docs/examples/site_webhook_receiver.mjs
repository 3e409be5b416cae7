// A receiver for the Hokusai site's payload format that checks each delivery as the site does,
// with nothing but Node's standard library (node:crypto, node:http).
//
//   SITE_WEBHOOK_SECRET='the shared secret' PORT=9001 node site_webhook_receiver.mjs
import crypto from "node:crypto";
import http from "node:http";

const SECRET = process.env.SITE_WEBHOOK_SECRET; // the shared secret; HMAC keys strings as UTF-8
const MODEL_KEYS = ["id", "name", "status", "version", "run_id"]; // always present, all strings

// X-Hokusai-Signature is "sha256=" + hex HMAC-SHA256 of the raw body; compare in constant time.
export function signatureOk(body, header) {
  const expected = Buffer.from("sha256=" + crypto.createHmac("sha256", SECRET).update(body).digest("hex"));
  const received = Buffer.from(header ?? "");
  return received.length === expected.length && crypto.timingSafeEqual(received, expected);
}

// The registration, or an Error when the body is not the original MLflow event format.
export function parse(body) {
  const event = JSON.parse(body.toString("utf8"));
  if (typeof event !== "object" || event === null || "token_id" in event) {
    throw new Error("not the original MLflow event format");
  }
  if (event.event_type !== "model_registered" || event.source !== "mlflow") {
    throw new Error("not a model_registered event");
  }
  const model = event.model;
  if (typeof model !== "object" || model === null || !MODEL_KEYS.every((k) => typeof model[k] === "string")) {
    throw new Error("model needs id, name, status, version and run_id");
  }
  if (typeof event.timestamp !== "string") throw new Error("timestamp is missing");
  // Optional: user_id, api_schema ({inputSchema, outputSchema}), eval_spec, scorer_ref,
  // primary_metric, benchmark_spec_id.
  return event;
}

const seen = new Set(); // use a database in production

function answer(res, status, document) {
  res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(document));
}

http
  .createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks); // the raw bytes: verify before parsing
      if (!signatureOk(body, req.headers["x-hokusai-signature"])) {
        answer(res, 401, { error: "Invalid signature" });
        return;
      }
      let event;
      try {
        event = parse(body);
      } catch {
        answer(res, 400, { error: "Invalid payload" });
        return;
      }
      const key = `${event.event_type}:${event.model.id}:${event.timestamp}`;
      if (!seen.has(key)) {
        seen.add(key); // delivery is at least once: a retry repeats the same body
        console.log("verified", event.model.id, JSON.stringify(event));
      }
      answer(res, 200, { success: true });
    });
  })
  .listen(Number(process.env.PORT ?? 9001), "127.0.0.1");
