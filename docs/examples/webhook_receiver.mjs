// A webhook receiver that verifies both Hokusai signatures, with nothing but Node's standard
// library (node:crypto, node:http): no npm install.
//
//   WEBHOOK_SECRET=whsec_... PORT=9000 node webhook_receiver.mjs
import crypto from "node:crypto";
import http from "node:http";

const SECRET = process.env.WEBHOOK_SECRET; // whsec_..., shown once when the endpoint was created
const TOLERANCE_SECONDS = 5 * 60;

function safeEqual(a, b) {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

// Standard Webhooks: HMAC-SHA256 over `${id}.${timestamp}.${body}`, keyed with the base64-decoded
// part of the secret after "whsec_". The header may hold several space-separated signatures
// (during a secret rotation): one match is enough.
export function verifyStandard(body, headers) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (!id || !timestamp || !signatures) return false;
  if (!/^\d+$/.test(timestamp)) return false;
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > TOLERANCE_SECONDS) return false;
  const key = Buffer.from(SECRET.slice("whsec_".length), "base64");
  const expected = crypto
    .createHmac("sha256", key)
    .update(`${id}.${timestamp}.`)
    .update(body)
    .digest();
  return signatures.split(" ").some((entry) => {
    const [version, signature] = entry.split(",");
    return version === "v1" && signature !== undefined && safeEqual(Buffer.from(signature, "base64"), expected);
  });
}

// X-Hokusai-Signature: "sha256=" + hex HMAC-SHA256 of the raw body, keyed with the whole secret
// string ("whsec_" included). During a rotation, a receiver still on the old secret finds its
// signature in X-Hokusai-Signature-Previous.
export function verifyHokusai(body, headers) {
  const expected = Buffer.from("sha256=" + crypto.createHmac("sha256", SECRET).update(body).digest("hex"));
  return ["x-hokusai-signature", "x-hokusai-signature-previous"].some((name) =>
    safeEqual(Buffer.from(headers[name] ?? ""), expected),
  );
}

const seen = new Set(); // use a database in production: event_id is the de-duplication key

http
  .createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks); // the raw bytes: verify before parsing
      if (!verifyStandard(body, req.headers) || !verifyHokusai(body, req.headers)) {
        res.writeHead(401).end();
        return;
      }
      const event = JSON.parse(body.toString("utf8"));
      if (!seen.has(event.event_id)) {
        seen.add(event.event_id); // delivery is at least once: skip a repeat
        console.log("verified", event.event_type, event.token_id, JSON.stringify(event));
      }
      res.writeHead(204).end(); // any 2xx acknowledges the delivery
    });
  })
  .listen(Number(process.env.PORT ?? 9000), "127.0.0.1");
