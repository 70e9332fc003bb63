"""Dialling an MX: TCP from the egress IP, within the connect timeout, policy checked.

The last step before any packet leaves: the address a route leads to (an MX
or A record, a static route by address or by name) is checked against the
pool's destination policy here, whatever named it, so no route escapes it
(ARCHITECTURE.md, "Least privilege"). The TCP connect has its own timeout,
apart from the greeting's: aiosmtplib would give both one value, so the
transport hands it the connected socket (RFC 5321 4.5.3.2 times the greeting;
the connect timeout is Postfix's `smtp_connect_timeout`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from mailpipe.contracts.delivery import DeliveryPolicy, destination_refusal

from ..ports import Stage
from .mx import Route


class StageTimeout(Exception):
    """A stage before the session (connect, greeting, EHLO) outlived its timeout."""

    def __init__(self, stage: Stage, what: str, seconds: float) -> None:
        super().__init__(f"{what} within {seconds:g} s ({stage} timeout)")
        self.stage = stage


class Refused(Exception):
    """The destination policy forbids the address a route leads to."""


async def address_of(
    route: Route, policy: DeliveryPolicy
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP `route` leads to, if the destination policy allows it; `Refused` if not."""
    try:
        ip = ipaddress.ip_address(route.host)
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(
            route.host, route.port, type=socket.SOCK_STREAM
        )
        if not infos:
            raise OSError(f"{route.host} has no address") from None
        ip = ipaddress.ip_address(infos[0][4][0])
    refusal = destination_refusal(str(ip), policy)
    if refusal is not None:
        raise Refused(f"{route.name} is at {ip}, {refusal}")
    return ip


async def dial(egress: str, route: Route, policy: DeliveryPolicy) -> socket.socket:
    """A connected, non-blocking socket from `egress` to `route`; `Refused` by policy,
    `StageTimeout(connect)` when the connect timeout passes, OSError otherwise."""
    ip = await address_of(route, policy)
    seconds = policy.timeouts.connect_seconds
    sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
    try:
        sock.setblocking(False)
        sock.bind((egress, 0))
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (str(ip), route.port)), seconds
        )
    except TimeoutError:
        sock.close()
        raise StageTimeout(Stage.CONNECT, f"no connection to {ip}", seconds) from None
    except BaseException:
        sock.close()
        raise
    return sock
