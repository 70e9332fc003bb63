from __future__ import annotations

from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.contracts.wire import Disposition, Event

from .conftest import make_config

DAY = 86400.0
T0 = 1_700_006_400.0  # 2023-11-15 00:00 UTC: a day boundary, so +DAY is the next day


def two_ips() -> WarmupLedger:
    config = make_config(
        egress=[
            {"address": "127.0.0.2", "helo": "cold.test", "warmup": True},
            {"address": "127.0.0.3", "helo": "warm.test"},
        ],
        domain_groups={"big": ["*.big.test"]},
        warmup={
            "schedule": [
                {"day": 1, "daily_limit": 5, "group_limits": {"big": 2}},
                {"day": 2, "daily_limit": 10},
            ]
        },
    )
    return WarmupLedger(config, "me")


def send_all(ledger: WarmupLedger, domain: str, n: int, now: float) -> list[str]:
    chosen = []
    for _ in range(n):
        ip = ledger.choose(domain, 1, now)
        assert ip is not None
        ledger.record(ip, domain, 1, now)
        chosen.append(ip)
    return chosen


def test_cold_ip_takes_its_cap_then_warm_ip_takes_the_rest() -> None:
    ledger = two_ips()
    chosen = send_all(ledger, "x.test", 8, T0 + 10)
    assert chosen.count("127.0.0.2") == 5
    assert chosen.count("127.0.0.3") == 3


def test_group_cap_holds_within_the_total() -> None:
    ledger = two_ips()
    chosen = send_all(ledger, "mx.big.test", 4, T0 + 10)
    assert chosen.count("127.0.0.2") == 2


def test_day_advances_only_on_days_sent() -> None:
    ledger = two_ips()
    send_all(ledger, "x.test", 1, T0 + 10)
    assert ledger.warmup_day("127.0.0.2", T0 + 10) == 1
    # Three idle days later it is warm-up day 2, not day 4.
    assert ledger.warmup_day("127.0.0.2", T0 + 4 * DAY) == 2
    chosen = send_all(ledger, "x.test", 12, T0 + 4 * DAY)
    assert chosen.count("127.0.0.2") == 10


def test_waits_when_no_ip_can_send() -> None:
    config = make_config(
        egress=[{"address": "127.0.0.2", "helo": "cold.test", "warmup": True}],
        warmup={"schedule": [{"day": 1, "daily_limit": 1}]},
    )
    ledger = WarmupLedger(config, "me")
    assert send_all(ledger, "x.test", 1, T0) == ["127.0.0.2"]
    assert ledger.choose("x.test", 1, T0) is None
    assert ledger.next_day_start(T0 + 5) == T0 + DAY


def test_replay_counts_other_relays_and_pauses_on_bounces() -> None:
    ledger = two_ips()
    ledger.config = ledger.config.model_copy(
        update={"warmup": ledger.config.warmup.model_copy(update={"min_sample": 4})}
    )
    for i in range(4):
        ev = Event(
            message_id=f"m{i}",
            recipient=f"u{i}@x.test",
            domain="x.test",
            disposition=Disposition.BOUNCED if i < 2 else Disposition.DELIVERED,
            time=T0 + 5,
            egress_ip="127.0.0.2",
            relay="other",
        )
        ledger.observe(ev, replaying=False)
    [report] = [r for r in ledger.report(T0 + 6) if r.address == "127.0.0.2"]
    assert report.sent_today == 4
    assert report.paused_reason is not None and "bounce rate" in report.paused_reason
    assert ledger.choose("x.test", 1, T0 + 6) == "127.0.0.3"


def test_each_replica_uses_only_its_share_of_a_cap() -> None:
    a, b = two_ips(), two_ips()
    a.relay_id, b.relay_id = "a", "b"
    a.set_share(0.5)
    b.set_share(0.5)
    # Neither sees the other's sends yet (events in flight): the shares still hold the cap.
    sent_a = send_all(a, "x.test", 10, T0 + 10).count("127.0.0.2")
    sent_b = send_all(b, "x.test", 10, T0 + 10).count("127.0.0.2")
    assert sent_a + sent_b <= 5
    assert (sent_a, sent_b) == (2, 2)


