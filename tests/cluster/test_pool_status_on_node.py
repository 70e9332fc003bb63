"""A SendingPool's status from its relay pods, each trouble made real on the node.

The operator runs from the chart as a pod and watches only this module's
tenant namespace (`operator.watchNamespaces`: the session's API server holds
other tests' pools). Each test gives a pool relay pods that really fail on
the node: an image that is not in the node's containerd (and no registry to
pull it from), a container that exits, one killed for its memory limit, one
that no node has room for, one whose readiness probe never passes. The pool's
Ready condition must name the trouble with its own reason and the pod's words,
a Warning Event must say it, and it must clear when the pods recover.

The two small images (a container that exits, one that never answers its
probes) are the node's pause binary under the chart image's repository, so
the cluster policy's allowed images admit them; they are imported like the
real one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mailpipe.devstack import harness, oci, paths
from mailpipe.devstack.node import Node
from mailpipe.devstack.stack import StackState
from tests.cluster.conftest import (
    Image,
    campaign_manifest,
    install,
    operator_pods,
    sending_pool,
    uninstall,
)
from tests.conftest import wait_for

# The first test also waits for the image (a cold build took 9 minutes on a
# loaded machine) and the last one for `helm uninstall` (up to 6 minutes).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

OPERATOR_READY_TIMEOUT_SECONDS = 240  # as in test_chart_on_node: image unpack, kopf start
# The kubelet's first pull attempt, a container's first exits, the scheduler's
# first try: all within seconds; the margin is for a loaded 2-core machine.
TROUBLE_TIMEOUT_SECONDS = 120
# A running relay that is not Ready is called so after relay_pods' grace (60 s).
NOT_READY_TIMEOUT_SECONDS = 240
RELAY_READY_TIMEOUT_SECONDS = 240  # the real relay joins Kafka (test_chart_on_node)
POLL_SECONDS = 0.2  # how finely the pod's and the pool's change times are taken
GONE_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Operator:
    env: dict[str, str]
    api: client.ApiClient
    tenant: str
    repository: str
    images: dict[str, str]  # what the small images are named: "exits", "sleeps"


def _small_image(node: Node, repository: str, tag: str, entrypoint: list[str], tmp: Path) -> str:
    """The pause binary as `repository:tag` with `entrypoint`, imported into the node."""
    pause = paths.binary("pause").read_bytes()
    name = f"{repository}:{tag}"
    archive = oci.build_archive(
        name, [oci.ImageFile("pause", pause)], oci.ImageConfig(entrypoint=entrypoint)
    )
    path = tmp / f"{tag}.oci.tar"
    path.write_bytes(archive.data)
    assert name in node.import_image(path)
    return name


@pytest.fixture(scope="module")
def operator(
    node: Node,
    imported: list[str],
    image: Image,
    stack_state: StackState,
    kube_api: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """The chart's operator as a pod, watching one tenant namespace of its own."""
    env = {**os.environ, **stack_state.env()}
    bootstrap = node.expose_kafka(stack_state)
    suffix = uuid.uuid4().hex[:8]
    release, namespace, tenant = f"s{suffix}", f"mailpipe-s{suffix}", f"pods-{suffix}"
    repository = image.reference.rsplit(":", 1)[0]
    tmp = tmp_path_factory.mktemp("small-images")
    images = {
        # `pause tcp-banner relay --config ...`: "relay" is no host:port, it exits 1
        "exits": _small_image(node, repository, "exits", ["/pause", "tcp-banner"], tmp),
        # plain pause ignores the relay's arguments and waits: no /readyz ever answers
        "sleeps": _small_image(node, repository, "sleeps", ["/pause"], tmp),
    }
    harness.kubectl_ok(env, "create", "namespace", tenant)
    install(
        env,
        release,
        namespace,
        image,
        f"kafka.bootstrapServers={bootstrap}",
        f"operator.watchNamespaces={{{tenant}}}",
        f"policy.allowedImages={{{repository}:*}}",
        f"policy.allowedBootstrapServers={{{bootstrap}}}",
    )
    try:

        def operator_ready() -> bool:
            pods = operator_pods(env, namespace, release)
            return len(pods) == 1 and harness.condition_true(pods[0])

        wait_for(operator_ready, OPERATOR_READY_TIMEOUT_SECONDS, "the operator pod Ready")
        yield Operator(env, kube_api, tenant, repository, images)
    finally:
        harness.kubectl(env, "delete", "sendingpools", "--all", "-n", tenant, "--wait=true")
        uninstall(env, release, namespace)
        harness.kubectl(env, "delete", "namespace", tenant, namespace, "--wait=false")


@dataclass(frozen=True)
class Pool:
    """The test's pool: its own name, so no test waits for another's topics to go."""

    op: Operator
    name: str

    def apply(self, **spec: Any) -> None:
        harness.apply(self.op.env, sending_pool(self.name, self.op.tenant, **spec))


