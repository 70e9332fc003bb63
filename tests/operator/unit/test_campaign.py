"""Pure campaign logic: audience, templates, variants, windows, records, phase."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest

from mailpipe.contracts.wire import Disposition, Event
from mailpipe.operator.audience import parse_audience
from mailpipe.operator.campaign import (
    CampaignError,
    Renderer,
    build_record,
    choose_variant,
    next_open,
    zone,
)
from mailpipe.operator.models import CampaignSpec, SendWindow
from mailpipe.operator.progress import FanoutCheckpoint, campaign_phase
from mailpipe.operator.tally import Tally


def spec(**extra: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "poolRef": "news",
        "from": {"address": "news@example.com", "name": "News"},
        "subject": "Hello {{ first }}",
        "text": "Hi {{ first }}",
        "audience": {"inline": [{"address": "a@x.test", "merge": {"first": "Ann"}}]},
    }
    base.update(extra)
    return CampaignSpec.model_validate(base)


def test_csv_audience_with_merge_fields_and_bad_rows_reported_by_line() -> None:
    s = spec(audience={"configMapRef": {"name": "aud", "key": "a.csv"}})
    good = "address,timeZone,first\nann@x.test,Europe/Paris,Ann\nbob@y.test,,Bob\n"
    rows = parse_audience(s, {"a.csv": good})
    assert [(r.address, r.time_zone, r.merge) for r in rows] == [
        ("ann@x.test", "Europe/Paris", {"first": "Ann"}),
        ("bob@y.test", None, {"first": "Bob"}),
    ]
    with pytest.raises(CampaignError, match="line 3"):
        parse_audience(s, {"a.csv": "address,first\nok@x.test,A\nnot-an-address,B\n"})


def test_jsonl_audience_of_100k() -> None:
    s = spec(audience={"configMapRef": {"name": "aud", "key": "a.jsonl", "format": "jsonl"}})
    text = "\n".join(
        f'{{"address": "u{i}@d{i % 7}.test", "first": "U{i}"}}' for i in range(100_000)
    )
    rows = parse_audience(s, {"a.jsonl": text})
    assert len(rows) == 100_000 and rows[-1].merge == {"first": "U99999"}


def test_missing_merge_field_and_header_injection_are_refused() -> None:
    r = Renderer(spec(), "ns/c")
    from mailpipe.operator.models import Recipient

    with pytest.raises(CampaignError, match="first"):
        r.render(Recipient(address="a@x.test"), None)
    evil = Recipient(address="a@x.test", merge={"first": "x\r\nBcc: all@victims.test"})
    with pytest.raises(CampaignError, match="CR/LF"):
        r.render(evil, None)


def test_html_is_autoescaped_and_text_is_not() -> None:
    from mailpipe.operator.models import Recipient

    r = Renderer(spec(html="<p>{{ first }}</p>"), "ns/c")
    content, _ = r.render(Recipient(address="a@x.test", merge={"first": "<b>&"}), None)
    assert content.html == "<p>&lt;b&gt;&amp;</p>"
    assert content.subject == "Hello <b>&"


def test_variants_follow_weights_and_are_stable() -> None:
    weights = [("a", 20), ("b", 80)]
    picks = Counter(choose_variant("uid", f"u{i}@x.test", weights) for i in range(10_000))
    assert 1700 < picks["a"] < 2300
    assert choose_variant("uid", "u1@x.test", weights) == choose_variant(
        "uid", "U1@X.test", weights
    )


def test_send_window_opens_in_the_recipients_zone() -> None:
    windows = [SendWindow(days=["Mon", "Tue", "Wed", "Thu", "Fri"], start="09:00", end="17:00")]
    paris = zone("Europe/Paris")
    saturday_noon = dt.datetime(2026, 11, 21, 12, 0, tzinfo=paris).timestamp()
    opens = dt.datetime.fromtimestamp(next_open(saturday_noon, windows, paris), paris)
    assert (opens.weekday(), opens.hour, opens.minute) == (0, 9, 0)  # Monday 09:00 Paris
    inside = dt.datetime(2026, 11, 23, 10, 0, tzinfo=paris).timestamp()
    assert next_open(inside, windows, paris) == inside


def test_record_is_deterministic_and_carries_unsubscribe() -> None:
    s = spec(unsubscribe={"url": "https://example.com/u?a={{ address }}"})
    from mailpipe.operator.models import Recipient

    rcpt = Recipient(address="a@x.test", merge={"first": "Ann"})
    r1 = build_record(
        campaign="ns/c",
        uid="u",
        index=7,
        recipient=rcpt,
        spec=s,
        renderer=Renderer(s, "ns/c"),
        now=1.0,
    )
    r2 = build_record(
        campaign="ns/c",
        uid="u",
        index=7,
        recipient=rcpt,
        spec=s,
        renderer=Renderer(s, "ns/c"),
        now=2.0,
    )
    assert r1.id == r2.id == "u-7" and r1.content == r2.content
    assert (
        r1.list_unsubscribe is not None
        and r1.list_unsubscribe.url == "https://example.com/u?a=a@x.test"
    )
    assert r1.domain == "x.test"


def _event(rcpt: str, disposition: Disposition, t: float) -> Event:
    return Event(
        message_id="m",
        campaign="ns/c",
        recipient=rcpt,
        domain="x.test",
        disposition=disposition,
        time=t,
    )


def test_tally_counts_latest_disposition_per_recipient() -> None:
    tally = Tally()
    tally.observe(_event("a@x.test", Disposition.DEFERRED, 1))
    tally.observe(_event("a@x.test", Disposition.DELIVERED, 2))
    tally.observe(_event("a@x.test", Disposition.DEFERRED, 1))  # late duplicate
    tally.observe(_event("b@x.test", Disposition.BOUNCED, 3))
    counts = tally.counts("ns/c")
    assert (counts["delivered"], counts["deferred"], counts["bounced"]) == (1, 0, 1)
    assert tally.finished("ns/c") == 2


@pytest.mark.parametrize(
    ("fanout", "spec_", "finished", "phase"),
    [
        ({"state": "waitingForPool", "message": "PoolNotFound"}, {}, 0, "Pending"),
        ({"state": "running", "total": 10}, {}, 0, "Sending"),
        ({"state": "done", "total": 10}, {}, 9, "Sending"),
        ({"state": "done", "total": 10, "suppressedBeforeSend": 1}, {}, 9, "Completed"),
        ({"state": "done", "total": 10}, {"startAt": "2999-01-01T00:00:00Z"}, 0, "Scheduled"),
        ({"state": "running", "total": 10}, {"suspend": True}, 0, "Paused"),
        ({"state": "failed", "message": "bad rows"}, {}, 0, "Failed"),
    ],
)
def test_campaign_phase(
    fanout: dict[str, Any], spec_: dict[str, Any], finished: int, phase: str
) -> None:
    checkpoint = FanoutCheckpoint.model_validate(fanout)
    assert campaign_phase(checkpoint, spec_, finished, now=1_800_000_000)[0] == phase


def test_gzipped_audience_from_binary_data() -> None:
    import gzip

    s = spec(audience={"configMapRef": {"name": "aud", "key": "a.csv.gz"}})
    raw = gzip.compress(b"address,first\nz\xc3\xa9@x.test,Z\n").decode("latin-1")
    [r] = parse_audience(s, {"a.csv.gz": raw})
    assert r.address == "z\u00e9@x.test"
    with pytest.raises(CampaignError, match="gzip"):
        parse_audience(s, {"a.csv.gz": "plain text"})
