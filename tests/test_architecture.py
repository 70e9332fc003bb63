"""ARCHITECTURE.md stays true: every test it names as a guard exists, and every
file it names in "Where to look" and the module map exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "ARCHITECTURE.md").read_text()


def _cited_tests() -> list[tuple[str, str]]:
    """`path.py::name` and the `::name` shorthand that reuses the previous path."""
    out: list[tuple[str, str]] = []
    path = ""
    for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`", DOC):
        path = m.group(1) or path
        out.append((path, m.group(2)))
    return out


def test_every_cited_guard_test_exists() -> None:
    cited = _cited_tests()
    assert len(cited) > 10
    missing = [
        f"{path}::{name}"
        for path, name in cited
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    assert missing == []


def test_every_cited_file_exists() -> None:
    files = set(re.findall(r"`((?:relay|operator|common|devstack|tests)/[\w/]+\.py)", DOC))
    assert len(files) > 5
    assert sorted(f for f in files if not (ROOT / f).exists()) == []