def test_a_relay_taking_over_counts_the_others_attempts_in_flight() -> None:
    """Relay a had every partition and spent the warming IP's whole cap; when b
    joins, half of a's attempts have no event yet. Seeing only events, b spent
    its half-share again (the demo's warming IP tried 28 of a cap of 20); with
    a's usage report (written before a rejoins) it sends nothing, and a's later
    events are not counted twice."""
    a, b = two_ips(), two_ips()
    a.relay_id, b.relay_id = "a", "b"
    now = T0 + 10
    sent = [ip for ip in send_all(a, "x.test", 5, now) if ip == "127.0.0.2"]
    assert len(sent) == 5  # the cap of day 1
    events = [
        Event(
            message_id=f"m{i}",
            recipient=f"r{i}@x.test",
            domain="x.test",
            disposition=Disposition.DELIVERED,
            time=now,
            egress_ip="127.0.0.2",
            relay="a",
        )
        for i in range(5)
    ]
    for ev in events[:2]:  # two attempts ended before b caught up, three still running
        b.observe(ev, replaying=True)
    report = a.usage(now)
    assert [(c.ip, c.key, c.n) for c in report.counts] == [("127.0.0.2", "*", 5)]
    a.set_share(0.5)
    b.set_share(0.5)
    b.hold()
    assert b.remaining("127.0.0.2", None, now) == 0  # not before the events were read
    assert b.choose("x.test", 1, now) == "127.0.0.3"  # an uncapped IP is not held
    b.observe(report, replaying=False)
    b.release()
    assert b.remaining("127.0.0.2", None, now) == 0
    for ev in events[2:]:
        b.observe(ev, replaying=False)
    assert b.remaining("127.0.0.2", None, now) == 0
    assert b.report(now)[0].sent_today == 5  # counted once, not 5 + 3


def test_without_a_report_the_taking_over_relay_sees_only_events() -> None:
    """The same hand-over without a's report: b would send again (what the
    report is for)."""
    a, b = two_ips(), two_ips()
    a.relay_id, b.relay_id = "a", "b"
    now = T0 + 10
    send_all(a, "x.test", 5, now)
    b.observe(
        Event(
            message_id="m0",
            recipient="r0@x.test",
            domain="x.test",
            disposition=Disposition.DELIVERED,
            time=now,
            egress_ip="127.0.0.2",
            relay="a",
        ),
        replaying=True,
    )
    b.set_share(0.5)
    assert b.remaining("127.0.0.2", None, now) == 2


COLD = "127.0.0.2"


def site_capped(**overrides: object) -> WarmupLedger:
    """A warming IP whose day-1 steps cap the MX site `google.com` and the group
    `big` at 4 each, within a total of 10."""
    config = make_config(
        egress=[
            {"address": COLD, "helo": "cold.test", "warmup": True},
            {"address": "127.0.0.3", "helo": "warm.test"},
        ],
        domain_groups={"big": ["*.big.test"]},
        warmup={
            "schedule": [{"day": 1, "daily_limit": 10, "group_limits": {"big": 4, "google.com": 4}}]
        },
        **overrides,
    )
    return WarmupLedger(config, "me")


def send_to_site(ledger: WarmupLedger, domain: str, site: str | None, n: int) -> int:
    """Send `n` messages to `domain` as the relay delivering it for `site` does;
    how many went from the warming IP."""
    cold = 0
    for _ in range(n):
        ip = ledger.choose(domain, 1, T0 + 10, site=site)
        assert ip is not None
        ledger.record(ip, domain, 1, T0 + 10, site=site)
        cold += ip == COLD
    return cold


