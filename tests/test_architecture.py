"""ARCHITECTURE.md stays true: every test it names as a guard exists, and every
file it names in "Where to look" and the module map exists."""

from __future__ import annotations

import re
import subprocess
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


# Citations: a rule is cited by its name, never by a number that only says in
# which order the rules arrived (the map renumbers, the code would not follow).
HEADINGS = {h.strip().lower() for h in re.findall(r"^#{2,3} (.+)$", DOC, re.M)}
INVARIANTS = re.findall(r"^### (.+)$", DOC.split("\n## Invariants\n", 1)[1].split("\n## ")[0], re.M)
NUMBERED = re.compile(r"\binvariants?\s+(?:no\.?\s*|#)?\d+|\binv\.?\s*#?\d+\b", re.I)
# The forms: `ARCHITECTURE.md, "Nothing lost"`, several names after one
# `ARCHITECTURE.md,` joined by commas or "and", `invariant "Nothing lost"`, and
# `"Nothing lost" (ARCHITECTURE.md)`.
NAMED = re.compile(
    r'ARCHITECTURE\.md,?\s+((?:"[^"]+"(?:,\s*|\s+and\s+)?)+)|invariants?\s+"([^"]+)"'
)
NAMED_BEFORE = re.compile(r'"([^"]+)"\s+\(ARCHITECTURE\.md\)')


def _cited_texts() -> dict[str, str]:
    """Every tracked text file but the map, with line breaks and comment marks folded
    into spaces so a citation wrapped over two lines is still one citation."""
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    texts: dict[str, str] = {}
    for name in out:
        path = ROOT / name
        if name == "ARCHITECTURE.md" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        texts[name] = re.sub(r"\s*\n\s*(?:#+\s*)?", " ", text)
    return texts


def test_no_file_cites_an_invariant_by_number() -> None:
    texts = _cited_texts()
    assert "relay/mailpipe/relay/engine.py" in texts
    numbered = [f"{name}: {m.group(0)}" for name, t in texts.items() for m in NUMBERED.finditer(t)]
    assert numbered == [], "cite the rule by its name in ARCHITECTURE.md, not by a number"


def test_every_cited_name_is_defined_in_the_map() -> None:
    cited: list[tuple[str, str]] = []
    for name, text in _cited_texts().items():
        for m in NAMED.finditer(text):
            for quoted in re.findall(r'"([^"]+)"', m.group(1) or f'"{m.group(2)}"'):
                cited.append((name, quoted))
        cited += [(name, q) for q in NAMED_BEFORE.findall(text)]
    assert len(cited) > 20
    undefined = sorted(f"{f}: {q!r}" for f, q in cited if q.strip().lower() not in HEADINGS)
    assert undefined == [], f"not a section or invariant of ARCHITECTURE.md: {sorted(HEADINGS)}"


def test_the_map_stays_a_map() -> None:
    """A few screens and at most twelve rules, each naming the tests that guard it."""
    assert len(DOC.splitlines()) <= 270  # about 250: new parts replace words
    assert 1 <= len(INVARIANTS) <= 12
    sections = DOC.split("\n## Invariants\n", 1)[1].split("\n## ")[0].split("\n### ")[1:]
    unguarded = [s.splitlines()[0] for s in sections if not re.search(r"`tests/\S+::\w+`", s)]
    assert unguarded == []
