"""Topic creation for many pools at once: a bounded number of admin clients, and
concurrent requests grouped into few CreateTopics calls (issue 12, point 8)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

from mailpipe.operator.kafka_io import ADMIN_CLIENTS_PER_CLUSTER, Admins

POOLS = 40
ROUND_TRIP_SECONDS = 0.05  # a controller round trip, long enough for callers to pile up


class FakeAdmin:
    def __init__(self, existing: set[str], refused: set[str]) -> None:
        self.existing = existing
        self.refused = refused
        self.calls: list[list[str]] = []

    def create_topics(self, topics: list[NewTopic], **_: Any) -> dict[str, Any]:
        names = [t.name for t in topics]
        assert len(names) == len(set(names))  # a name twice in one request is refused
        self.calls.append(names)
        time.sleep(ROUND_TRIP_SECONDS)
        out = []
        for name in names:
            if name in self.refused:
                code = TopicAuthorizationFailedError.errno
            elif name in self.existing:
                code = TopicAlreadyExistsError.errno
            else:
                code = 0
                self.existing.add(name)
            out.append({"name": name, "error_code": code, "error_message": None})
        return {"topics": out}

    def close(self) -> None:
        pass


def test_many_pools_at_once_share_few_clients_and_few_requests() -> None:
    made: list[FakeAdmin] = []
    existing = {"p0.events"}

    def factory(bootstrap: str) -> FakeAdmin:
        made.append(FakeAdmin(existing, set()))
        return made[-1]

    admins = Admins(factory)  # type: ignore[arg-type]
    results: dict[int, list[str]] = {}

    def reconcile(i: int) -> None:
        results[i] = admins.ensure_topics(
            "k:9092", [f"p{i}.outbound", f"p{i}.events"], 1, 1, compacted=[f"p{i}.control"]
        )

    threads = [threading.Thread(target=reconcile, args=(i,)) for i in range(POOLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) <= ADMIN_CLIENTS_PER_CLUSTER
    requests = sum(len(a.calls) for a in made)
    assert requests < POOLS / 4, requests  # grouped, not one round trip per pool
    assert results[0] == ["p0.outbound", "p0.control"]  # p0.events existed already
    assert all(
        results[i] == [f"p{i}.outbound", f"p{i}.events", f"p{i}.control"] for i in range(1, POOLS)
    )


def test_a_refused_topic_fails_only_the_pool_that_asked_for_it() -> None:
    admin = FakeAdmin(set(), {"bad.events"})
    admins = Admins(lambda _: admin)  # type: ignore[arg-type,return-value]
    with pytest.raises(TopicAuthorizationFailedError, match=r"bad\.events"):
        admins.ensure_topics("k:9092", ["bad.events"], 1, 1)
    assert admins.ensure_topics("k:9092", ["good.events"], 1, 1) == ["good.events"]
