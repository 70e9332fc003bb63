"""Audience integrity before the first send, bounded rendering, windows and zones (issue 12).

Each test here failed on the code before issue 12: duplicates differing in case
were all produced, a bad row was found only when its chunk was rendered (after
earlier chunks were sent), template errors other than Jinja's own escaped as
plain exceptions (an endless daemon retry), overnight windows and zone names
such as `CET` were refused.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import Any

import pytest

from mailpipe.operator.audience import prepare_audience
from mailpipe.operator.campaign import CampaignError, next_open, zone
from mailpipe.operator.models import CampaignSpec, SendWindow
from mailpipe.operator.render_check import check_audience

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp()


def spec(**extra: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "poolRef": "news",
        "from": {"address": "news@example.com"},
        "subject": "Hello {{ first }}",
        "text": "Hi {{ first }}",
        "audience": {"inline": [{"address": "a@x.test", "merge": {"first": "Ann"}}]},
    }
    base.update(extra)
    return CampaignSpec.model_validate(base)


def inline(*addresses: str) -> dict[str, Any]:
    return {"inline": [{"address": a, "merge": {"first": "F"}} for a in addresses]}


def test_duplicates_differing_in_case_are_one_recipient() -> None:
    s = spec(audience=inline("dup@x.test", "dup@x.test", "DUP@x.test", "other@x.test"))
    prepared = prepare_audience(s, None, campaign="ns/c", uid="u", now=NOW)
    assert [r.address for r in prepared.recipients] == ["dup@x.test", "other@x.test"]
    assert prepared.deduplicated == 2
    assert prepared.rows == 4


def test_domain_is_lower_cased_and_local_part_kept() -> None:
    s = spec(audience=inline("Ann.Smith@Example.COM", "ann.smith@example.com"))
    prepared = prepare_audience(s, None, campaign="ns/c", uid="u", now=NOW)
    assert [r.address for r in prepared.recipients] == ["Ann.Smith@example.com"]
    assert prepared.deduplicated == 1


def _csv_with_blank_row(n: int, blank_row: int) -> str:
    rows = [f"u{i}@d{i % 7}.test,{'' if i == blank_row else f'U{i}'}\n" for i in range(1, n + 1)]
    return "address,first\n" + "".join(rows)


def test_a_blank_merge_value_fails_the_whole_audience_by_line_before_any_send() -> None:
    s = spec(audience={"configMapRef": {"name": "aud"}})
    text = _csv_with_blank_row(2500, 2201)
    with pytest.raises(CampaignError, match="line 2202") as info:
        prepare_audience(s, {"audience.csv": text}, campaign="ns/c", uid="u", now=NOW)
    assert info.value.reason == "InvalidAudience"


def test_skip_policy_drops_and_counts_bad_rows_by_reason() -> None:
    s = spec(audience={"configMapRef": {"name": "aud"}, "onInvalid": "Skip"})
    text = _csv_with_blank_row(2500, 2201) + "not-an-address,X\nz@zone.test,Z\n"
    text = text.replace("address,first\n", "address,first,timeZone\n", 1)
    text = text.replace("z@zone.test,Z\n", "z@zone.test,Z,Europe/Berln\n")
    prepared = prepare_audience(s, {"audience.csv": text}, campaign="ns/c", uid="u", now=NOW)
    assert len(prepared.recipients) == 2499
    assert prepared.skipped == {"invalidRow": 1, "renderError": 1, "unknownTimeZone": 1}
    assert any("line 2202" in p for p in prepared.problems)


def test_skip_policy_with_no_valid_row_left_fails() -> None:
    s = spec(audience={"inline": [{"address": "a@x.test"}], "onInvalid": "Skip"})
    with pytest.raises(CampaignError, match="no recipient left"):
        prepare_audience(s, None, campaign="ns/c", uid="u", now=NOW)


BAD_TEMPLATES = [
    ("{{ 1/0 }}", "TemplateError"),
    ("{{ range(10**9)|length }}", "TemplateError"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "TemplateError"),
    ("{{ 'x' * 100000000 }}", "RenderLimitExceeded"),
    ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "RenderLimitExceeded"),
    ("{{ 10 ** 1000000000 }}", "RenderLimitExceeded"),
]


@pytest.mark.parametrize(("template", "reason"), BAD_TEMPLATES, ids=[t for t, _ in BAD_TEMPLATES])
def test_template_errors_and_limits_fail_the_campaign_at_once(template: str, reason: str) -> None:
    s = spec(text=template, audience=inline(*[f"u{i}@x.test" for i in range(50)]))
    # A limit, not the work: each of these would take minutes (or all memory) if evaluated.
    with pytest.raises(CampaignError) as info:
        prepare_audience(s, None, campaign="ns/c", uid="u", now=NOW)
    assert info.value.reason == reason, str(info.value)


def test_an_oversized_template_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError, match="at most"):
        spec(html="x" * (200 * 1024))


def test_a_render_that_loops_without_output_is_stopped_in_its_own_process() -> None:
    loop = (
        "{% set r = range(100000)|list %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}"
    )
    s = spec(text=loop)
    with pytest.raises(CampaignError) as info:
        check_audience(s.model_dump(by_alias=True, exclude_none=True), None, "ns/c", "u", NOW)
    assert info.value.reason == "RenderLimitExceeded", str(info.value)
    # stopped by the per-render CPU limit, not by the whole check's far larger budget
    assert "render needed" in str(info.value), str(info.value)


def test_the_whole_check_has_a_cpu_budget_and_says_how_far_it_got() -> None:
    """CPU time, not wall time: the verdict does not depend on how busy the node is
    (a wall-clock limit failed the same campaign after 300 s or after 7 s)."""
    # some 20 ms of CPU a row (a loop with no output is compiled away)
    slow = (
        "{% set ns = namespace(n=0) %}"
        "{% for i in range(8000) %}{% set ns.n = ns.n + i %}{% endfor %}Hi"
    )
    s = spec(text=slow, audience=inline(*[f"u{i}@x.test" for i in range(1000)]))
    seen: list[tuple[int, int]] = []
    with pytest.raises(CampaignError) as info:
        check_audience(
            s.model_dump(by_alias=True, exclude_none=True),
            None,
            "ns/c",
            "u",
            NOW,
            cpu_seconds=3.0,
            on_progress=lambda done, rows: seen.append((done, rows)),
        )
    assert info.value.reason == "RenderLimitExceeded", str(info.value)
    assert "needed over 3 s of CPU" in str(info.value), str(info.value)
    assert re.search(r"\(\d+ of 1000 rows rendered\)", str(info.value)), str(info.value)
    assert seen and {rows for _, rows in seen} == {1000}
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)  # it moved forward


def test_the_render_check_process_returns_the_prepared_audience() -> None:
    s = spec(audience=inline("dup@x.test", "DUP@x.test"))
    raw = s.model_dump(by_alias=True, exclude_none=True)
    prepared = check_audience(raw, None, "ns/c", "u", NOW)
    assert [r.address for r in prepared.recipients] == ["dup@x.test"]
    assert prepared.deduplicated == 1


def test_overnight_send_window_spans_midnight() -> None:
    windows = [SendWindow(days=["Mon"], start="22:00", end="06:00")]
    utc = zone("UTC")

    def at(day: int, hour: int) -> float:
        return dt.datetime(2026, 11, day, hour, 0, tzinfo=dt.UTC).timestamp()

    # 2026-11-23 is a Monday
    assert next_open(at(23, 12), windows, utc) == at(23, 22)
    assert next_open(at(23, 23), windows, utc) == at(23, 23)
    assert next_open(at(24, 3), windows, utc) == at(24, 3)  # Monday's window, after midnight
    assert next_open(at(24, 7), windows, utc) == at(30, 22)  # closed until next Monday


def test_every_iana_zone_name_is_accepted() -> None:
    names = sorted(zoneinfo.available_timezones())
    assert {"CET", "Etc/GMT+5", "EST5EDT", "America/Argentina/Buenos_Aires"} <= set(names)
    refused = []
    for name in names:
        try:
            spec(timeZone=name)
        except ValueError:
            refused.append(name)
    assert refused == []


def test_the_digest_names_the_list_the_fanout_indexes() -> None:
    """A resumed fan-out skips by position, so it may only resume over the same list:
    the digest changes with a row inserted, reordered or with other merge data,
    and not with what normalisation removes (case of the domain, a duplicate)."""

    def digest(*rows: str) -> str:
        return prepare_audience(
            spec(audience=inline(*rows)), None, campaign="ns/c", uid="u", now=NOW
        ).digest()

    base = digest("a@x.test", "b@x.test")
    assert digest("a@x.test", "b@x.test") == base
    assert digest("a@X.TEST", "b@x.test", "A@x.test") == base
    assert digest("new@x.test", "a@x.test", "b@x.test") != base
    assert digest("b@x.test", "a@x.test") != base
    changed = prepare_audience(
        spec(audience={"inline": [{"address": "a@x.test", "merge": {"first": "A"}}]}),
        None,
        campaign="ns/c",
        uid="u",
        now=NOW,
    )
    assert changed.digest() != digest("a@x.test")


def test_an_audience_larger_than_a_pipe_reaches_the_check_whole() -> None:
    """The request (spec and audience) goes to the check process on its stdin. Written
    by `communicate(input, timeout)` and retried after a timeout, only the first 64 KiB
    (a pipe's buffer) ever arrived: CPython resumes no input on a retry, and the check
    waited for the rest for ever (a fan-out of 10,000 rows restarted after an operator
    kill never finished). pytest-timeout bounds this test."""
    n = 10_000
    s = spec(audience={"configMapRef": {"name": "aud"}})
    csv = "address,first\n" + "".join(f"u{i}@d{i % 13}.test,U{i}\n" for i in range(n))
    assert len(csv) > 3 * 65536
    prepared = check_audience(
        s.model_dump(by_alias=True, exclude_none=True), {"audience.csv": csv}, "ns/c", "u", NOW
    )
    assert prepared is not None and len(prepared.recipients) == n
