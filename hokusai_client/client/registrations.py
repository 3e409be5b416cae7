"""Model registration: the upload (`POST /models/{token_id}/register`), reading registrations
back, and the wait for an evaluation to end."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx

from hokusai_client.client.base import (
    DEFAULT_WAIT_SECONDS,
    POLL_FIRST,
    POLL_MAX,
    REGISTER_READ_TIMEOUT,
    ClientBase,
    UploadProgress,
    _multipart,
    _path,
)
from hokusai_client.constants import FINAL_REGISTRATION_STATUSES
from hokusai_client.errors import (
    ConnectionFailed,
    HokusaiError,
    RegistrationRefused,
    UsageError,
)
from hokusai_client.transport import ServiceJSON, json_of
from hokusai_client.uploads import Advance, DigestField, HashingReader, PackFormat, pack_folder

# A registration's optional fields that the Hokusai SDK also sends (strings of at most 255).
SDK_FIELDS = (
    "proposal_identifier",
    "eval_spec",
    "scorer_ref",
    "primary_metric",
    "benchmark_spec_id",
)


class WaitTimedOut(HokusaiError):
    """A registration still evaluating when the wait ran out; `registration` is its last JSON."""

    def __init__(self, message: str, registration: ServiceJSON) -> None:
        super().__init__(message)
        self.registration = registration


def _number(value: float) -> str:
    return repr(float(value))


def _form_fields(
    metric: str,
    baseline: float,
    metric_value: float | None,
    min_improvement: float | None,
    model_name: str | None,
    tags: Mapping[str, str] | None,
    sdk_fields: Mapping[str, str | None],
) -> dict[str, str]:
    """A registration's form fields besides its files, as the service reads them."""
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
    return fields


class RegistrationsAPI(ClientBase):
    """Registering a model, reading registrations, waiting for an evaluation."""

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
        fields = _form_fields(
            metric, baseline, metric_value, min_improvement, model_name, tags, sdk_fields
        )
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
