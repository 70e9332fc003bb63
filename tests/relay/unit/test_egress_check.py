"""A relay's check of its egress IPs (`relay.egress`): bind each, say which cannot be."""

from __future__ import annotations

import asyncio
import errno

import pytest

from mailpipe.contracts.egress import egress_reason
from mailpipe.relay.egress import EgressCheck, bind_once, problem, wait_until_bindable
from mailpipe.relay.health import Health

# TEST-NET-2: on no interface of a test machine (this VM's own network is TEST-NET-1).
ABSENT = "198.51.100.7"


def test_a_real_bind_tells_a_local_address_from_one_on_no_interface() -> None:
    bind_once("127.0.0.1")
    with pytest.raises(OSError) as raised:
        bind_once(ABSENT)
    assert raised.value.errno == errno.EADDRNOTAVAIL
    assert problem(["127.0.0.1", "127.0.0.2"]) is None
    assert problem(["127.0.0.1", ABSENT]) == (
        f"cannot bind {ABSENT}: not an address of this relay's network "
        "(with hostNetwork: the node's)"
    )


def test_each_failing_address_is_named_grouped_by_cause() -> None:
    def bind(address: str) -> None:
        if address.endswith(".9"):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        if address.endswith(".8"):
            raise OSError(errno.EACCES, "Permission denied")

    text = problem(["10.0.0.1", "10.0.0.9", "10.0.0.8", "10.0.1.9"], bind)
    assert text == (
        "cannot bind 10.0.0.8: EACCES, cannot bind 10.0.0.9 10.0.1.9: not an address of "
        "this relay's network (with hostNetwork: the node's)"
    )


def test_readiness_says_which_ip_and_follows_the_addresses_without_restarting() -> None:
    health = Health()
    check = EgressCheck(["127.0.0.1", ABSENT])
    check.register(health)
    [reason] = health.readiness()
    assert egress_reason(reason) == problem([ABSENT])
    assert health.liveness() == []  # a restart cannot bring an address: never a crash loop
    ready, body = health.probes()["/readyz"]()
    assert not ready and ABSENT in body
    check.addresses = ["127.0.0.1"]  # a reload that drops it, or the address added
    assert health.readiness() == []


async def test_the_relay_waits_for_its_addresses_and_goes_on_when_they_bind() -> None:
    present = {"127.0.0.1"}

    def bind(address: str) -> None:
        if address not in present:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    check = EgressCheck(["127.0.0.1", "10.9.9.9"], bind)
    waiting = asyncio.create_task(wait_until_bindable(check, retry_seconds=0.01))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    present.add("10.9.9.9")
    await asyncio.wait_for(waiting, 5)
