"""Feedback receiver harness: the relay's pools and processes, and `mailpipe feedback` children."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailpipe.devstack.harness import Child, Children
from tests.relay.integration.conftest import (  # noqa: F401 (fixtures used here)
    Pool,
    pool_factory,
    relays,
    routed_pool,
)


@pytest.fixture
def feedback_servers(tmp_path: Path) -> Iterator[Callable[[Pool], Child]]:
    """Starts `mailpipe feedback --config <pool config>` children; stopped after the test."""
    (tmp_path / "feedback").mkdir(exist_ok=True)
    with Children(tmp_path / "feedback") as children:

        def start(pool: Pool) -> Child:
            return children.mailpipe(
                "feedback", ["feedback", "--config", str(pool.path), "--receiver-id", "fb-test"]
            )

        yield start
