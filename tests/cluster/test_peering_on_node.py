"""`operator.replicas: 2` with peering, as pods: exactly one replica acts, and the other takes over.

The chart installed on the node with one operator replica, then upgraded to
two (so which is the earlier is known), each pod with its name as kopf's
identity, against the KopfPeering object the chart installs. kopf's rule:
the replica that sees a live peer with a higher priority pauses (equal
priorities would pause both; a replica's priority falls with its start time).
Proven by behaviour, not only by the pause lines: while the active pod
reconciles a pool (its relay pod Ready on the node) and fans out a campaign,
the standby runs no handler at all (not one `kopf.objects` line: two active
replicas both log them), and the campaign's outbound topic holds each
recipient once. The active pod's process is then killed (SIGKILL through the
node's containerd: no clean exit, its keep-alive just stops) or its pod
deleted (SIGTERM, as on a rolling update or a drained node), the standby
resumes within the documented bound, and a campaign created after the
hand-over is fanned out by the survivor, again exactly once. The SIGKILL lands
in the middle of a campaign of 10,000 recipients (checkpoints every 250): the
survivor resumes from the checkpoint and each recipient is on the outbound
topic exactly once.

Which replica is active is read from kopf's own log lines, and that needs
care (why this test once failed one run in two): every peering replica
*starts* paused (kopf pre-activates the pause when peering is mandatory,
kopf/_core/engines/orchestration.py:229) and kopf logs only changes of that
state (peering.py:138-150, `if conflicts_found.is_off()`). A replica that
meets a higher-priority peer at its first look stays paused without a word,
its peering worker asleep until that peer's keep-alive expires (peering.py:159).
So the state is: paused, until "Resuming operations", until "Pausing operations".
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mailpipe.contracts.topics import Topics
from mailpipe.devstack import harness
from mailpipe.devstack.node import Node
from mailpipe.devstack.stack import StackState
from mailpipe.kafkakit import read_topic
from mailpipe.operator import fanout_lease
from tests.cluster.conftest import CHART, ROOT, Image, install, operator_pods, uninstall
from tests.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

PEERING = "mailpipe"  # the chart's peering.name
# The chart's peering.lifetimeSeconds in the crash test: its schema's minimum,
# so the test waits as little as a chart allows for a dead replica's keep-alive.
LIFETIME_SECONDS = 15
# ...and in the clean-stop test: long, so a hand-over well within it cannot
# have come from the keep-alive expiring (the leaving replica removed itself).
CLEAN_STOP_LIFETIME_SECONDS = 120
CLEAN_HANDOVER_SECONDS = 30  # SIGTERM to the standby's resume, on a loaded machine
# After a crash the standby resumes when the dead peer's keep-alive expires
# (at most the lifetime after the crash), plus its own watch event round trip
# and a `kubectl logs` of it.
CRASH_HANDOVER_SECONDS = LIFETIME_SECONDS + 15
# Image unpack, Python and kopf start-up on a loaded 2-core machine, then the
# first peering keep-alive.
ELECTION_SECONDS = 240
RELAY_READY_SECONDS = 240  # topics created, the relay pod started, its consumer joined
FANOUT_SECONDS = 120
AUDIENCE = 20
# The campaign the acting replica is killed in the middle of: a checkpoint every
# FANOUT_CHUNK records (the operator's MAILPIPE_FANOUT_CHUNK, 2000 by default),
# and the kill once MID_FANOUT records are past a checkpoint, well before the end.
BIG_AUDIENCE = 10_000
FANOUT_CHUNK = 250
MID_FANOUT = 1_000
MID_FANOUT_SECONDS = 180  # the audience checked and rendered, then the first chunks
# A replica resumes a fan-out another process held once that holder wrote
# nothing for fanout_lease.TAKEOVER_SECONDS (20 s; the broker fences the old
# holder, so it no longer has to outlast a chunk's way to Kafka): shorter than
# the keep-alive lifetime a standby waits out anyway, so the default is tested.
TAKEOVER_SECONDS = fanout_lease.TAKEOVER_SECONDS
POLL_SECONDS = 0.2  # how finely the fan-out's progress is watched for the kill

STARTED = re.compile(rf"peering '{PEERING}' as (\S+), priority (-?\d+)")  # main.run
RESUMED = "Resuming operations after the pause"  # kopf peering.py:150
OBJECT_LOG = " kopf.objects "  # the logger of every handler, timer and daemon kopf runs
PAUSED = re.compile(r"kopf\._core\.engines\.peering Pausing (operations|all operators)")


@dataclass(frozen=True, eq=False)  # hashed by identity: its env is a dict
class Replica:
    """One operator pod; its log is its current container's (`kubectl logs`)."""

    env: dict[str, str]
    namespace: str
    name: str

    def log(self) -> str:
        got = harness.kubectl(self.env, "logs", "-n", self.namespace, self.name)
        return got.stdout if got.returncode == 0 else ""

    def section(self) -> str:
        return f"\n--- pod {self.name} ---\n{self.log()[-4000:]}"


