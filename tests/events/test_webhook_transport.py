"""The webhook transport over real sockets on 127.0.0.1: httpx errors, vetting, connection reuse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpcore
import httpx
import pytest

from app.events.webhooks.ssrf import BlockedAddress, VettingBackend
from app.events.webhooks.transport import VettedTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that answers with whatever bytes `handler` writes."""
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return head


def client(
    *, allow_private: bool = True, resolver: object = None, timeout: float = 2.0
) -> httpx.AsyncClient:
    transport = VettedTransport(
        backend=VettingBackend(allow_private=allow_private, resolver=resolver),  # type: ignore[arg-type]
        ssl_context=httpx.create_ssl_context(),
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=30),
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


class TestAnswers:
    async def test_status_headers_and_body_come_through(self) -> None:
        seen: list[bytes] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 202 Accepted\r\nX-Test: yes\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

        async with raw_server(answer) as url, client() as http:
            response = await http.post(url, content=b'{"a":1}', headers={"X-Sent": "1"})
        assert response.status_code == 202
        assert response.headers["X-Test"] == "yes"
        assert response.content == b"ok"
        assert seen[0].startswith(b"POST /hook HTTP/1.1\r\n")
        assert b"\r\nX-Sent: 1\r\n" in seen[0]

    async def test_keeps_the_connection_alive_between_requests(self) -> None:
        connections = 0

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            for _ in range(3):
                await read_request(reader)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()

        async with raw_server(answer) as url, client() as http:
            for _ in range(3):
                assert (await http.post(url, content=b"{}")).status_code == 204
        assert connections == 1


class TestErrorsAreHttpx:
    async def test_refused_connection_is_connect_error(self) -> None:
        async with raw_server(read_request) as url:  # type: ignore[arg-type]
            pass  # closed again: nothing listens on the port now
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(url, content=b"{}")

    async def test_silent_receiver_is_read_timeout(self) -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await asyncio.sleep(5)

        async with raw_server(silent) as url, client(timeout=0.3) as http:
            with pytest.raises(httpx.ReadTimeout) as caught:
                await http.post(url, content=b"{}")
        assert isinstance(caught.value.__cause__, httpcore.ReadTimeout)

    async def test_hang_up_before_an_answer_is_remote_protocol_error(self) -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)

        async with raw_server(hang_up) as url, client() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post(url, content=b"{}")

    async def test_body_cut_short_is_an_httpx_error_while_streaming(self) -> None:
        async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()

        async with (
            raw_server(cut) as url,
            client() as http,
            http.stream("POST", url, content=b"{}") as response,
        ):
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                async for _ in response.aiter_raw():
                    pass


class TestVetting:
    async def test_blocked_address_is_raised_unchanged_and_nothing_connects(self) -> None:
        connections = 0

        async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1

        async def resolver(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        async with raw_server(count) as url:
            port = httpx.URL(url).port
            async with client(allow_private=False, resolver=resolver) as http:
                with pytest.raises(BlockedAddress) as caught:
                    await http.post(f"http://hooks.example.test:{port}/hook", content=b"{}")
        assert caught.value.reason == "loopback"
        assert connections == 0

    async def test_connects_to_the_resolved_address_with_the_hostname_in_host(self) -> None:
        seen: list[bytes] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

        async def resolver(host: str, port: int) -> list[str]:
            assert host == "hooks.example.test"
            return ["127.0.0.1"]

        async with raw_server(answer) as url:
            port = httpx.URL(url).port
            async with client(resolver=resolver) as http:
                response = await http.post(f"http://hooks.example.test:{port}/hook", content=b"{}")
        assert response.status_code == 204
        assert f"\r\nHost: hooks.example.test:{port}\r\n".encode() in seen[0]

    async def test_closing_the_client_closes_its_connections(self) -> None:
        closed = asyncio.Event()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
            if not await reader.read(1):  # end of stream: the client closed the connection
                closed.set()

        async with raw_server(answer) as url:
            async with client() as http:
                await http.post(url, content=b"{}")
                assert not closed.is_set()
            await asyncio.wait_for(closed.wait(), 5)
