"""The plugin against the real stack: `kubectl mailpipe ...` as users run it.

kubectl finds the `kubectl-mailpipe` executable on PATH (the venv's bin), as
it does on a user's machine. The operator runs as a process (the operator
integration fixtures, shared from there), beside an installed chart when what
the chart renders is the point; as the chart's pod in tests/cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mailpipe.devstack.harness import kubectl
from tests.operator.integration.conftest import (  # noqa: F401  (fixtures, used by name)
    crds,
    operator_factory,
    ready_operator,
)

PLUGIN_BIN = Path(sys.executable).parent  # where the venv installed `kubectl-mailpipe`


def plugin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl mailpipe <args>`: kubectl finds the plugin on PATH."""
    path = f"{PLUGIN_BIN}{os.pathsep}{env.get('PATH', '')}"
    return kubectl({**env, "PATH": path}, "mailpipe", *args)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The plugin's error: exactly one line on stderr, no traceback, no
    validation dump; returned for the caller's checks of what it says."""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr and "pydantic" not in out.stderr, out.stderr
    return lines[0]