def wait_seen(
    condition: Callable[[], bool], timeout_seconds: float, what: str, *replicas: Replica
) -> None:
    """`wait_for`, failing with the replicas' logs as they are at the deadline."""
    try:
        wait_for(condition, timeout_seconds, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{''.join(r.section() for r in replicas)}") from None


def started_as(replica: Replica) -> tuple[str, int]:
    """(peer identity, priority) the replica logged at start."""
    found = STARTED.search(replica.log())
    assert found, replica.section()
    return found[1], int(found[2])


def active(replica: Replica) -> bool:
    """Whether kopf lets `replica` act now (see the module docstring)."""
    state = False
    for line in replica.log().splitlines():
        if RESUMED in line:
            state = True
        elif PAUSED.search(line):
            state = False
    return state


def peers(env: dict[str, str], namespace: str) -> dict[str, dict[str, Any]]:
    # the full resource name: a discovery cache from before the CRD knows no short one
    obj = harness.get_object(env, "kopfpeerings.kopf.dev", PEERING, namespace) or {}
    return dict(obj.get("status") or {})


def running_pods(env: dict[str, str], namespace: str, release: str) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in operator_pods(env, namespace, release)
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    ]


@dataclass(frozen=True)
class Release:
    env: dict[str, str]
    name: str
    namespace: str
    bootstrap: str  # the host's, to read topics


@pytest.fixture
def release(
    node: Node, imported: list[str], image: Image, stack_state: StackState, unique: str
) -> Iterator[tuple[Release, str, Image]]:
    """A namespace for the release and its CRs; uninstalled (hook included) afterwards."""
    env = {**os.environ, **stack_state.env()}
    pods_bootstrap = node.expose_kafka(stack_state)
    harness.kubectl_ok(env, "apply", "-f", str(ROOT / "crds"))
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        harness.kubectl_ok(env, "wait", "--for=condition=Established", f"crd/{crd}")
    rel = Release(env, f"pr{unique}", f"peer-{unique}", stack_state.kafka_bootstrap)
    yield rel, pods_bootstrap, image
    # the hook deletes the CRs while an operator still runs (it owns their finalizers)
    uninstall(env, rel.name, rel.namespace)
    harness.kubectl(env, "delete", "namespace", rel.namespace, "--wait=false")


def install_and_elect(
    rel: Release, pods_bootstrap: str, image: Image, lifetime: int, *operator_env: tuple[str, str]
) -> tuple[Replica, Replica]:
    """One replica, then a second once the first acts: (active, standby).

    The later replica pauses and the first never does: a replica that starts
    (a rolling update's new pod) never preempts one that is working."""
    env, namespace = rel.env, rel.namespace
    harness.kubectl_ok(env, "create", "namespace", namespace)  # the chart checks it exists
    install(
        env,
        rel.name,
        namespace,
        image,
        # only its own namespace: the session's API server holds other tests' CRs
        f"operator.watchNamespaces={{{namespace}}}",
        "operator.replicas=1",
        "peering.enabled=true",
        f"peering.lifetimeSeconds={lifetime}",
        f"kafka.bootstrapServers={pods_bootstrap}",
        f"policy.allowedImages={{{image.repository}:*}}",
        f"policy.allowedBootstrapServers={{{pods_bootstrap}}}",
        *[f"operator.env[{i}].name={name}" for i, (name, _) in enumerate(operator_env)],
        strings=tuple(
            f"operator.env[{i}].value={value}" for i, (_, value) in enumerate(operator_env)
        ),
    )
    wait_for(lambda: len(running_pods(env, namespace, rel.name)) == 1, ELECTION_SECONDS, "a pod")
    [name] = running_pods(env, namespace, rel.name)
    first = Replica(env, namespace, name)
    wait_seen(lambda: active(first), ELECTION_SECONDS, "the only replica active", first)
    harness.helm_ok(
        env, "upgrade", rel.name, str(CHART), "-n", namespace, "--reuse-values",
        "--set", "operator.replicas=2",
    )  # fmt: skip
    wait_for(lambda: len(peers(env, namespace)) == 2, ELECTION_SECONDS, "both in peering")
    [other] = [n for n in running_pods(env, namespace, rel.name) if n != first.name]
    second = Replica(env, namespace, other)
    wait_seen(lambda: STARTED.search(second.log()) is not None, ELECTION_SECONDS, "start", second)
    identities = {r: started_as(r) for r in (first, second)}
    # kopf's identity is the pod's name (POD_ID from the downward API)
    assert set(peers(env, namespace)) == {first.name, second.name}
    assert {pod for pod, _ in identities.values()} == {first.name, second.name}
    assert {p["priority"] for p in peers(env, namespace).values()} == {
        prio for _, prio in identities.values()
    }
    # kopf pauses the replica that sees a higher priority (equal ones: both)
    assert identities[first][1] > identities[second][1], identities
    # started paused, and its first look at the peering object kept it so (silently);
    # the first never paused, not even for a moment (its handlers below show it acts)
    assert active(first) and not active(second), first.section() + second.section()
    return first, second


