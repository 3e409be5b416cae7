"""Which addresses a webhook may reach, and a network backend that connects only to vetted ones.

A receiver's URL is checked when it is saved, but DNS can answer differently later, or even per
query (DNS rebinding). So the sender resolves the host itself, checks every address it gets, and
connects to exactly the address it checked. TLS still verifies the certificate against the
hostname (httpcore passes the URL's host as SNI), and the Host header keeps the hostname too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import structlog

log = structlog.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the operating system's resolver, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_ip(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why a webhook must not connect to `address`; None for a publicly routable one."""
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_reason(address)
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        kind, ipv4 = embedded
        reason = _ipv4_reason(ipv4)
        if reason is not None:
            return f"{reason} ({kind} {ipv4})"
        if kind != "IPv4-compatible":
            return None
        return "reserved (IPv4-compatible, deprecated)"
    return _ipv6_reason(address)


def _ipv4_reason(address: ipaddress.IPv4Address) -> str | None:
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address in _CGNAT, "shared address space (CGNAT)"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _ipv6_reason(address: ipaddress.IPv6Address) -> str | None:
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_site_local, "site-local"),
        (address.is_multicast, "multicast"),
        (address in _NAT64_LOCAL, "local-use NAT64"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, NAT64, 6to4), if any."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        return "NAT64", low32
    # `::` and `::1` are IPv6's own unspecified and loopback addresses, judged as such.
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return "IPv4-compatible", low32
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


def host_reason(host: str) -> str | None:
    """Why a URL's host is refused before any lookup: a bad IP literal, or a localhost name."""
    address = parse_ip(host)
    if address is not None:
        reason = blocked_reason(address)
        return f"{address} is {reason}" if reason else None
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host} is loopback"
    return None


class BlockedAddress(Exception):
    """The target resolved to an address webhooks may not reach; nothing was connected."""

    def __init__(self, host: str, address: IPAddress, reason: str) -> None:
        super().__init__(f"{address} is {reason}")
        self.host = host
        self.address = address
        self.reason = reason


class VettingBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, vets, then connects to the vetted address.

    Every new connection resolves the host again, so a later DNS answer is vetted as well; a
    kept-alive connection stays with the address it was opened to.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow_private = allow_private
        self._resolve = resolver or system_resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def vetted_addresses(self, host: str, port: int) -> list[str]:
        """The addresses to try, in order; `BlockedAddress` if any of them is off limits."""
        literal = parse_ip(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                raw = await self._resolve(host, port)
            except OSError as e:
                raise httpcore.ConnectError(
                    f"cannot resolve {host}: {e.strerror or e}".rstrip()
                ) from e
            try:
                addresses = [ipaddress.ip_address(item) for item in raw]
            except ValueError as e:
                raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from e
            if not addresses:
                raise httpcore.ConnectError(f"cannot resolve {host}: no address")
        if not self.allow_private:
            for address in addresses:
                reason = blocked_reason(address)
                if reason is not None:
                    log.warning(
                        "webhook_target_blocked", host=host, address=str(address), reason=reason
                    )
                    raise BlockedAddress(host, address, reason)
        return [str(address) for address in addresses]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failures: list[Exception] = []
        for address in await self.vetted_addresses(host, port):
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                failures.append(e)
        last = failures[-1]
        if isinstance(last, httpcore.ConnectTimeout):
            raise last
        raise httpcore.ConnectError(_os_reason(last)) from last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks do not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def describe_connect_error(error: BaseException) -> str:
    """A short reason for a failed connection: TLS trouble, a refusal, else the error's words."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"tls certificate rejected: {current.verify_message}"
        if isinstance(current, ssl.SSLError):
            return f"tls handshake failed: {current.reason or current}"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        current = current.__cause__ or current.__context__
    return str(error) or "connection failed"


def _os_reason(error: BaseException) -> str:
    """The innermost operating-system reason of a failed connect, in words."""
    current: BaseException | None = error
    reason = describe_connect_error(error)
    while current is not None:
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, OSError) and not isinstance(current, ssl.SSLError) and current.errno:
            reason = os.strerror(current.errno).lower()
        current = current.__cause__ or current.__context__
    return reason
