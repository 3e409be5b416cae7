"""HokusaiClient from Python: return values, errors, retries, the one-pass upload, the wait for an
evaluation. HTTP goes to real loopback servers answering from a script."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hokusai_client import (
    ApiError,
    AuthError,
    Conflict,
    ConnectionFailed,
    HokusaiClient,
    InvalidRequest,
    NotFound,
    RegistrationRefused,
    ServiceUnavailable,
    UsageError,
)
from hokusai_client.transport import RetryNotice
from tests.cli.payloads import EVALUATING, REGISTERED, REJECTED
from tests.cli.servers import Step, scripted_server
from tests.mlflow_server import free_port

PROBLEM = {"Content-Type": "application/problem+json"}


def problem(status: int, code: str) -> dict[str, object]:
    return {"status": status, "code": code, "title": "T", "detail": "d", "request_id": "r"}


class TestAnswers:
    def test_returns_the_json_with_the_body_as_it_came(self) -> None:
        raw = b'{"token_id": "XRAY",   "status": "draft"}'
        with scripted_server((200, {}, raw)) as server, HokusaiClient(server.url, "k") as client:
            token = client.get_token("xray")
        assert token == {"token_id": "XRAY", "status": "draft"}
        assert token.text == raw.decode() and token.status_code == 200
        assert server.requests[0].headers["authorization"] == "Bearer k"

    def test_iter_tokens_follows_every_page(self) -> None:
        pages: tuple[Step, ...] = (
            (200, {}, {"items": [{"token_id": "A"}], "next_cursor": "c2"}),
            (200, {}, {"items": [{"token_id": "B"}], "next_cursor": None}),
        )
        with scripted_server(*pages) as server, HokusaiClient(server.url, "k") as client:
            ids = [t["token_id"] for t in client.iter_tokens(status="draft")]
        assert ids == ["A", "B"]
        assert [r.path for r in server.requests] == [
            "/tokens?status=draft",
            "/tokens?status=draft&cursor=c2",
        ]

    @pytest.mark.parametrize(
        ("status", "code", "kind"),
        [
            (401, "unauthorized", AuthError),
            (403, "forbidden", AuthError),
            (404, "token_not_found", NotFound),
            (409, "token_not_registrable", Conflict),
            (422, "validation_error", InvalidRequest),
            (500, "internal_error", ServiceUnavailable),
        ],
    )
    def test_a_refusal_is_an_api_error_of_its_kind(
        self, status: int, code: str, kind: type[ApiError]
    ) -> None:
        with (
            scripted_server((status, PROBLEM, problem(status, code))) as server,
            HokusaiClient(server.url, "k", retries=0) as client,
            pytest.raises(kind) as raised,
        ):
            client.get_token("X")
        assert raised.value.code == code and raised.value.status == status
        assert raised.value.problem["request_id"] == "r"

    def test_refuses_a_url_that_is_not_http(self) -> None:
        with pytest.raises(UsageError):
            HokusaiClient("ftp://example.com", "k")


class TestRetries:
    def test_tells_each_retry_and_honours_retry_after(self) -> None:
        busy = (503, {**PROBLEM, "Retry-After": "0"}, problem(503, "mlflow_unavailable"))
        notices: list[RetryNotice] = []
        with (
            scripted_server(busy, busy, (200, {}, {"token_id": "X"})) as server,
            HokusaiClient(server.url, "k", retries=3, on_retry=notices.append) as client,
        ):
            assert client.get_token("X") == {"token_id": "X"}
        assert [(n.attempt, n.attempts, n.wait, n.exact) for n in notices] == [
            (1, 4, 0.0, True),
            (2, 4, 0.0, True),
        ]
        assert len(server.requests) == 3

    def test_an_unreachable_service_is_connection_failed_after_the_retries(self) -> None:
        notices: list[RetryNotice] = []
        url = f"http://127.0.0.1:{free_port()}"
        with (
            HokusaiClient(url, "k", retries=1, on_retry=notices.append) as client,
            pytest.raises(ConnectionFailed) as raised,
        ):
            client.list_tokens()
        assert raised.value.reached is False
        assert len(notices) == 1 and not notices[0].exact
        assert "ConnectError" in notices[0].reason

    def test_a_post_the_service_may_have_received_is_not_repeated(self) -> None:
        # A server that closes the connection after reading the request: the answer never comes.
        import socket
        import threading

        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        seen: list[bytes] = []

        def serve() -> None:
            for _ in range(2):
                listener.settimeout(2)
                try:
                    conn, _addr = listener.accept()
                except OSError:  # a timeout: no second attempt came
                    return
                seen.append(conn.recv(65536))
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                HokusaiClient(f"http://127.0.0.1:{port}", "k", retries=3) as client,
                pytest.raises(ConnectionFailed) as raised,
            ):
                client.create_token("X")
        finally:
            listener.close()
            thread.join(timeout=10)
        assert raised.value.reached is True
        assert len(seen) == 1


class TestRegister:
    def test_one_pass_upload_with_progress_and_the_digest_after_the_file(
        self, tmp_path: Path
    ) -> None:
        model = tmp_path / "model.pkl"
        model.write_bytes(bytes(range(256)) * 12_000)  # about 3 MiB: several 1 MiB reads
        passes: list[tuple[str, int]] = []
        sent: list[int] = []

        class Progress:
            def task(self, description: str, total: int) -> object:
                passes.append((description, total))
                return sent.append

            def note(self, text: str) -> None:
                pass

        with (
            scripted_server((201, {}, REGISTERED)) as server,
            HokusaiClient(server.url, "k") as client,
        ):
            registration = client.register_model(
                "XRAY",
                model,
                metric="auroc",
                baseline=0.82,
                metric_value=0.9,
                progress=Progress(),  # type: ignore[arg-type]
                proposal_identifier="p-1",
            )
        assert registration["status"] == "registered"
        assert passes == [("upload model.pkl", model.stat().st_size)]
        assert sum(sent) == model.stat().st_size
        assert max(sent) == 1024 * 1024  # large reads, not httpx's 64 KiB
        request = server.requests[0]
        assert request.size == int(request.headers["content-length"])
        boundary = request.headers["content-type"].split("boundary=", 1)[1].encode()
        names = [
            part.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            for part in request.head.split(b"--" + boundary)[1:]
        ]
        assert names == ["metric", "baseline", "metric_value", "proposal_identifier", "model_file"]
        digest = hashlib.sha256(model.read_bytes()).hexdigest().encode()
        assert request.tail.endswith(
            b'name="sha256"\r\n\r\n' + digest + b"\r\n--" + boundary + b"--\r\n"
        )
        assert server.requests[0].headers["idempotency-key"].startswith("py-")

    def test_waits_and_raises_for_a_refused_evaluation(self, tmp_path: Path) -> None:
        model = tmp_path / "model.pkl"
        model.write_bytes(b"\x80\x04K\x01.")
        updates: list[str] = []
        with (
            scripted_server((202, {}, EVALUATING), (200, {}, REJECTED)) as server,
            HokusaiClient(server.url, "k") as client,
            pytest.raises(RegistrationRefused) as raised,
        ):
            client.register_model(
                "XRAY",
                model,
                metric="auroc",
                baseline=0.82,
                on_update=lambda r: updates.append(str(r["status"])),
            )
        assert raised.value.code == "evaluation_failed" and raised.value.status == 422
        assert raised.value.registration["registration_id"] == "r-9"
        assert updates == ["evaluating", "rejected"]

    def test_refuses_both_a_value_and_predictions(self, tmp_path: Path) -> None:
        with HokusaiClient("http://127.0.0.1:9", "k") as client, pytest.raises(UsageError):
            client.register_model(
                "X",
                tmp_path,
                metric="auroc",
                baseline=0.5,
                metric_value=0.6,
                predictions=tmp_path / "p.csv",
            )