@pytest.fixture
def pool(operator: Operator, unique: str) -> Iterator[Pool]:
    """The test's pool (applied by the test); deleted, its pods gone, after it."""
    made = Pool(operator, f"p{unique}")
    yield made
    harness.kubectl(operator.env, "delete", "sendingpool", made.name, "-n", operator.tenant)
    wait_for(lambda: _pods(made) == [], GONE_TIMEOUT_SECONDS, "the pool's relay pods gone")


def _pods(pool: Pool) -> list[dict[str, Any]]:
    listed: Any = client.CoreV1Api(pool.op.api).list_namespaced_pod(
        pool.op.tenant, label_selector=f"mailpipe.io/pool={pool.name}", _preload_content=False
    )
    items: list[dict[str, Any]] = json.loads(listed.data)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pool: Pool) -> dict[str, Any]:
    obj = harness.get_object(pool.op.env, "sp", pool.name, pool.op.tenant) or {}
    found = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    return found[0] if found else {}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    statuses: list[dict[str, Any]] = pod.get("status", {}).get("containerStatuses") or []
    return statuses


@dataclass(frozen=True)
class Seen:
    pod_at: float  # monotonic: when the pod was first seen in the state
    pool_at: float  # when the pool's Ready first said so
    ready: dict[str, Any]  # the pool's Ready condition then

    @property
    def lag(self) -> float:
        """Pod state to pool condition, seconds (0 or less: seen by the pool
        before this poll saw the pod)."""
        return self.pool_at - self.pod_at


def _observe(
    pool: Pool,
    pod_in_state: Callable[[dict[str, Any]], bool],
    pool_says: Callable[[dict[str, Any]], bool],
    timeout_seconds: float,
    what: str,
) -> Seen:
    """Poll the pool's pods and its Ready condition until both show the state;
    when each first did."""
    pod_at: float | None = None
    pool_at: float | None = None
    ready: dict[str, Any] = {}

    def both() -> bool:
        nonlocal pod_at, pool_at, ready
        now = time.monotonic()
        if pod_at is None and any(pod_in_state(p) for p in _pods(pool)):
            pod_at = now
        if pool_at is None:
            current = _ready(pool)
            if pool_says(current):
                pool_at, ready = now, current
        return pod_at is not None and pool_at is not None

    wait_for_seconds(both, timeout_seconds, what)
    assert pod_at is not None and pool_at is not None
    return Seen(pod_at, pool_at, ready)