def apply_pool(env: dict[str, str], namespace: str) -> None:
    pool = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "news", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "kafka": {"partitions": 1},
            # A loopback address: in the relay pod's own namespace it is local.
            "egressIPs": [{"address": "127.0.0.2", "helo": "egress.sender.test"}],
        },
    }
    harness.apply(env, pool)


def apply_campaign(env: dict[str, str], namespace: str, name: str) -> None:
    campaign = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "poolRef": "news",
            "from": {"address": "news@sender.test"},
            "subject": "Hello",
            "text": "Hi",
            "audience": {"inline": [{"address": f"{name}{i}@x.test"} for i in range(AUDIENCE)]},
        },
    }
    harness.apply(env, campaign)


def apply_big_campaign(env: dict[str, str], namespace: str, name: str) -> None:
    """A Campaign whose audience (BIG_AUDIENCE rows) is a ConfigMap's CSV."""
    csv = "address\n" + "".join(f"{name}{i}@d{i % 13}.test\n" for i in range(BIG_AUDIENCE))
    audience = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-audience", "namespace": namespace},
        "data": {"audience.csv": csv},
    }
    harness.apply(env, audience)
    campaign = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "poolRef": "news",
            "from": {"address": "news@sender.test"},
            "subject": "Hello",
            "text": "Hi",
            "audience": {"configMapRef": {"name": f"{name}-audience"}},
        },
    }
    harness.apply(env, campaign)


def fanout_status(rel: Release, name: str) -> dict[str, Any]:
    obj = harness.get_object(rel.env, "campaigns.mailpipe.io", name, rel.namespace) or {}
    return dict(obj.get("status", {}).get("fanout", {}))


def fanned_out(
    rel: Release, name: str, by: Replica, timeout: float = FANOUT_SECONDS
) -> Counter[str]:
    """Wait until campaign `name`'s fan-out is done; its record ids on the outbound
    topic, as the relays read them (read_committed: a chunk the kill left open
    is aborted by the survivor and never delivered)."""

    def state() -> Any:
        obj = harness.get_object(rel.env, "campaigns.mailpipe.io", name, rel.namespace) or {}
        return obj.get("status", {}).get("fanout", {}).get("state")

    wait_seen(lambda: state() == "done", timeout, f"campaign {name} fanned out", by)
    obj = harness.get_object(rel.env, "campaigns.mailpipe.io", name, rel.namespace) or {}
    uid = obj["metadata"]["uid"]
    topic = Topics.for_pool(rel.namespace, "news").outbound
    ids = (json.loads(v)["id"] for _, v in read_topic(rel.bootstrap, topic, committed=True) if v)
    return Counter(i for i in ids if i.startswith(uid))


def assert_once(ids: Counter[str], audience: int = AUDIENCE) -> None:
    """Each recipient on the outbound topic exactly once: one replica fanned out."""
    assert len(ids) == audience, (len(ids), audience)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]


def container_id(env: dict[str, str], namespace: str, pod: str) -> str:
    obj = harness.get_object(env, "pod", pod, namespace) or {}
    [status] = obj["status"]["containerStatuses"]
    return str(status["containerID"]).removeprefix("containerd://")


