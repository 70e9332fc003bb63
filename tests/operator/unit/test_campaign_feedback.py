"""What comes back, in a campaign's status (issue 20, item 4): complaints and
unsubscribes counted once per recipient beside its outcome, every count per A/B
variant, and the complaint rate that warns and that pauses."""

from __future__ import annotations

import pytest

from mailpipe.contracts.wire import Disposition, Event, ListUnsubscribe
from mailpipe.operator.campaign import CampaignError, Renderer
from mailpipe.operator.complaints import Level, judge
from mailpipe.operator.models import CampaignSpec, ComplaintSettings, Recipient
from mailpipe.operator.tally import Tally

OK, B = Disposition.DELIVERED, Disposition.BOUNCED
SPAM, UNSUB = Disposition.COMPLAINED, Disposition.UNSUBSCRIBED


def ev(
    rcpt: str, d: Disposition, t: float, variant: str | None, bounce_class: str | None = None
) -> Event:
    return Event(
        message_id=f"m-{rcpt}",
        campaign="ns/c",
        variant=variant,
        recipient=rcpt,
        domain="x.test",
        disposition=d,
        time=t,
        bounce_class=bounce_class,
    )


def test_each_variant_has_its_own_delivered_bounced_by_class_complained_unsubscribed() -> None:
    tally = Tally()
    for e in [
        ev("a1@x.test", OK, 1, "a"),
        ev("a2@x.test", OK, 1, "a"),
        ev("a2@x.test", SPAM, 5, "a"),
        ev("a2@x.test", SPAM, 6, "a"),  # a duplicate report counts once
        ev("a3@x.test", B, 1, "a", "invalid_recipient"),
        ev("b1@x.test", Disposition.DEFERRED, 1, "b", "greylisted"),
        ev("b1@x.test", OK, 2, "b"),
        ev("b2@x.test", OK, 1, "b"),
        ev("b2@x.test", UNSUB, 9, "b"),
        ev("b2@x.test", UNSUB, 10, "b"),  # clicked twice
    ]:
        tally.observe(e)
    assert tally.variants("ns/c") == {
        "a": {
            "delivered": 2,
            "bounced": 1,
            "complained": 1,
            "unsubscribed": 0,
            "bouncedByClass": {"invalid_recipient": 1},
        },
        "b": {
            "delivered": 2,
            "bounced": 0,
            "complained": 0,
            "unsubscribed": 1,
            "bouncedByClass": {},
        },
    }
    counts = tally.counts("ns/c")
    # complaints and unsubscribes sit beside the outcome, never replace it
    assert (counts["delivered"], counts["complained"], counts["unsubscribed"]) == (4, 1, 1)
    assert tally.finished("ns/c") == 5


def test_a_campaign_without_variants_has_no_variant_counts() -> None:
    tally = Tally()
    tally.observe(ev("a@x.test", OK, 1, None))
    tally.observe(ev("a@x.test", UNSUB, 2, None))
    assert tally.variants("ns/c") == {}
    assert tally.counts("ns/c")["unsubscribed"] == 1


DEFAULTS = ComplaintSettings()


@pytest.mark.parametrize(
    ("complained", "delivered", "level", "pause"),
    [
        (0, 10_000, Level.OK, False),
        (9, 10_000, Level.OK, False),  # 0.09%
        (10, 10_000, Level.WARNING, False),  # 0.1%: warning from here
        (29, 10_000, Level.WARNING, False),
        (30, 10_000, Level.PAUSE, True),  # 0.3%: paused
        (5, 50, Level.WARNING, False),  # 10%, but too few deliveries to judge
        (1, 0, Level.OK, False),
    ],
    ids=["none", "under-warning", "warning", "under-pause", "pause", "few-deliveries", "none-sent"],
)
def test_the_default_thresholds_warn_from_0_1_and_pause_at_0_3_percent(
    complained: int, delivered: int, level: Level, pause: bool
) -> None:
    verdict = judge(complained, delivered, DEFAULTS, suspended=False, paused_at_complaints=None)
    assert (verdict.level, verdict.pause) == (level, pause)


def test_a_paused_or_resumed_campaign_is_paused_again_only_by_a_new_complaint() -> None:
    strict = ComplaintSettings(pause_at_percent=1, warn_at_percent=0.5, min_delivered=10)
    already = judge(2, 100, strict, suspended=True, paused_at_complaints=None)
    assert already.level is Level.PAUSE and not already.pause  # suspended: nothing to do
    resumed = judge(2, 100, strict, suspended=False, paused_at_complaints=2)
    assert resumed.level is Level.PAUSE and not resumed.pause  # the person's resume holds
    again = judge(3, 100, strict, suspended=False, paused_at_complaints=2)
    assert again.pause and "1%" in again.message and "3 complaints of 100" in again.message


def test_the_thresholds_are_set_in_the_campaign_spec() -> None:
    spec = CampaignSpec.model_validate(
        {
            "poolRef": "p",
            "from": {"address": "a@b.test"},
            "subject": "s",
            "text": "t",
            "audience": {"inline": [{"address": "x@y.test"}]},
            "complaints": {"pauseAtPercent": 0.5, "warnAtPercent": 0.2, "minDelivered": 1000},
        }
    )
    assert spec.complaints == ComplaintSettings(
        pause_at_percent=0.5, warn_at_percent=0.2, min_delivered=1000
    )
    assert (
        CampaignSpec.model_validate({**spec.model_dump(by_alias=True), "complaints": {}}).complaints
        == DEFAULTS
    )


def _spec(**extra: object) -> CampaignSpec:
    base: dict[str, object] = {
        "poolRef": "p",
        "from": {"address": "news@example.com"},
        "subject": "s",
        "text": "t",
        "audience": {"inline": [{"address": "a@x.test"}]},
    }
    return CampaignSpec.model_validate({**base, **extra})


ANN = Recipient(address="ann@x.test")


def test_without_a_url_of_its_own_a_campaign_uses_the_pools_endpoint() -> None:
    _, unsub = Renderer(_spec(), "ns/c", endpoint=True).render(ANN, None)
    assert unsub == ListUnsubscribe(endpoint=True, one_click=True)
    listed = _spec(unsubscribe={"scope": "List", "list": "news", "mailto": "u@example.com"})
    _, unsub = Renderer(listed, "ns/c", endpoint=True).render(ANN, None)
    assert unsub == ListUnsubscribe(endpoint=True, mailto="u@example.com", list="news")


def test_a_users_own_url_stays_and_a_pool_without_endpoint_adds_nothing() -> None:
    own = _spec(unsubscribe={"url": "https://example.com/u?a={{ address }}"})
    _, unsub = Renderer(own, "ns/c", endpoint=True).render(ANN, None)
    assert unsub is not None and not unsub.endpoint
    assert unsub.url == "https://example.com/u?a=ann@x.test"
    _, none = Renderer(_spec(), "ns/c", endpoint=False).render(ANN, None)
    assert none is None


def test_one_click_without_a_url_on_a_pool_without_endpoint_is_an_invalid_spec() -> None:
    with pytest.raises(CampaignError, match=r"spec\.unsubscribe\.url, or a pool with a one-click"):
        Renderer(_spec(unsubscribe={"mailto": "u@example.com"}), "ns/c", endpoint=False)
    # while the pool is not known (the audience check) it renders
    Renderer(_spec(unsubscribe={"mailto": "u@example.com"}), "ns/c")


def test_scope_list_without_a_list_is_refused_by_the_crd() -> None:
    from mailpipe.operator.crdgen import campaign_crd

    text = str(campaign_crd())
    assert "unsubscribe scope List needs a list name" in text
