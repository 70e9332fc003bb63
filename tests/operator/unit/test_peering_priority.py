"""Peering settings of `mailpipe operator`: seniority priorities and the keep-alive lifetime.

kopf pauses the replica that sees a live peer with a higher priority, and every
replica when two share one; the live election is `tests/cluster/test_peering_on_node.py`.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from mailpipe.operator import main

MS = 1_000_000  # ns
INT64_MAX = 2**63 - 1
YEAR_2245_NS = 8_700_000_000_000 * MS  # ~2245-09 in epoch ms, as ns


def test_an_earlier_start_has_the_higher_priority_whatever_the_tie_break() -> None:
    earlier = main.seniority_priority(1_000 * MS, main.TIE_SPAN - 1)
    later = main.seniority_priority(1_001 * MS, 0)
    assert earlier > later


def test_the_tie_break_separates_replicas_of_the_same_millisecond() -> None:
    same = {main.seniority_priority(1_000 * MS + 5, tie) for tie in (0, 1, main.TIE_SPAN - 1)}
    assert len(same) == 3


def test_priorities_fit_a_kubernetes_int64_for_centuries() -> None:
    assert main.seniority_priority(YEAR_2245_NS, main.TIE_SPAN - 1) >= -INT64_MAX


def test_a_tie_break_outside_its_span_is_refused() -> None:
    with pytest.raises(ValueError, match="tie_break"):
        main.seniority_priority(0, main.TIE_SPAN)


def run_args(monkeypatch: pytest.MonkeyPatch, *argv: str, at_ms: int = 0) -> dict[str, Any]:
    """What `mailpipe operator <argv>`, started at `at_ms`, hands to kopf.run."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(main, "time", SimpleNamespace(time_ns=lambda: at_ms * MS))
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.delenv("MAILPIPE_PEERING_LIFETIME", raising=False)
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    assert main.run(parser.parse_args(["--liveness-port=0", "--metrics-port=0", *argv])) == 0
    return seen


def test_peering_replicas_get_a_seniority_priority_and_the_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = run_args(monkeypatch, "--peering=mailpipe", "--peering-lifetime=45", at_ms=1_000)
    second = run_args(monkeypatch, "--peering=mailpipe", at_ms=1_001)
    assert (first["peering_name"], first["standalone"]) == ("mailpipe", False)
    assert first["priority"] > second["priority"]  # started first
    assert first["settings"].peering.lifetime == 45
    assert second["settings"].peering.lifetime == main.PEERING_LIFETIME_SECONDS


def test_an_explicit_priority_wins_and_standalone_needs_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_args(monkeypatch, "--peering=mailpipe", "--priority=7")["priority"] == 7
    alone = run_args(monkeypatch)
    assert (alone["standalone"], alone["priority"]) == (True, 0)
