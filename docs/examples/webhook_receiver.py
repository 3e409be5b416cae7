"""A webhook receiver that verifies both Hokusai signatures before trusting a delivery.

    WEBHOOK_SECRET=whsec_... PORT=9000 python webhook_receiver.py

Needs only the standard library and `standardwebhooks` (pip install standardwebhooks).
"""

import hashlib
import hmac
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = os.environ["WEBHOOK_SECRET"]  # whsec_..., shown once when the endpoint was created
standard = Webhook(SECRET)


def verify(body: bytes, headers: dict[str, str]) -> dict:
    """The envelope once both signatures check out; WebhookVerificationError otherwise."""
    headers = {name.lower(): value for name, value in headers.items()}
    # webhook-id, webhook-timestamp (within 5 minutes of now) and webhook-signature (v1,<base64>)
    envelope = standard.verify(body, headers)
    # X-Hokusai-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the whole secret>.
    # During a secret rotation, a receiver still on the old secret finds its signature in
    # X-Hokusai-Signature-Previous.
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    received = [
        headers.get("x-hokusai-signature", ""),
        headers.get("x-hokusai-signature-previous", ""),
    ]
    if not any(hmac.compare_digest(expected, value) for value in received):
        raise WebhookVerificationError("X-Hokusai-Signature does not match")
    return envelope


seen: set[str] = set()  # use a database in production: event_id is the de-duplication key


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))  # the raw bytes, unparsed
        try:
            event = verify(body, dict(self.headers))
        except WebhookVerificationError:
            self.send_response(401)
            self.end_headers()
            return
        if event["event_id"] not in seen:  # delivery is at least once: skip a repeat
            seen.add(event["event_id"])
            print("verified", event["event_type"], event["token_id"], json.dumps(event), flush=True)
        self.send_response(204)  # any 2xx acknowledges the delivery
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep stdout for the events


ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "9000"))), Receiver).serve_forever()