def test_one_replica_acts_and_a_crash_hands_over_within_the_lifetime(
    node: Node, release: tuple[Release, str, Image]
) -> None:
    """...and the crash lands in the middle of a fan-out of BIG_AUDIENCE
    recipients: the survivor finishes it, each recipient on the outbound
    topic exactly once."""
    rel, pods_bootstrap, image = release
    env, namespace = rel.env, rel.namespace
    leader, standby = install_and_elect(
        rel,
        pods_bootstrap,
        image,
        LIFETIME_SECONDS,
        ("MAILPIPE_FANOUT_CHUNK", str(FANOUT_CHUNK)),
    )

    apply_pool(env, namespace)
    wait_seen(
        lambda: harness.condition_true(harness.get_object(env, "sp", "news", namespace)),
        RELAY_READY_SECONDS,
        "pool Ready (its relay pod Ready)",
        leader,
    )
    apply_campaign(env, namespace, "before")
    assert_once(fanned_out(rel, "before", leader))
    assert active(leader) and not active(standby)
    assert OBJECT_LOG in leader.log()
    assert OBJECT_LOG not in standby.log(), standby.section()  # no handler ran

    # The relays go to 0 (a Ready pool still: its records wait on Kafka), so
    # the big campaign's records are only counted, not worked on beside the fan-out.
    harness.kubectl_ok(
        env, "patch", "sp", "news", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":0}}'
    )
    apply_big_campaign(env, namespace, "big")
    started = time.monotonic()
    harness.wait_for(
        lambda: fanout_status(rel, "big").get("nextIndex", 0) >= MID_FANOUT,
        MID_FANOUT_SECONDS,
        "the big campaign's fan-out under way",
        interval_seconds=POLL_SECONDS,
    )
    state = node.state
    assert state is not None
    # SIGKILL to the operator's process: no clean exit, its keep-alive just stops
    # (the kubelet then restarts the container: a new replica, of lower priority)
    killed = container_id(env, namespace, leader.name)
    node.ctr(state, "tasks", "kill", "--signal", "SIGKILL", killed)
    killed_at = time.monotonic()
    at_kill = fanout_status(rel, "big")
    print(f"killed {killed_at - started:.1f} s after the big campaign was applied: {at_kill}")
    assert at_kill.get("state") == "running", f"not killed mid fan-out: {at_kill}"
    assert at_kill.get("nextIndex", 0) < BIG_AUDIENCE, at_kill
    wait_seen(lambda: active(standby), CRASH_HANDOVER_SECONDS, "the standby resumed", standby)
    print(f"crash hand-over: {time.monotonic() - killed_at:.1f} s (lifetime {LIFETIME_SECONDS} s)")
    wait_seen(
        lambda: fanout_status(rel, "big").get("holder") != at_kill.get("holder"),
        TAKEOVER_SECONDS + MID_FANOUT_SECONDS,
        "the survivor claiming the big fan-out",
        standby,
    )
    print(f"fan-out hand-over: {time.monotonic() - killed_at:.1f} s after the kill")
    big = fanned_out(rel, "big", standby, timeout=TAKEOVER_SECONDS + MID_FANOUT_SECONDS)
    print(f"big fan-out done {time.monotonic() - killed_at:.1f} s after the kill")
    assert_once(big, BIG_AUDIENCE)
    assert fanout_status(rel, "big").get("enqueued") == BIG_AUDIENCE

    apply_campaign(env, namespace, "after")
    assert_once(fanned_out(rel, "after", standby))
    assert OBJECT_LOG in standby.log()
    # the campaign fanned out before the crash was not fanned out again
    assert_once(fanned_out(rel, "before", standby))
    # the killed pod's container came back as a standby: it does not act
    wait_seen(lambda: STARTED.search(leader.log()) is not None, ELECTION_SECONDS, "restart", leader)
    assert not active(leader), leader.section()


def test_a_clean_stop_hands_over_without_waiting_for_the_lifetime(
    release: tuple[Release, str, Image],
) -> None:
    rel, pods_bootstrap, image = release
    env, namespace = rel.env, rel.namespace
    leader, standby = install_and_elect(rel, pods_bootstrap, image, CLEAN_STOP_LIFETIME_SECONDS)
    leader_id, _ = started_as(leader)

    # SIGTERM, as on a rolling update or a drained node
    harness.kubectl_ok(env, "delete", "pod", leader.name, "-n", namespace, "--wait=false")
    stopped_at = time.monotonic()
    wait_seen(lambda: active(standby), CLEAN_HANDOVER_SECONDS, "the standby resumed", standby)
    print(f"clean hand-over: {time.monotonic() - stopped_at:.1f} s")
    wait_for(
        lambda: harness.get_object(env, "pod", leader.name, namespace) is None,
        CLEAN_HANDOVER_SECONDS * 4,
        "the stopped pod gone",
    )
    assert leader_id not in peers(env, namespace)  # it removed itself on the way out
