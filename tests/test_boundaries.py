"""One boundary module per external client: the import-linter contracts that say
which modules may import the Kubernetes client and kafka-python are kept.

`make lint` runs every contract; this runs the two boundary contracts in the
unit suite too, so a handler that imports a client directly fails a test run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY_CONTRACTS = ("kubernetes-only-at-its-boundary", "kafka-only-at-its-boundary")


def test_the_kubernetes_and_kafka_clients_are_imported_only_at_their_boundaries() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    args = [str(lint_imports), "--no-cache"]
    for contract in BOUNDARY_CONTRACTS:
        args += ["--contract", contract]
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert run.stdout.count("KEPT") == len(BOUNDARY_CONTRACTS), run.stdout