def test_a_cap_naming_an_mx_site_holds_for_every_domain_on_its_mx_hosts() -> None:
    """gmail.com and a Workspace domain are both the site google.com (named from
    their MX hosts by the relay): they share its cap; a domain of another
    provider does not count against it."""
    ledger = site_capped()
    assert send_to_site(ledger, "gmail.com", "google.com", 3) == 3
    assert send_to_site(ledger, "corp.example", "google.com", 3) == 1
    assert ledger.remaining(COLD, "gmail.com", T0 + 10, "google.com") == 0
    assert send_to_site(ledger, "hotmail.com", "outlook.com", 2) == 2


def test_a_sites_owner_spends_its_whole_cap_while_the_total_stays_shared() -> None:
    """Half the partitions: the IP's daily total is halved (5 of 10), but the
    group's (site's) records are all on the partition this relay owns, so the
    whole cap of 4 is its to spend (the share left 2 of it unused by the pool)."""
    ledger = site_capped()
    ledger.set_share(0.5)
    assert send_to_site(ledger, "a.big.test", None, 6) == 4
    assert send_to_site(ledger, "x.test", None, 3) == 1  # the total's half: 5


def test_a_domain_that_is_its_own_site_still_counts_toward_its_groups_divided_cap() -> None:
    """b.big.test has a throttle of its own, so it is a site (its records sit on
    its own partition); its sends still count under its group's cap, as they
    always did, and that cap is divided by share, for the group's other domains
    too: two relays (b.big.test's and the group's partition owners) spend it at
    once, each seeing the other's sends only later."""
    ledger = site_capped(throttles={"b.big.test": {"max_connections": 1}})
    ledger.set_share(0.5)
    assert send_to_site(ledger, "b.big.test", "b.big.test", 3) == 2
    assert send_to_site(ledger, "a.big.test", "big", 3) == 0  # this relay's half is spent
    other = site_capped(throttles={"b.big.test": {"max_connections": 1}})
    other.set_share(0.5)
    assert send_to_site(other, "a.big.test", "big", 3) == 2  # the other relay's half


def _delivered(i: int, domain: str, site: str | None, relay: str = "a") -> Event:
    return Event(
        message_id=f"m{i}",
        recipient=f"r{i}@{domain}",
        domain=domain,
        disposition=Disposition.DELIVERED,
        time=T0 + 10,
        egress_ip=COLD,
        relay=relay,
        site=site,
    )


def test_replay_counts_an_event_under_the_site_it_was_delivered_for() -> None:
    """An event names its site (the MX answer is the delivering relay's); an older
    event without one counts under the site the config names (its group)."""
    ledger = site_capped()
    for i in range(3):
        ledger.observe(_delivered(i, "corp.example", "google.com"), replaying=True)
    ledger.observe(_delivered(9, "a.big.test", None), replaying=True)
    assert ledger.remaining(COLD, "gmail.com", T0 + 10, "google.com") == 1
    assert ledger.remaining(COLD, "c.big.test", T0 + 10) == 3


def test_a_relay_taking_over_a_site_counts_the_attempts_in_flight_on_it() -> None:
    """a owned big's partition and spent its whole cap of 4, three attempts still
    running; b takes the partition over (and with it the whole cap): it sends to
    big only what a's report leaves, nothing."""
    a, b = site_capped(), site_capped()
    a.relay_id, b.relay_id = "a", "b"
    assert send_to_site(a, "a.big.test", "big", 4) == 4
    b.observe(_delivered(0, "a.big.test", "big"), replaying=True)
    b.hold()
    b.observe(a.usage(T0 + 10), replaying=False)
    b.release()
    assert b.remaining(COLD, "a.big.test", T0 + 10, "big") == 0
    for i in range(1, 4):
        b.observe(_delivered(i, "a.big.test", "big"), replaying=False)
    assert b.remaining(COLD, "a.big.test", T0 + 10, "big") == 0
    assert b.remaining(COLD, None, T0 + 10) == 6