def wait_for_seconds(condition: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    """`wait_for`, polling finely: the change times are what is measured."""
    try:
        harness.wait_for(condition, timeout_seconds, what, interval_seconds=POLL_SECONDS)
    except harness.HarnessError as exc:
        raise AssertionError(str(exc)) from None


def _events(pool: Pool, reason: str) -> list[dict[str, Any]]:
    listed = client.CoreV1Api(pool.op.api).list_namespaced_event(
        pool.op.tenant, field_selector=f"involvedObject.name={pool.name},reason={reason}"
    )
    return [{"type": e.type, "message": e.message} for e in listed.items]


def _report(what: str, seen: Seen) -> None:
    print(f"OBSERVED {what}: pool {seen.ready.get('reason')} {seen.lag:+.1f}s after the pod")
    print(f"  message: {seen.ready.get('message')}")


def _waiting(reasons: set[str]) -> Callable[[dict[str, Any]], bool]:
    def check(pod: dict[str, Any]) -> bool:
        return any(
            (c.get("state", {}).get("waiting") or {}).get("reason") in reasons
            for c in _containers(pod)
        )

    return check


def _says(reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ready: ready.get("status") == "False" and ready.get("reason") == reason


def test_an_image_that_is_not_there_then_is(pool: Pool, image: Image) -> None:
    absent = f"{pool.op.repository}:not-imported"
    pool.apply(image=absent)
    seen = _observe(
        pool,
        _waiting({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"}),
        _says("ImagePullFailed"),
        TROUBLE_TIMEOUT_SECONDS,
        "the pool ImagePullFailed",
    )
    _report("image not imported", seen)
    message = seen.ready["message"]
    assert message.startswith(f"0/1 relays available: relay pod mailpipe-relay-{pool.name}-"), (
        message
    )
    assert f'cannot get image "{absent}"' in message, message
    wait_for(
        lambda: any(e["type"] == "Warning" for e in _events(pool, "ImagePullFailed")),
        TROUBLE_TIMEOUT_SECONDS,
        "a Warning Event ImagePullFailed on the pool",
    )
    # The image named is one the node has: the trouble clears with the pods.
    pool.apply(image=image.reference)
    recovered = _observe(
        pool,
        lambda p: any(c.get("ready") for c in _containers(p)),
        lambda ready: ready.get("status") == "True",
        RELAY_READY_TIMEOUT_SECONDS,
        "the pool Ready again",
    )
    _report("image fixed, relay Ready", recovered)
    assert recovered.ready["reason"] == "RelaysAvailable", recovered.ready
    wait_for(
        lambda: any(e["type"] == "Normal" for e in _events(pool, "RelaysRecovered")),
        TROUBLE_TIMEOUT_SECONDS,
        "a Normal Event RelaysRecovered on the pool",
    )


def test_a_relay_that_exits_is_crash_looping(pool: Pool) -> None:
    pool.apply(image=pool.op.images["exits"])

    def exited(pod: dict[str, Any]) -> bool:  # its first exit, before any back-off
        return any(
            (c.get(key, {}).get("terminated") or {}).get("exitCode", 0) != 0
            for c in _containers(pod)
            for key in ("state", "lastState")
        )

    seen = _observe(
        pool,
        exited,
        _says("CrashLoopBackOff"),
        TROUBLE_TIMEOUT_SECONDS,
        "the pool CrashLoopBackOff",
    )
    _report("container exits", seen)
    message = seen.ready["message"]
    assert "container relay keeps exiting (exit code 1)" in message, message
    # the end of its log, kept by terminationMessagePolicy FallbackToLogsOnError
    assert "connect relay failed" in message, message
    wait_for(
        lambda: any(e["type"] == "Warning" for e in _events(pool, "CrashLoopBackOff")),
        TROUBLE_TIMEOUT_SECONDS,
        "a Warning Event CrashLoopBackOff on the pool",
    )
    # A campaign for the pool waits, in the pool's words; it does not fail.
    env, tenant = pool.op.env, pool.op.tenant
    harness.apply(env, campaign_manifest("spring", tenant, pool.name, ["u1@x.test"]))
    try:
        wanted = f"waiting for the pool: pool {pool.name} is not Ready: CrashLoopBackOff: "

        def waiting() -> bool:
            camp = harness.get_object(env, "camp", "spring", tenant) or {}
            ready = [
                c for c in camp.get("status", {}).get("conditions", []) if c["type"] == "Ready"
            ]
            return bool(ready) and wanted in ready[0].get("message", "")

        wait_for(waiting, TROUBLE_TIMEOUT_SECONDS, f"the campaign saying {wanted!r}")
        camp = harness.get_object(env, "camp", "spring", tenant) or {}
        assert camp["status"]["phase"] == "Pending", camp["status"]
    finally:
        harness.kubectl(env, "delete", "campaign", "spring", "-n", tenant)


def test_a_relay_over_its_memory_limit_is_oom_killed(pool: Pool) -> None:
    # The relay's Python and its libraries need several times this much.
    pool.apply(resources={"limits": {"memory": "20Mi"}})

    def oom_killed(pod: dict[str, Any]) -> bool:
        return any(
            (c.get(key, {}).get("terminated") or {}).get("reason") == "OOMKilled"
            for c in _containers(pod)
            for key in ("state", "lastState")
        )

    seen = _observe(
        pool, oom_killed, _says("OOMKilled"), TROUBLE_TIMEOUT_SECONDS, "the pool OOMKilled"
    )
    _report("memory limit 20Mi", seen)
    assert "exceeding its memory limit of 20Mi" in seen.ready["message"], seen.ready


def test_a_relay_no_node_has_room_for_is_unschedulable(pool: Pool) -> None:
    pool.apply(resources={"requests": {"cpu": "64"}})

    def unschedulable(pod: dict[str, Any]) -> bool:
        conditions = pod.get("status", {}).get("conditions") or []
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions
        )

    seen = _observe(
        pool,
        unschedulable,
        _says("Unschedulable"),
        TROUBLE_TIMEOUT_SECONDS,
        "the pool Unschedulable",
    )
    _report("requests 64 CPUs", seen)
    assert "cannot be scheduled: 0/1 nodes are available" in seen.ready["message"], seen.ready
    assert "Insufficient cpu" in seen.ready["message"], seen.ready


def test_a_relay_whose_readiness_probe_never_passes(pool: Pool) -> None:
    pool.apply(image=pool.op.images["sleeps"])

    def running_unready(pod: dict[str, Any]) -> bool:
        return any("running" in c.get("state", {}) and not c.get("ready") for c in _containers(pod))

    seen = _observe(
        pool,
        running_unready,
        _says("RelaysNotReady"),
        NOT_READY_TIMEOUT_SECONDS,
        "the pool RelaysNotReady",
    )
    _report("readiness probe never passes (lag includes the 60 s grace)", seen)
    assert "is not Ready" in seen.ready["message"], seen.ready
