"""`HokusaiClient`: the Hokusai model registration service from Python.

One method per operation, in the shape of huggingface_hub's `HfApi`: tokens, model registration
(with the wait for a sealed-benchmark evaluation), registrations and their receipts, benchmarks,
the events feed and webhooks. Each returns the service's JSON as a dict (`ServiceJSON`, which also
keeps the body as it came) and raises a `HokusaiError` subclass on failure (hokusai_client.errors).

    from hokusai_client import HokusaiClient

    with HokusaiClient("https://registry.example.com", api_key="hok_...") as client:
        registration = client.register_model(
            "XRAY", "model.pkl", metric="auroc", baseline=0.82, metric_value=0.86
        )
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import quote, urlsplit

import httpx

from hokusai_client import __version__
from hokusai_client.config import API_KEY_VARIABLE, resolve_api_key, resolve_api_url
from hokusai_client.constants import FINAL_REGISTRATION_STATUSES
from hokusai_client.errors import (
    ConnectionFailed,
    HokusaiError,
    RegistrationRefused,
    UsageError,
)
from hokusai_client.receipts import VerifiedReceipt, verify_receipt
from hokusai_client.transport import (
    OnRetry,
    ServiceJSON,
    Transport,
    json_of,
    tls_verification,
)
from hokusai_client.uploads import Advance, DigestField, HashingReader, PackFormat, pack_folder

# Registering a large model takes the service a while after the last byte (MLflow copies it).
REGISTER_READ_TIMEOUT = 900.0
# `GET /events?wait=` long-polls at most this long on the service's side.
EVENTS_WAIT_SECONDS = 30
EVENTS_MAX_FAILURES = 10
# Polling an evaluating registration: from POLL_FIRST seconds, growing to POLL_MAX.
POLL_FIRST = 0.5
POLL_MAX = 5.0
DEFAULT_WAIT_SECONDS = 3600.0
# A registration's optional fields that the Hokusai SDK also sends (strings of at most 255).
SDK_FIELDS = (
    "proposal_identifier",
    "eval_spec",
    "scorer_ref",
    "primary_metric",
    "benchmark_spec_id",
)


class UploadProgress(Protocol):
    """What an upload reports: a task per file pass, notes between them."""

    def task(self, description: str, total: int) -> Advance | None: ...

    def note(self, text: str) -> None: ...


class WaitTimedOut(HokusaiError):
    """A registration still evaluating when the wait ran out; `registration` is its last JSON."""

    def __init__(self, message: str, registration: ServiceJSON) -> None:
        super().__init__(message)
        self.registration = registration


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


def _multipart() -> str:
    """A multipart content type with a boundary of our own: every retry sends the same bytes."""
    return f"multipart/form-data; boundary=hokusai-{secrets.token_hex(16)}"


def _number(value: float) -> str:
    return repr(float(value))


class HokusaiClient:
    """A client of one service. Thread-compatible (one per thread), closed by `close()` or `with`.

    `api_url` defaults to HOKUSAI_API_URL, then HOKUSAI_API_ENDPOINT (the Hokusai SDK's name),
    then http://127.0.0.1:8000. `api_key` defaults to HOKUSAI_API_KEY, then, for a service on this
    machine only, the development key `make run` leaves in `$HOKUSAI_DATA_DIR/dev-api-key`.
    Transient failures are retried `retries` times (through stamina); `on_retry` hears of each.
    """

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        on_retry: OnRetry | None = None,
        key_source: str | None = None,
        user_agent: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = resolve_api_url(api_url)
        if urlsplit(self.api_url).scheme not in ("http", "https"):
            raise UsageError(f"--api-url must be an http:// or https:// URL, not {self.api_url!r}")
        if api_key is None and key_source is None:
            api_key, key_source = resolve_api_key(
                os.environ.get(API_KEY_VARIABLE), API_KEY_VARIABLE, self.api_url
            )
        self.api_key = api_key
        self.key_source = key_source
        headers = {
            "User-Agent": user_agent or f"hokusai-client/{__version__}",
            "Accept": "application/json, application/problem+json",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        http = httpx.Client(
            base_url=self.api_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            transport=transport,
            verify=tls_verification(self.api_url),
        )
        self._transport = Transport(
            http, api_url=self.api_url, timeout=timeout, retries=retries, on_retry=on_retry
        )

    def close(self) -> None:
        self._transport.http.close()

    def __enter__(self) -> HokusaiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any request, with the client's key, retries and error mapping (see Transport.request)."""
        return self._transport.request(method, path, **kwargs)

    def _json(self, method: str, path: str, **kwargs: Any) -> ServiceJSON:
        return json_of(self.request(method, path, **kwargs))

    # Tokens --------------------------------------------------------------------------------------

    def create_token(
        self,
        token_id: str,
        *,
        name: str | None = None,
        metric: str | None = None,
        baseline: float | None = None,
        metadata: Mapping[str, str] | None = None,
        confidence: float | None = None,
    ) -> ServiceJSON:
        """POST /tokens: a draft token, optionally with the benchmark its model must beat."""
        body: dict[str, Any] = {"token_id": token_id}
        for key, value in (
            ("name", name),
            ("metric", metric),
            ("baseline", baseline),
            ("metadata", dict(metadata) if metadata else None),
            ("confidence", confidence),
        ):
            if value is not None:
                body[key] = value
        return self._json("POST", "/tokens", json=body, expected=(201,), idempotent=False)

    def get_token(self, token_id: str) -> ServiceJSON:
        """GET /tokens/{token_id}."""
        return self._json("GET", _path("tokens", token_id))

    def list_tokens(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> ServiceJSON:
        """GET /tokens: one page, `{"items": [...], "next_cursor": ...}`."""
        params = {"status": status, "limit": limit, "cursor": cursor}
        return self._json("GET", "/tokens", params=params)

    def iter_tokens(
        self, *, status: str | None = None, limit: int | None = None
    ) -> Iterator[ServiceJSON]:
        """Every token, following `next_cursor` page by page."""
        cursor = None
        while True:
            page = self.list_tokens(status=status, limit=limit, cursor=cursor)
            for item in page.get("items") or []:
                if isinstance(item, dict):
                    yield ServiceJSON(item, text=json.dumps(item), status_code=200)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def update_token(self, token_id: str, **fields: Any) -> ServiceJSON:
        """PATCH /tokens/{token_id} (`status`: deployed or archived; `confidence`)."""
        return self._json("PATCH", _path("tokens", token_id), json=fields, idempotent=False)

    # Registrations -------------------------------------------------------------------------------

    def register_model(
        self,
        token_id: str,
        model_path: str | os.PathLike[str],
        *,
        metric: str,
        baseline: float,
        metric_value: float | None = None,
        predictions: str | os.PathLike[str] | None = None,
        min_improvement: float | None = None,
        model_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        pack_format: PackFormat = PackFormat.TAR_GZ,
        wait: bool = True,
        wait_timeout: float = DEFAULT_WAIT_SECONDS,
        on_update: Callable[[ServiceJSON], None] | None = None,
        progress: UploadProgress | None = None,
        **sdk_fields: str | None,
    ) -> ServiceJSON:
        """POST /models/{token_id}/register, then (with `wait`) the wait for an evaluation.

        `model_path` is a model file or an MLflow model folder (packed on the fly). The file is
        read once: hashed while it is sent, its sha256 sent after it. Transient failures are
        retried under one Idempotency-Key, so a model is never registered twice.

        Returns the registration: 201 `registered`, or 202 `evaluating` with `wait=False`.
        Raises RegistrationRefused when an evaluation ends `rejected` or `failed`, WaitTimedOut
        when it is still running after `wait_timeout` seconds, and ApiError for a refusal.
        `sdk_fields` are the optional fields the Hokusai SDK sends (SDK_FIELDS).
        """
        unknown = set(sdk_fields) - set(SDK_FIELDS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if metric_value is not None and predictions is not None:
            raise UsageError("give at most one of metric_value and predictions")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
            raise UsageError("an Idempotency-Key takes 1 to 255 characters")
        fields: dict[str, str] = {"metric": metric, "baseline": _number(baseline)}
        if metric_value is not None:
            fields["metric_value"] = _number(metric_value)
        if min_improvement is not None:
            fields["min_improvement"] = _number(min_improvement)
        if model_name:
            fields["model_name"] = model_name
        if tags:
            fields["tags"] = json.dumps(dict(tags))
        for name in SDK_FIELDS:
            value = sdk_fields.get(name)
            if value is not None:
                if len(value) > 255:
                    raise UsageError(f"{name} takes at most 255 characters")
                fields[name] = value
        key = idempotency_key or f"py-{secrets.token_hex(16)}"
        model = Path(model_path)
        with tempfile.TemporaryDirectory(prefix="hokusai-") as scratch:
            if model.is_dir():
                if progress is not None:
                    progress.note(f"packing {model} as .{pack_format.value}")
                model = pack_folder(model, Path(scratch), pack_format)
            response = self._send_registration(
                token_id, model, fields, Path(predictions) if predictions else None, key, progress
            )
        registration = json_of(response)
        if response.status_code == 201 or not wait:
            return registration
        return self.wait_for_registration(
            str(registration.get("registration_id")),
            first=registration,
            timeout=wait_timeout,
            on_update=on_update,
        )

    def _send_registration(
        self,
        token_id: str,
        model: Path,
        fields: dict[str, str],
        predictions: Path | None,
        key: str,
        progress: UploadProgress | None,
    ) -> httpx.Response:
        def on_pass(number: int) -> Advance | None:
            if progress is None:
                return None
            label = f"upload {model.name}" + (f" (try {number})" if number > 1 else "")
            return progress.task(label, model.stat().st_size)

        with HashingReader(model, on_pass=on_pass) as reader:
            files: list[tuple[str, Any]] = []
            predictions_file: BinaryIO | None = None
            try:
                if predictions is not None:
                    predictions_file = predictions.open("rb")
                    files.append(("predictions", (predictions.name, predictions_file, "text/csv")))
                files.append(("model_file", (model.name, reader, "application/octet-stream")))
                # After the file: the digest of what was just sent.
                files.append(("sha256", (None, cast(Any, DigestField(reader)), None)))
                try:
                    return self.request(
                        "POST",
                        _path("models", token_id, "register"),
                        data=fields,
                        files=files,
                        headers={"Idempotency-Key": key, "Content-Type": _multipart()},
                        expected=(201, 202),
                        idempotent=True,
                        read_timeout=max(self._transport.timeout, REGISTER_READ_TIMEOUT),
                    )
                except ConnectionFailed as e:
                    e.idempotency_key = key  # type: ignore[attr-defined]
                    raise
            finally:
                if predictions_file is not None:
                    predictions_file.close()

    def get_registration(self, registration_id: str) -> ServiceJSON:
        """GET /registrations/{registration_id} (failed, rejected and evaluating ones too)."""
        return self._json("GET", _path("registrations", registration_id))

    def list_registrations(self, token_id: str, *, limit: int | None = None) -> ServiceJSON:
        """GET /tokens/{token_id}/registrations, newest first."""
        return self._json(
            "GET", _path("tokens", token_id, "registrations"), params={"limit": limit}
        )

    def wait_for_registration(
        self,
        registration_id: str,
        *,
        timeout: float = DEFAULT_WAIT_SECONDS,
        first: ServiceJSON | None = None,
        on_update: Callable[[ServiceJSON], None] | None = None,
    ) -> ServiceJSON:
        """Poll a registration until it is final; return it when `registered`.

        Raises RegistrationRefused for `rejected` or `failed`, WaitTimedOut after `timeout`.
        """
        deadline = time.monotonic() + timeout
        registration = first or self.get_registration(registration_id)
        pause = POLL_FIRST
        while True:
            if on_update is not None:
                on_update(registration)
            status = registration.get("status")
            if status == "registered":
                return registration
            if status in FINAL_REGISTRATION_STATUSES:
                raise RegistrationRefused(dict(registration), api_url=self.api_url)
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimedOut(
                    f"registration {registration_id} is still {status} after {timeout:g} s",
                    registration,
                )
            time.sleep(min(pause, left))
            pause = min(pause * 1.5, POLL_MAX)
            registration = self.get_registration(registration_id)

    def get_receipt(self, registration_id: str) -> ServiceJSON:
        """GET /registrations/{registration_id}/receipt: `{"payload": {...}, "jws": "..."}`."""
        return self._json("GET", _path("registrations", registration_id, "receipt"))

    def get_jwks(self) -> ServiceJSON:
        """GET /.well-known/jwks.json: the public keys that sign receipts."""
        return self._json("GET", "/.well-known/jwks.json")

    def verify_receipt(
        self,
        registration_id: str | None = None,
        *,
        receipt: Mapping[str, Any] | str | None = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> VerifiedReceipt:
        """Verify a receipt (fetched by registration id, or given) against the service's JWKS
        (or `jwks`); raises ReceiptInvalid when it does not verify."""
        if receipt is None:
            if registration_id is None:
                raise UsageError("give a registration id or a receipt")
            receipt = self.get_receipt(registration_id)
        verified = verify_receipt(
            dict(receipt) if isinstance(receipt, Mapping) else receipt,
            dict(jwks) if jwks is not None else self.get_jwks(),
        )
        return verified

    # Benchmarks ----------------------------------------------------------------------------------

    def upload_benchmark(
        self,
        token_id: str,
        dataset: str | os.PathLike[str],
        *,
        label_column: str | None = None,
        progress: UploadProgress | None = None,
    ) -> ServiceJSON:
        """PUT /tokens/{token_id}/benchmark: a CSV of held-out rows with their labels, sealed.

        Returns the benchmark's metadata (never its rows): 201 the first time, 200 after.
        """
        path = Path(dataset)

        def on_pass(number: int) -> Advance | None:
            if progress is None:
                return None
            label = f"upload {path.name}" + (f" (try {number})" if number > 1 else "")
            return progress.task(label, path.stat().st_size)

        with HashingReader(path, on_pass=on_pass) as reader:
            data = {"label_column": label_column} if label_column else {}
            return self._json(
                "PUT",
                _path("tokens", token_id, "benchmark"),
                data=data,
                files=[("dataset", (path.name, reader, "text/csv"))],
                headers={"Content-Type": _multipart()},
                expected=(200, 201),
                idempotent=False,
            )

    def get_benchmark(self, token_id: str) -> ServiceJSON:
        """GET /tokens/{token_id}/benchmark: the sealed benchmark's metadata."""
        return self._json("GET", _path("tokens", token_id, "benchmark"))

    # Events --------------------------------------------------------------------------------------

    def list_events(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        event_type: str | None = None,
        token_id: str | None = None,
        wait: int | None = None,
    ) -> ServiceJSON:
        """GET /events: one page, `{"events": [...], "next_after": N}`; `wait` long-polls."""
        params = {
            "after": after,
            "limit": limit,
            "event_type": event_type,
            "token_id": token_id,
            "wait": wait,
        }
        return self._json(
            "GET",
            "/events",
            params=params,
            read_timeout=(wait or 0) + self._transport.timeout,
            retries=max(self._transport.retries, EVENTS_MAX_FAILURES) if wait else None,
        )

    def watch_events(
        self,
        *,
        after: int = 0,
        event_type: str | None = None,
        token_id: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every event after `after` as it commits, long-polling the feed; ends after `timeout`
        seconds (never, without one). No event is missed or repeated."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            wait = EVENTS_WAIT_SECONDS
            if deadline is not None:
                wait = max(0, min(wait, int(deadline - time.monotonic() + 0.999)))
            asked = time.monotonic()
            page = self.list_events(
                after=after, event_type=event_type, token_id=token_id, wait=wait
            )
            events = [e for e in page.get("events") or [] if isinstance(e, dict)]
            yield from events
            next_after = page.get("next_after")
            if isinstance(next_after, int) and next_after >= after:
                after = next_after
            if not events and wait and time.monotonic() - asked < 1.0:
                # A feed that answers at once instead of holding the request: do not spin.
                time.sleep(1.0)
            if deadline is not None and time.monotonic() >= deadline:
                return

    # Webhooks ------------------------------------------------------------------------------------

    def create_webhook(
        self,
        url: str,
        *,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
        payload_format: str | None = None,
        secret: str | None = None,
    ) -> ServiceJSON:
        """POST /webhooks; the answer holds the signing secret, shown only this once."""
        body: dict[str, Any] = {"url": url, "event_types": list(event_types or ["*"])}
        for key, value in (
            ("description", description),
            ("payload_format", payload_format),
            ("secret", secret),
        ):
            if value is not None:
                body[key] = value
        return self._json("POST", "/webhooks", json=body, expected=(201,), idempotent=False)

    def list_webhooks(self) -> ServiceJSON:
        """GET /webhooks."""
        return self._json("GET", "/webhooks")

    def get_webhook(self, webhook_id: str) -> ServiceJSON:
        """GET /webhooks/{webhook_id}."""
        return self._json("GET", _path("webhooks", webhook_id))

    def update_webhook(self, webhook_id: str, **fields: Any) -> ServiceJSON:
        """PATCH /webhooks/{webhook_id} (`url`, `event_types`, `active`, `payload_format`, ...)."""
        return self._json("PATCH", _path("webhooks", webhook_id), json=fields, idempotent=False)

    def delete_webhook(self, webhook_id: str) -> httpx.Response:
        """DELETE /webhooks/{webhook_id}."""
        return self.request(
            "DELETE", _path("webhooks", webhook_id), expected=(200, 204), idempotent=False
        )

    def list_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int | None = None
    ) -> ServiceJSON:
        """GET /webhooks/{webhook_id}/deliveries, newest first."""
        return self._json(
            "GET",
            _path("webhooks", webhook_id, "deliveries"),
            params={"status": status, "limit": limit},
        )

    def retry_delivery(self, webhook_id: str, delivery_id: str) -> httpx.Response:
        """POST /webhooks/{id}/deliveries/{delivery_id}/retry: send it again now."""
        return self.request(
            "POST",
            _path("webhooks", webhook_id, "deliveries", delivery_id, "retry"),
            expected=(202,),
            idempotent=False,
        )

    def test_webhook(self, webhook_id: str) -> httpx.Response:
        """POST /webhooks/{webhook_id}/test: a `ping` event to this endpoint alone."""
        return self.request(
            "POST", _path("webhooks", webhook_id, "test"), expected=(202,), idempotent=False
        )
