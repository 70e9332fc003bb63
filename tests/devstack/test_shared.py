"""The stack shared by pytest-xdist workers (`mailpipe.devstack.shared`): its
sharers may use it, and are told, in one line, when they try to change it for
everyone (the soak set the DNS records from a parallel worker, replacing those
of the workers beside it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mailpipe.devstack.shared import SharedStack, SharedStackChanged, live_users


def test_a_sharer_may_not_replace_the_dns_records(tmp_path: Path) -> None:
    with pytest.raises(SharedStackChanged, match="mark it exclusive"):
        SharedStack(tmp_path).set_dns([])


def test_a_sharer_may_not_stop_a_component(tmp_path: Path) -> None:
    with pytest.raises(SharedStackChanged, match="stopping kafka stops it for every worker"):
        SharedStack(tmp_path).stop_component("kafka", signal.SIGKILL)


def test_the_starter_waits_only_for_live_users(tmp_path: Path) -> None:
    """A worker that crashed never detaches: the starter must not wait for it."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    live = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        (tmp_path / "users").write_text(f"{os.getpid()} {dead.stdout.strip()} {live.pid}")
        assert live_users(tmp_path, but=os.getpid()) == {live.pid}
    finally:
        live.kill()
        live.wait()
    assert live_users(tmp_path, but=os.getpid()) == set()
