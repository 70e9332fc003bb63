"""Can this relay send from its egress IPs? Asked at start and at every readiness probe.

A relay whose egress IPs are on no interface of its network (hostNetwork on a
node that does not hold them, a node label that lies, an address moved to
another node) would read its records and defer every one of them at connect
time until they expire. So a relay does not join its consumer group until
it can bind every egress IP of its pool (`wait_until_bindable`), and its
readiness says which it cannot (`EgressCheck.problem`, under the check name
`contracts.egress.EGRESS_CHECK`, which the operator turns into the pool's
reason). Not a crash: the addresses may come (a failover, a label fixed, the
pod rescheduled), and a restart would not bring them.

Binding a local address to an ephemeral port is a syscall with no packet and
no capability: cheap enough to ask at every probe, so readiness is never stale.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable

from mailpipe.contracts.egress import EGRESS_CHECK

from .health import Health

log = logging.getLogger("mailpipe.relay")

# How often a relay that cannot bind its IPs asks again before it starts: an
# address added, or a pod moved, shows within this; each try is a few syscalls.
RETRY_SECONDS = 5.0
NOT_LOCAL = "not an address of this relay's network (with hostNetwork: the node's)"

Bind = Callable[[str], None]  # raises OSError when the address cannot be bound


def bind_once(address: str) -> None:
    """Bind a TCP socket to `address`, any port, and close it (what a dial does first)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))


def problem(addresses: Iterable[str], bind: Bind = bind_once) -> str | None:
    """Which of `addresses` cannot be bound and why, in one line; None if all can.

    The text names only what stays the same while the trouble does (addresses
    and errno names), so the pool's status is not rewritten at every probe."""
    failed: dict[str, list[str]] = {}
    for address in addresses:
        try:
            bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                why = NOT_LOCAL
            else:
                why = errno.errorcode.get(exc.errno or 0, "") or exc.strerror or str(exc)
            failed.setdefault(why, []).append(address)
    if not failed:
        return None
    return ", ".join(
        f"cannot bind {' '.join(addrs)}: {why}" for why, addrs in sorted(failed.items())
    )


class EgressCheck:
    """The readiness check of the pool's egress IPs; `addresses` follows a reload."""

    def __init__(self, addresses: Iterable[str], bind: Bind = bind_once) -> None:
        self.addresses = list(addresses)
        self._bind = bind

    def problem(self) -> str | None:
        return problem(self.addresses, self._bind)

    def register(self, health: Health) -> None:
        health.require(EGRESS_CHECK, self.problem)


async def wait_until_bindable(check: EgressCheck, retry_seconds: float = RETRY_SECONDS) -> None:
    """Return once every egress IP can be bound; log each new problem once."""
    said: str | None = None
    while (now := check.problem()) is not None:
        if now != said:
            log.error("waiting for the egress IPs before reading any record: %s", now)
            said = now
        await asyncio.sleep(retry_seconds)
    if said is not None:
        log.info("every egress IP can be bound now: %s", " ".join(check.addresses))
