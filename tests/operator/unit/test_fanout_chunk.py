"""One chunk of a fan-out (`handlers.fanout._chunk`, pure): which recipients
become records, and how the counts move, on a first run and on a resume."""

from __future__ import annotations

import functools

from mailpipe.contracts import sites
from mailpipe.contracts.wire import decode_record, suppression_key
from mailpipe.operator.campaign import Renderer
from mailpipe.operator.handlers.fanout import _chunk, _record
from mailpipe.operator.models import CampaignSpec, Recipient

AUDIENCE = [Recipient(address=f"u{i}@dest.test") for i in range(6)]


def _build(i: int, r: Recipient) -> tuple[bytes, bytes]:
    return b"dest.test", f"{i}:{r.address}".encode()


def test_a_chunk_leaves_out_the_suppressed_and_what_was_produced_before_a_restart() -> None:
    chunk = _chunk(AUDIENCE, range(1, 5), {"u2@dest.test"}, {3}, _build)
    assert [v for _, v in chunk.records] == [b"1:u1@dest.test", b"4:u4@dest.test"]
    assert (chunk.enqueued, chunk.suppressed) == (3, 1)  # 3 produced now or before


def test_a_suppression_matches_whatever_the_case_of_the_audience() -> None:
    shouting = [Recipient(address="U0@Dest.Test")]
    chunk = _chunk(shouting, range(1), {"u0@dest.test"}, set(), _build)
    assert (chunk.records, chunk.enqueued, chunk.suppressed) == ([], 0, 1)


def test_a_list_unsubscribe_leaves_out_that_lists_campaigns_only() -> None:
    suppressed = {suppression_key("u1@dest.test", "news"), suppression_key("u2@dest.test")}
    news = _chunk(AUDIENCE, range(3), suppressed, set(), _build, "news")
    assert [v for _, v in news.records] == [b"0:u0@dest.test"]  # u1: its list; u2: namespace
    other = _chunk(AUDIENCE, range(3), suppressed, set(), _build, "offers")
    assert [v for _, v in other.records] == [b"0:u0@dest.test", b"1:u1@dest.test"]
    unlisted = _chunk(AUDIENCE, range(3), suppressed, set(), _build)
    assert unlisted.suppressed == 1


def test_a_record_is_keyed_by_its_site() -> None:
    """The fan-out keys by site (`contracts.sites`): the domains of a group share a
    partition, so one relay owns the group's limits and no record needs a hop."""
    spec = CampaignSpec.model_validate(
        {
            "poolRef": "news",
            "from": {"address": "news@example.com"},
            "subject": "Hello",
            "text": "Hi",
            "audience": {"inline": [{"address": "a@x.test"}]},
        }
    )
    site_of = functools.partial(sites.site_of, groups={"mail": ["*.mail.test"]}, overrides={})
    build = functools.partial(_record, "ns/c", "uid", spec, Renderer(spec, "ns/c"), site_of, 1.0)
    key, value = build(0, Recipient(address="u@a.mail.test"))
    assert (key, decode_record(value).domain) == (b"mail", "a.mail.test")
    assert build(1, Recipient(address="u@dest.test"))[0] == b"dest.test"
