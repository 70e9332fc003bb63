"""The submission endpoint's counters carry only the words it declares, each
exported from the start (a dashboard's rate() needs the series before the
first refusal, and its panels filter on these words)."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import CollectorRegistry

from mailpipe.inbound import submission
from mailpipe.inbound.submission import (
    LOGIN_RESULTS,
    MESSAGE_OUTCOMES,
    REFUSAL_REASONS,
    SubmissionMetrics,
)

SOURCE = Path(submission.__file__)
DECLARED = {"refused": REFUSAL_REASONS, "messages": MESSAGE_OUTCOMES, "logins": LOGIN_RESULTS}


def _words_used() -> dict[str, set[str]]:
    """Counter attribute -> the literal label values the module passes it
    (`x.refused.labels("rate")`, and `self._refuse("rate", ...)` for refused)."""
    used: dict[str, set[str]] = {k: set() for k in DECLARED}
    for node in ast.walk(ast.parse(SOURCE.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        first = node.args[0] if node.args else None
        if not isinstance(first, ast.Constant) or not isinstance(first.value, str):
            continue
        func = node.func
        if func.attr == "_refuse":
            used["refused"].add(first.value)
        elif (
            func.attr == "labels"
            and isinstance(func.value, ast.Attribute)
            and func.value.attr in used
        ):
            used[func.value.attr].add(first.value)
    return used


def test_every_label_the_endpoint_writes_is_declared() -> None:
    used = _words_used()
    assert used["refused"] >= {"unauthenticated", "sender_domain", "not_utf8"}  # the scan works
    undeclared = {k: sorted(v - set(DECLARED[k])) for k, v in used.items() if v - set(DECLARED[k])}
    assert undeclared == {}


def test_every_declared_series_is_exported_at_zero() -> None:
    registry = CollectorRegistry()
    SubmissionMetrics(registry)
    for attribute, words in DECLARED.items():
        name = f"mailpipe_submission_{attribute}_total"
        label = {"refused": "reason", "messages": "outcome", "logins": "result"}[attribute]
        for word in words:
            assert registry.get_sample_value(name, {label: word}) == 0.0, (name, word)
