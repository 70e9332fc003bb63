"""No dead surface: every function, class, method and attribute of the production
packages has a caller (production code, a test, a benchmark) or is called by a
framework and listed in `tests/vulture_whitelist.py` with the reason.

Code nobody reaches still costs a reader (and a reviewer who keeps it correct);
vulture finds it by name, so a finding here is either removed or whitelisted.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from vulture import Vulture

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ["common/mailpipe", "operator/mailpipe", "relay/mailpipe", "devstack/mailpipe"]
CALLERS = ["tests", "bench"]


def test_no_production_code_is_unreachable() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["vulture"]
    v = Vulture(
        ignore_names=settings["ignore_names"], ignore_decorators=settings["ignore_decorators"]
    )
    v.scavenge([str(ROOT / p) for p in PRODUCTION + CALLERS])
    unused = [
        item.get_report(add_size=False)
        for item in v.get_unused_code(min_confidence=settings["min_confidence"])
        if any(Path(item.filename).is_relative_to(ROOT / p) for p in PRODUCTION)
    ]
    assert unused == [], "remove it, or say in tests/vulture_whitelist.py who calls it"
