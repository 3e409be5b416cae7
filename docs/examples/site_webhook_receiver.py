"""A receiver for the Hokusai site's payload format that checks each delivery as the site does.

    SITE_WEBHOOK_SECRET='the shared secret' PORT=9001 python site_webhook_receiver.py

Standard library only. It verifies X-Hokusai-Signature before it reads the body, parses the
"original MLflow event format", and skips a repeat of `event_type:model.id:timestamp`.
"""

import hashlib
import hmac
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["SITE_WEBHOOK_SECRET"].encode("utf-8")  # the shared secret, as UTF-8 bytes
MODEL_KEYS = ("id", "name", "status", "version", "run_id")  # always present, all strings


def signature_ok(body: bytes, header: str | None) -> bool:
    """X-Hokusai-Signature: `sha256=` + hex HMAC-SHA256 of the raw body, in constant time."""
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), (header or "").encode())


def parse(body: bytes) -> dict:
    """The registration, or ValueError when the body is not the original MLflow event format."""
    event = json.loads(body)
    if not isinstance(event, dict) or "token_id" in event:
        raise ValueError("not the original MLflow event format")
    if event.get("event_type") != "model_registered" or event.get("source") != "mlflow":
        raise ValueError("not a model_registered event")
    model = event.get("model")
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in MODEL_KEYS):
        raise ValueError("model needs id, name, status, version and run_id")
    if not isinstance(event.get("timestamp"), str):
        raise ValueError("timestamp is missing")
    # Optional: user_id, api_schema ({inputSchema, outputSchema}), eval_spec, scorer_ref,
    # primary_metric, benchmark_spec_id.
    return event


seen: set[str] = set()  # use a database in production


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))  # the raw bytes, unparsed
        if not signature_ok(body, self.headers.get("X-Hokusai-Signature")):
            self.answer(401, {"error": "Invalid signature"})
            return
        try:
            event = parse(body)
        except ValueError:  # json.JSONDecodeError is a ValueError too
            self.answer(400, {"error": "Invalid payload"})
            return
        key = f"{event['event_type']}:{event['model']['id']}:{event['timestamp']}"
        if key not in seen:  # delivery is at least once: a retry repeats the same body
            seen.add(key)
            print("verified", event["model"]["id"], json.dumps(event), flush=True)
        self.answer(200, {"success": True})

    def answer(self, status: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep stdout for the registrations


ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "9001"))), Receiver).serve_forever()
