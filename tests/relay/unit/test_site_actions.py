"""Reply rules act on the site for one egress IP (issue 21): the relay that got
the reply stops using that IP for the site at once and writes the action to
the events topic; an action another relay wrote holds here too, and lifts on
time; a slowed IP sends at its slowed pace. The broker and two real relays:
tests/relay/integration/test_reply_actions.py."""

from __future__ import annotations

import json

from mailpipe.contracts.bounces import ActionKind
from mailpipe.contracts.site_actions import SiteAction, encode_site_action
from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.relay.clock import ManualClock
from mailpipe.relay.kafka.follower import apply_event
from mailpipe.relay.scheduling import Egress, NoEgress

from .conftest import Harness, make_config, record_bytes

IPS = [{"address": "127.0.0.2", "helo": "e2.test"}, {"address": "127.0.0.3", "helo": "e3.test"}]
GMAIL_421 = (
    "421 4.7.28 [127.0.0.2] Our system has detected an unusual rate of unsolicited mail"
    " originating from your IP address. To protect our users from spam, mail sent from your IP"
    " address has been temporarily rate limited. - gsmtp"
)


def actions_written(h: Harness) -> list[dict[str, object]]:
    return [e for e in h.events() if e.get("kind") == "site_action"]


async def test_a_gmail_421_4728_suspends_the_site_for_that_ip_and_tells_the_pool() -> None:
    h = Harness(make_config(egress=IPS))
    h.transport.answer("u0@a.test", GMAIL_421)
    h.put(record_bytes("u0@a.test"))
    await h.run_until(lambda: len(actions_written(h)) == 1)
    [action] = actions_written(h)
    assert (action["site"], action["egress_ip"], action["action"]) == (
        "a.test",
        "127.0.0.2",
        "suspend",
    )
    assert action["until"] == h.clock.time() + 1800  # the Gmail rule's half hour
    assert str(action["reply"]).startswith("421 4.7.28")
    for i in range(1, 5):
        h.put(record_bytes(f"u{i}@a.test"))
    await h.run_until(lambda: len(h.transport.envelopes) == 5)
    assert [e.egress_address for e in h.transport.envelopes[1:]] == ["127.0.0.3"] * 4
    counted = h.engine.metrics.registry.get_sample_value(
        "mailpipe_site_actions_total", {"site": "a.test", "ip": "127.0.0.2", "action": "suspend"}
    )
    assert counted == 1
    assert h.engine.metrics.registry.get_sample_value("mailpipe_site_suspensions_active") == 1


async def test_another_relays_suspension_holds_here_and_lifts_on_time() -> None:
    clock = ManualClock()
    config = make_config(egress=IPS)
    h = Harness(config, clock=clock)
    apply = apply_event(
        WarmupLedger(config, "relay-test"),
        "relay-test",
        lambda: None,
        h.engine.scheduler.shaping.actions,
    )
    for ip in ("127.0.0.2", "127.0.0.3"):
        record = SiteAction(
            site="a.test",
            egress_ip=ip,
            action=ActionKind.SUSPEND,
            time=clock.time(),
            until=clock.time() + 600,
            reply="421 4.7.28 ...",
            relay="relay-other",
        )
        apply(b"a.test", encode_site_action(record), True)
    h.put(record_bytes("u@a.test"))
    await h.run_until(lambda: len(h.sink.topics["p.delay.10m"]) == 1)
    assert h.transport.envelopes == []  # never tried from a suspended IP
    [(_, value)] = h.sink.topics["p.delay.10m"]
    assert json.loads(value)["not_before"] == clock.time() + 600  # due when it lifts
    clock.advance(600)
    assert h.engine.scheduler.choose_egress("a.test", "a.test", 1, clock.time()) in (
        Egress("127.0.0.2", "e2.test"),
        Egress("127.0.0.3", "e3.test"),
    )


async def test_a_slowed_ip_sends_at_its_slowed_pace() -> None:
    """10 messages/min, and at most half of the site's configured 4/min: one
    message every 30 s from that IP, whatever else waits."""
    clock = ManualClock()
    config = make_config(throttles={"a.test": {"messages_per_minute": 4}})
    h = Harness(config, clock=clock)
    slow = SiteAction(
        site="a.test",
        egress_ip="127.0.0.2",
        action=ActionKind.SLOW,
        time=clock.time(),
        until=clock.time() + 3600,
        messages_per_minute=10,
        rate_factor=0.5,
    )
    scheduler = h.engine.scheduler
    scheduler.reconfigure(config)
    assert scheduler.shaping.actions.apply(slow)
    assert scheduler.choose_egress("a.test", "a.test", 1, clock.time()) == Egress(
        "127.0.0.2", "e2.test"
    )
    assert scheduler.choose_egress("a.test", "a.test", 1, clock.time()) == NoEgress(
        clock.time() + 30
    )
    clock.advance(30)
    assert isinstance(scheduler.choose_egress("a.test", "a.test", 1, clock.time()), Egress)
