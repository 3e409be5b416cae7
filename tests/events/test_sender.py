"""The webhook sender against a real HTTP receiver on 127.0.0.1: signing, answers, SSRF policy."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterable
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.events.webhooks.schemas import generate_secret
from app.events.webhooks.sender import (
    EXCERPT_CHARS,
    MAX_READ_BYTES,
    WebhookSender,
    encode_body,
    parse_retry_after,
    signature_headers,
)
from app.events.webhooks.ssrf import BlockedAddress, VettingBackend, blocked_reason
from tests.webhook_receiver import Reply, WebhookReceiver

SECRET = generate_secret()


def make_envelope(*, event_type: str = "model_registered", **payload: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "source": "hokusai-ml-platform",
        "timestamp": "2026-01-02T03:04:05.678Z",
        "sequence": 7,
        "token_id": "XRAY",
        "payload": {"token_id": "XRAY", "note": "naïve ✓", **payload},
    }


def stub_resolver(table: dict[str, list[str]]) -> Any:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(secret=SECRET) as running:
        yield running


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    running = WebhookSender(allow_private=True, require_https=False, timeout=2.0)
    yield running
    await running.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestSignatureHeaders:
    def test_matches_the_standard_webhooks_example(self) -> None:
        headers = signature_headers(
            secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            event_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
            event_type="ping",
            timestamp=1614265330,
            body=b'{"test": 2432232314}',
        )
        assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        assert headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek"
        assert headers["webhook-timestamp"] == "1614265330"

    def test_legacy_signature_is_hmac_of_body_keyed_with_whole_secret(self) -> None:
        body = encode_body(make_envelope())
        headers = signature_headers(
            secret=SECRET, event_id="e1", event_type="model_registered", timestamp=1, body=body
        )
        expected = hmac.new(SECRET.encode("utf-8"), body, hashlib.sha256).hexdigest()
        assert headers["X-Hokusai-Signature"] == f"sha256={expected}"
        assert headers["X-Hokusai-Event"] == "model_registered"
        assert headers["X-Hokusai-Idempotency-Key"] == "e1"
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"] == "hokusai-webhooks/1"

    def test_secret_that_is_not_base64_still_signs(self) -> None:
        body = b"{}"
        headers = signature_headers(
            secret="plain-site-secret!", event_id="e", event_type="ping", timestamp=5, body=body
        )
        expected = hmac.new(b"plain-site-secret!", body, hashlib.sha256).hexdigest()
        assert headers["X-Hokusai-Signature"] == f"sha256={expected}"
        assert headers["webhook-signature"].startswith("v1,")

    def test_body_is_compact_json(self) -> None:
        assert encode_body({"a": 1, "b": [1, 2]}) == b'{"a":1,"b":[1,2]}'


def legacy(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class TestRotatedSignatures:
    OLD = generate_secret()
    NEW = generate_secret()

    def headers(self, body: bytes, *, previous: str | None) -> dict[str, str]:
        return signature_headers(
            secret=self.NEW,
            event_id="msg_1",
            event_type="model_registered",
            timestamp=int(dt.datetime.now(dt.UTC).timestamp()),
            body=body,
            previous_secret=previous,
        )

    def test_both_secrets_verify_during_the_overlap(self) -> None:
        body = encode_body(make_envelope())
        headers = self.headers(body, previous=self.OLD)
        signatures = headers["webhook-signature"].split(" ")
        assert len(signatures) == 2 and all(sig.startswith("v1,") for sig in signatures)
        assert Webhook(self.NEW).verify(body, headers) == json.loads(body)
        assert Webhook(self.OLD).verify(body, headers) == json.loads(body)
        assert headers["X-Hokusai-Signature"] == legacy(self.NEW, body)
        assert headers["X-Hokusai-Signature-Previous"] == legacy(self.OLD, body)

    def test_new_signature_comes_first_and_matches_a_single_signing(self) -> None:
        body = b'{"a":1}'
        alone = self.headers(body, previous=None)
        both = self.headers(body, previous=self.OLD)
        assert both["webhook-signature"].split(" ")[0] == alone["webhook-signature"]

    def test_without_previous_secret_only_the_new_one_signs(self) -> None:
        body = encode_body(make_envelope())
        headers = self.headers(body, previous=None)
        assert " " not in headers["webhook-signature"]
        assert "X-Hokusai-Signature-Previous" not in headers
        Webhook(self.NEW).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(self.OLD).verify(body, headers)

    def test_a_third_secret_verifies_neither(self) -> None:
        body = encode_body(make_envelope())
        headers = self.headers(body, previous=self.OLD)
        stranger = generate_secret()
        with pytest.raises(WebhookVerificationError):
            Webhook(stranger).verify(body, headers)
        assert legacy(stranger, body) not in (
            headers["X-Hokusai-Signature"],
            headers["X-Hokusai-Signature-Previous"],
        )

    def test_previous_secret_that_is_not_base64_still_signs(self) -> None:
        body = b"{}"
        headers = self.headers(body, previous="plain-site-secret!")
        assert headers["X-Hokusai-Signature-Previous"] == legacy("plain-site-secret!", body)
        assert len(headers["webhook-signature"].split(" ")) == 2
        Webhook(self.NEW).verify(body, headers)

    async def test_send_carries_both_signatures(self, sender: WebhookSender) -> None:
        envelope = make_envelope()
        async with WebhookReceiver(secret=self.OLD) as old_receiver:
            result = await sender.send(
                url=old_receiver.url, secret=self.NEW, envelope=envelope, previous_secret=self.OLD
            )
            assert result.ok
            (request,) = await old_receiver.wait_for(1)
        assert request.signature_ok, request.verify_error
        assert request.headers["x-hokusai-signature"] == legacy(self.NEW, request.body)
        Webhook(self.NEW).verify(request.body, request.headers)


class TestRetryAfter:
    NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("120", 120.0),
            (" 0 ", 0.0),
            ("-5", 0.0),
            ("999999", 86400.0),
            ("Thu, 01 Jan 2026 12:01:30 GMT", 90.0),
            ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
            ("Sat, 01 Jan 2028 00:00:00 GMT", 86400.0),
            ("soon", None),
            ("", None),
            (None, None),
            ("nan", None),
        ],
    )
    def test_parses_seconds_and_http_dates(self, value: str | None, expected: float | None) -> None:
        assert parse_retry_after(value, now=self.NOW) == expected


class TestSend:
    async def test_delivers_signed_envelope(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        envelope = make_envelope()
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=envelope)
        assert result.ok and result.status_code == 200 and result.error is None
        assert result.response_excerpt == '{"received":true}'
        assert not result.gone and not result.blocked and result.retry_after is None
        assert result.duration_ms > 0
        (request,) = await receiver.wait_for(1)
        assert request.method == "POST" and request.path == "/hook"
        assert request.signature_ok, request.verify_error
        assert request.body == encode_body(envelope)
        assert request.json() == envelope
        assert request.headers["webhook-id"] == envelope["event_id"]
        assert request.headers["x-hokusai-idempotency-key"] == envelope["event_id"]
        assert request.headers["x-hokusai-event"] == "model_registered"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"] == "hokusai-webhooks/1"

    async def test_reuses_the_connection(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        for _ in range(3):
            result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
            assert result.ok
        assert len(receiver.requests) == 3
        assert receiver.connections == 1

    async def test_server_error_is_a_failure(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        receiver.script(Reply.with_status(500, b"database down"))
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert not result.ok and not result.gone
        assert result.status_code == 500
        assert result.error == "HTTP 500 Internal Server Error"
        assert result.response_excerpt == "database down"

    async def test_gone_marks_the_endpoint_for_disabling(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        receiver.script(Reply.gone())
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert not result.ok and result.gone and result.status_code == 410

    async def test_redirect_is_not_followed(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        target = receiver.url_for("/elsewhere")
        receiver.script(Reply.redirect(target))
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert not result.ok and result.status_code == 302
        assert result.error == f"redirect to {target} not followed"
        receiver.script(Reply.ok())  # a followed redirect would have arrived by the next request
        assert (await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())).ok
        assert [r.path for r in receiver.requests] == ["/hook", "/hook"]

    async def test_retry_after_is_reported(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        receiver.script(Reply.retry_after("42", status=429))
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert result.status_code == 429 and result.retry_after == 42.0
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=600)
        receiver.script(Reply.retry_after(format_datetime(when, usegmt=True)))
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert result.status_code == 503
        assert result.retry_after is not None and 595 <= result.retry_after <= 600

    async def test_slow_receiver_times_out(self, receiver: WebhookReceiver) -> None:
        sender = WebhookSender(allow_private=True, require_https=False, timeout=0.5)
        try:
            receiver.script(Reply.slow(5))
            result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        finally:
            await sender.aclose()
        assert not result.ok and result.status_code is None
        assert result.error is not None and result.error.startswith("timeout")
        assert 400 <= result.duration_ms < 2000

    async def test_hang_up_is_a_failure(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        receiver.script(Reply.hang_up())
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert not result.ok and result.status_code is None
        assert result.error is not None and result.error.startswith("connection closed")

    async def test_closed_port_is_connection_refused(self, sender: WebhookSender) -> None:
        url = f"http://127.0.0.1:{free_port()}/hook"
        result = await sender.send(url=url, secret=SECRET, envelope=make_envelope())
        assert not result.ok and not result.blocked
        assert result.error == "connection refused"

    async def test_unresolvable_host_is_a_failure(self) -> None:
        sender = WebhookSender(allow_private=True, require_https=False, resolver=stub_resolver({}))
        try:
            result = await sender.send(
                url="http://nowhere.example.test/", secret=SECRET, envelope=make_envelope()
            )
        finally:
            await sender.aclose()
        assert not result.ok and not result.blocked
        assert result.error is not None and result.error.startswith("cannot resolve")

    async def test_excerpt_is_cut_short_and_kept_to_one_printable_line(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        receiver.script(Reply.with_status(400, "é".encode() * 200_000))
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert result.status_code == 400
        assert EXCERPT_CHARS == 200
        assert result.response_excerpt == "é" * EXCERPT_CHARS
        receiver.script(Reply.with_status(500, b"line 1\r\n\x1b[31mred\x00\xe2\x80\xae\tend\n" * 3))
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert result.response_excerpt is not None
        assert result.response_excerpt.isprintable() and "\x1b" not in result.response_excerpt
        assert result.response_excerpt.startswith("line 1 [31mred")
        receiver.script(Reply.ok(b"\xff\xfebad bytes"))
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert result.ok and result.response_excerpt == "\ufffd\ufffdbad bytes"

    async def test_huge_answer_is_not_buffered(
        self, sender: WebhookSender, receiver: WebhookReceiver
    ) -> None:
        receiver.script(Reply.ok(b"x" * (MAX_READ_BYTES * 64)))
        result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        assert result.ok and result.response_excerpt == "x" * EXCERPT_CHARS
        # The unread rest cannot be reused, so the next attempt opens a new connection.
        assert (await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())).ok
        assert receiver.connections == 2


class TestSsrfPolicy:
    @pytest.mark.parametrize(
        "address",
        ["10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "127.0.0.1", "::1", "100.64.1.1"],
    )
    async def test_blocks_hostname_resolving_to_internal_address(
        self, receiver: WebhookReceiver, address: str
    ) -> None:
        resolver = stub_resolver({"hooks.example.test": [address]})
        sender = WebhookSender(allow_private=False, require_https=False, resolver=resolver)
        try:
            result = await sender.send(
                url=receiver.url_for("/hook", host="hooks.example.test"),
                secret=SECRET,
                envelope=make_envelope(),
            )
        finally:
            await sender.aclose()
        assert result.blocked and not result.ok and result.status_code is None
        assert result.error is not None
        assert result.error.startswith(f"blocked: {ipaddress.ip_address(address)} is ")
        assert resolver.calls == ["hooks.example.test"]
        assert receiver.connections == 0

    async def test_blocks_when_any_resolved_address_is_internal(
        self, receiver: WebhookReceiver
    ) -> None:
        resolver = stub_resolver({"hooks.example.test": ["93.184.216.34", "10.0.0.1"]})
        sender = WebhookSender(allow_private=False, require_https=False, resolver=resolver)
        try:
            result = await sender.send(
                url="http://hooks.example.test/hook", secret=SECRET, envelope=make_envelope()
            )
        finally:
            await sender.aclose()
        assert result.blocked and result.error == "blocked: 10.0.0.1 is private"

    async def test_blocks_internal_ip_literal_and_localhost(
        self, receiver: WebhookReceiver
    ) -> None:
        resolver = stub_resolver({})
        sender = WebhookSender(allow_private=False, require_https=False, resolver=resolver)
        try:
            for url in (
                receiver.url,
                receiver.url_for("/hook", host="[::ffff:7f00:1]"),
                receiver.url_for("/hook", host="localhost"),
            ):
                result = await sender.send(url=url, secret=SECRET, envelope=make_envelope())
                assert result.blocked, url
        finally:
            await sender.aclose()
        assert resolver.calls == []
        assert receiver.connections == 0

    async def test_refuses_plain_http_when_https_is_required(
        self, receiver: WebhookReceiver
    ) -> None:
        sender = WebhookSender(allow_private=True, require_https=True)
        try:
            result = await sender.send(url=receiver.url, secret=SECRET, envelope=make_envelope())
        finally:
            await sender.aclose()
        assert result.blocked and result.error == "blocked: https is required"
        assert receiver.connections == 0

    async def test_connects_to_the_vetted_address_with_the_hostname(
        self, receiver: WebhookReceiver
    ) -> None:
        resolver = stub_resolver({"hooks.example.test": ["127.0.0.1"]})
        sender = WebhookSender(allow_private=True, require_https=False, resolver=resolver)
        try:
            url = receiver.url_for("/hook", host="hooks.example.test")
            result = await sender.send(url=url, secret=SECRET, envelope=make_envelope())
        finally:
            await sender.aclose()
        assert result.ok, result.error
        (request,) = receiver.requests
        assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
        assert request.signature_ok

    async def test_backend_never_connects_to_a_blocked_address(self) -> None:
        class RecordingBackend(httpcore.AsyncNetworkBackend):
            def __init__(self) -> None:
                self.connects: list[str] = []

            async def connect_tcp(
                self,
                host: str,
                port: int,
                timeout: float | None = None,
                local_address: str | None = None,
                socket_options: Iterable[Any] | None = None,
            ) -> httpcore.AsyncNetworkStream:
                self.connects.append(host)
                raise httpcore.ConnectError("not in tests")

        inner = RecordingBackend()
        backend = VettingBackend(
            allow_private=False,
            resolver=stub_resolver({"a.test": ["169.254.169.254"], "b.test": ["8.8.8.8"]}),
            inner=inner,
        )
        with pytest.raises(BlockedAddress):
            await backend.connect_tcp("a.test", 80)
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp("b.test", 80)
        # Only the public address was ever handed to the real network backend, by IP.
        assert inner.connects == ["8.8.8.8"]

    @pytest.mark.parametrize(
        "address",
        [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2001:db8::1",
        ],
    )
    def test_internal_addresses_are_blocked(self, address: str) -> None:
        assert blocked_reason(ipaddress.ip_address(address)) is not None

    @pytest.mark.parametrize(
        "address",
        ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
    )
    def test_public_addresses_are_allowed(self, address: str) -> None:
        assert blocked_reason(ipaddress.ip_address(address)) is None


def _tls_material(tmp_path: Path, hostname: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA, a certificate for `hostname` signed by it; (server context, client context)."""
    now = dt.datetime.now(dt.UTC)

    def build(
        subject: str, issuer: str, key: Any, signer: Any, *, ca: bool, names: Iterable[str] = ()
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name) for name in names]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("test ca", "test ca", ca_key, ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = build(hostname, "test ca", leaf_key, ca_key, ca=False, names=[hostname])
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(
        leaf_cert.public_bytes(pem)
        + leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem")
    client = ssl.create_default_context(cadata=ca_cert.public_bytes(pem).decode())
    return server, client


class TestTls:
    async def test_verifies_certificate_against_hostname_not_address(self, tmp_path: Path) -> None:
        server_tls, client_tls = _tls_material(tmp_path, "hooks.example.test")
        resolver = stub_resolver(
            {"hooks.example.test": ["127.0.0.1"], "impostor.example.test": ["127.0.0.1"]}
        )
        sender = WebhookSender(
            allow_private=True, require_https=True, resolver=resolver, ssl_context=client_tls
        )
        try:
            async with WebhookReceiver(secret=SECRET, ssl_context=server_tls) as receiver:
                good = await sender.send(
                    url=receiver.url_for("/hook", host="hooks.example.test"),
                    secret=SECRET,
                    envelope=make_envelope(),
                )
                bad = await sender.send(
                    url=receiver.url_for("/hook", host="impostor.example.test"),
                    secret=SECRET,
                    envelope=make_envelope(),
                )
                requests = receiver.requests
        finally:
            await sender.aclose()
        assert good.ok, good.error
        assert len(requests) == 1 and requests[0].signature_ok
        assert not bad.ok and bad.status_code is None
        assert bad.error is not None
        assert bad.error.startswith("tls certificate rejected: Hostname mismatch")
