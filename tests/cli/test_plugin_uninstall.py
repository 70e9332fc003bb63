"""`kubectl mailpipe uninstall` says what the operator left behind (issue 18, 5).

Before: a pool whose topics the operator kept on deletion (Warning
`TopicsKept`) was reported as cleanly gone: `every Campaign and SendingPool
is gone`, exit 0, with all its topics still on Kafka. Here the operator gives
up on topic deletion at once (MAILPIPE_DELETE_GIVE_UP_SECONDS=0, what a Kafka
that stays unreachable for 5 minutes comes to), so its topics stay.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from mailpipe.contracts.topics import owned_topics
from mailpipe.devstack.harness import Child
from mailpipe.kafkakit import list_topics
from tests.operator.integration.conftest import ready_pool, wait_for

from .conftest import plugin

pytestmark = pytest.mark.operator

# outbound, events, dlq, 2 delays (the broker's metadata may lag the creation a moment)
POOL_TOPICS = 5


def test_uninstall_reports_the_topics_the_operator_kept(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory(MAILPIPE_DELETE_GIVE_UP_SECONDS="0")
    ready_pool(cli_env, namespace, kafka_bootstrap, topic_prefix, op)
    wait_for(
        lambda: len(owned_topics(topic_prefix, list_topics(kafka_bootstrap))) == POOL_TOPICS,
        30,
        "pool topics",
        op,
    )

    out = plugin(cli_env, "uninstall", "-n", namespace, "--timeout", "120")
    assert out.returncode == 1, out.stdout + out.stderr + op.log_section()
    assert "every Campaign and SendingPool is gone, but Kafka topics remain:" in out.stdout
    assert f"sendingpools/news -n {namespace}: gave up after 0s" in out.stdout, out.stdout
    # The command it names deletes exactly the pool's topics, which are still there.
    [pattern] = re.findall(
        rf"kafka-topics\.sh --bootstrap-server {re.escape(kafka_bootstrap)} "
        r"--delete --topic '([^']+)'",
        out.stdout,
    )
    kept = owned_topics(topic_prefix, list_topics(kafka_bootstrap))
    assert len(kept) == POOL_TOPICS
    matched = sorted(t for t in list_topics(kafka_bootstrap) if re.fullmatch(pattern, t))
    assert matched == sorted(kept)
