"""A site's limits hold pool-wide, with real Kafka and real relays, when its
domains sit on partitions that different relays own; domains sharing a site's
one connection take it in turn.

Records are produced keyed by their domain, each group domain on a partition
chosen so that the range assignor gives them to different relays (4
partitions: two members own 0-1 and 2-3, three own 0-1, 2 and 3): as a
producer that knows no sites would. The relays forward them to the group's
partition (`contracts.sites`), so one relay counts the group's rate and
connections, and the owner of that partition spends the group's whole warm-up
cap on a warming IP (no other relay sends to the group). What is measured is
what the receiver saw.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable

import pytest

from mailpipe.devstack.dns import Zone
from mailpipe.devstack.smtp_receiver import SMTPReceiver

from .conftest import Pool, RelayProcess, wait_for
from .test_shaping import _members

pytestmark = pytest.mark.relay

RATE_PER_MINUTE = 60
# Per relay count: the group's domains, each on a partition owned by another relay.
PLACEMENTS = {2: {"ga.test": 0, "gb.test": 2}, 3: {"ga.test": 0, "gb.test": 2, "gc.test": 3}}
MESSAGES = 40  # about 40 s at the limit: enough MAIL FROMs to measure a rate by
WARMUP_CAP = 12  # the group's day-1 cap on the warming IP: a share of it would be 6 or 3
COLD, WARM = "127.0.0.2", "127.0.0.3"


def _send(pool: Pool, placement: dict[str, int], per_domain: int, local: str) -> set[str]:
    """`per_domain` recipients `<local><i>@<domain>` to each domain, on its partition
    (as a producer keying by domain would); the recipients."""
    expected = set()
    for i in range(per_domain):
        for domain, partition in placement.items():
            rcpt = f"{local}{i}@{domain}"
            pool.send(rcpt, id=rcpt, partition=partition)
            expected.add(rcpt)
    pool.flush()
    return expected


def _send_and_measure(
    pool: Pool,
    rx: SMTPReceiver,
    placement: dict[str, int],
    per_domain: int,
    what: str,
    watch: RelayProcess,
) -> tuple[float, int, int]:
    """Send `per_domain` recipients to each domain on its partition, wait until all
    arrived; (messages per minute the receiver saw, its peak connections, messages)."""
    expected = _send(pool, placement, per_domain, "u")
    wait_for(
        lambda: set(rx.recipients()) >= expected,
        len(expected) * 60 / RATE_PER_MINUTE * 2 + 60,
        what,
        watch,
    )
    times = sorted(rx.mail_times())
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60
    return rate, rx.peak_connections(), len(times)


@pytest.mark.parametrize("replicas", [2, 3], ids=["2-relays", "3-relays"])
def test_a_groups_rate_and_connections_hold_across_relays(
    replicas: int,
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
) -> None:
    placement = PLACEMENTS[replicas]
    rx = smtp_receiver("127.0.0.10", 0)
    route = [{"host": rx.host, "port": rx.port}]
    pool = pool_factory(
        routes=dict.fromkeys(placement, route),
        domain_groups={"grp": list(placement)},
        throttles={"grp": {"messages_per_minute": RATE_PER_MINUTE, "max_connections": 1}},
    )
    started = [relays(pool, f"relay-{i}") for i in range(replicas)]
    wait_for(lambda: _members(pool) == replicas, 90, "every relay in the group", started[0])

    rate, peak, sent = _send_and_measure(
        pool, rx, placement, MESSAGES // replicas, "the group delivered", started[0]
    )
    assert rate <= RATE_PER_MINUTE * 1.05 and peak == 1, (rate, peak, sent)


def test_two_domains_sharing_one_connection_each_get_a_fair_share(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
) -> None:
    """Both domains' records are queued before the first is sent (all of fa.test
    ahead of fb.test on the group's partition): the one connection alternates
    between them rather than serving fa.test until its queue is empty."""
    rx = smtp_receiver("127.0.0.10", 0)
    route = [{"host": rx.host, "port": rx.port}]
    domains = ("fa.test", "fb.test")
    pool = pool_factory(
        routes=dict.fromkeys(domains, route),
        domain_groups={"pair": list(domains)},
        throttles={"pair": {"messages_per_minute": 120, "max_connections": 1}},
    )
    n = 12
    for domain in domains:
        for i in range(n):
            pool.send(f"u{i}@{domain}", key="pair")  # keyed by its site, as the fan-out does
    pool.flush()
    relay = relays(pool, "relay-fair")
    wait_for(lambda: len(rx.recipients()) >= 2 * n, 2 * n + 60, "both domains delivered", relay)
    order = [m.rcpt_tos[0].rpartition("@")[2] for m in sorted(rx.messages(), key=lambda m: m.time)]
    # Up to the moment one domain is done, neither waited more than a few messages.
    first_done = min(max(i for i, d in enumerate(order) if d == dom) for dom in domains)
    longest = max(len(list(run)) for _, run in itertools.groupby(order[: first_done + 1]))
    assert longest <= 3, order


def test_domains_on_one_providers_mx_hosts_share_the_sites_limits_across_relays(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: object,
) -> None:
    """No group written: ma.test and mb.test are hosted on two MX hosts of one
    provider (mx1/mx2.hoster.test), so their site is `hoster.test` (named from
    the MX hosts) and its limit holds for both, on two relays, with the idle
    pooled connection to one MX host closed before one to the other opens."""
    rx = smtp_receiver("127.0.0.10", 0)
    hosts = {"ma.test": "mx1.hoster.test", "mb.test": "mx2.hoster.test"}
    dns_zones([Zone(d, mx=((mx, 10),), a={mx: rx.host}) for d, mx in hosts.items()])
    dns_port = stack_state.dns_port  # type: ignore[attr-defined]
    pool = pool_factory(
        smtp_port=rx.port,
        dns_nameserver=f"127.0.0.1:{dns_port}",
        throttles={"hoster.test": {"messages_per_minute": RATE_PER_MINUTE, "max_connections": 1}},
    )
    started = [relays(pool, f"relay-{i}") for i in range(2)]
    wait_for(lambda: _members(pool) == 2, 90, "both relays in the group", started[0])
    rate, peak, sent = _send_and_measure(
        pool, rx, {"ma.test": 0, "mb.test": 2}, MESSAGES // 2, "the site delivered", started[0]
    )
    assert rate <= RATE_PER_MINUTE * 1.05 and peak == 1, (rate, peak, sent)


def _noon_env() -> dict[str, str]:
    """Day 1 starts well inside a UTC day, so a run cannot straddle midnight."""
    now = time.time()
    return {"MAILPIPE_CLOCK_OFFSET_SECONDS": str((now // 86400) * 86400 + 43200 - now)}


def _send_past_the_cap(
    pool: Pool, rx: SMTPReceiver, placement: dict[str, int], watch: RelayProcess
) -> set[str]:
    """Three times WARMUP_CAP recipients over the domains of `placement`, each on
    its partition; once all arrived, the warming IP got the cap (within +5 %)
    and not a relay's share of it, and each recipient came once. The recipients."""
    expected = _send(pool, placement, 3 * WARMUP_CAP // len(placement), "w")
    wait_for(lambda: set(rx.recipients()) >= expected, 90, "every recipient delivered", watch)
    peers = rx.peers()
    assert WARMUP_CAP <= peers[COLD] <= WARMUP_CAP * 1.05, peers
    assert peers[COLD] + peers[WARM] == len(expected), peers
    counts = Counter(rx.recipients())
    assert set(counts) == expected and max(counts.values()) == 1, counts
    return expected


@pytest.mark.parametrize("replicas", [2, 3], ids=["2-relays", "3-relays"])
def test_a_groups_warmup_cap_holds_across_relays_and_its_owner_spends_all_of_it(
    replicas: int,
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
) -> None:
    """Three times the group's cap is sent, its domains on partitions of different
    relays: the warming IP gets the cap (within +5 %) and not a relay's share of
    it, the warm IP the rest, each recipient once; the events name the group as
    the site they were counted under, so a replay counts them the same way."""
    placement = PLACEMENTS[replicas]
    rx = smtp_receiver("127.0.0.10", 0)
    route = [{"host": rx.host, "port": rx.port}]
    pool = pool_factory(
        routes=dict.fromkeys(placement, route),
        domain_groups={"grp": list(placement)},
        egress=[
            {"address": COLD, "helo": "cold.sender.test", "warmup": True},
            {"address": WARM, "helo": "warm.sender.test"},
        ],
        # The IP's daily total is shared by partitions; a quarter of it is far above the cap.
        warmup={"schedule": [{"day": 1, "daily_limit": 1000, "group_limits": {"grp": WARMUP_CAP}}]},
    )
    started = [relays(pool, f"relay-{i}", _noon_env()) for i in range(replicas)]
    wait_for(lambda: _members(pool) == replicas, 90, "every relay in the group", started[0])

    expected = _send_past_the_cap(pool, rx, placement, started[0])
    wait_for(
        lambda: sum(e["disposition"] == "delivered" for e in pool.events()) >= len(expected),
        30,
        "every delivery's event",
        started[0],
    )
    assert {e.get("site") for e in pool.events() if e["disposition"] == "delivered"} == {"grp"}


def test_a_warmup_cap_on_a_site_named_by_mx_hosts_holds_across_relays(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: object,
) -> None:
    """No group written: ma.test and mb.test are hosted on one provider's MX
    hosts, so the warming IP's cap on the site `hoster.test` holds for both
    together, on two relays, and the site's owner spends all of it."""
    rx = smtp_receiver("127.0.0.10", 0)
    hosts = {"ma.test": "mx1.hoster.test", "mb.test": "mx2.hoster.test"}
    dns_zones([Zone(d, mx=((mx, 10),), a={mx: rx.host}) for d, mx in hosts.items()])
    dns_port = stack_state.dns_port  # type: ignore[attr-defined]
    pool = pool_factory(
        smtp_port=rx.port,
        dns_nameserver=f"127.0.0.1:{dns_port}",
        egress=[
            {"address": COLD, "helo": "cold.sender.test", "warmup": True},
            {"address": WARM, "helo": "warm.sender.test"},
        ],
        warmup={
            "schedule": [
                {"day": 1, "daily_limit": 1000, "group_limits": {"hoster.test": WARMUP_CAP}}
            ]
        },
    )
    started = [relays(pool, f"relay-{i}", _noon_env()) for i in range(2)]
    wait_for(lambda: _members(pool) == 2, 90, "both relays in the group", started[0])
    _send_past_the_cap(pool, rx, {"ma.test": 0, "mb.test": 2}, started[0])
