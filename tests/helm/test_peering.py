"""`operator.replicas: 2` with peering: exactly one replica acts, and the other takes over.

Two operators from the chart's own Deployment (same args and env, as two pods
of one ReplicaSet would run, each with its pod name as kopf's identity),
against the KopfPeering object the chart installs. kopf's rule: the replica
that sees a live peer with a higher priority pauses (equal priorities would
pause both; a replica's priority falls with its start time). Proven by
behaviour, not only by the pause lines: while the active replica reconciles
a pool and fans out a campaign, the standby runs no handler at all (not one
`kopf.objects` line: two active replicas both log them), and the campaign's
outbound topic holds each recipient once. The active replica then dies
(SIGKILL) or stops (SIGTERM), the standby resumes within the documented
bound, and a campaign created after the hand-over is fanned out by the
survivor, again exactly once.

Which replica is active is read from kopf's own log lines, and that needs
care (why this test once failed one run in two): every peering replica
*starts* paused (kopf pre-activates the pause when peering is mandatory,
kopf/_core/engines/orchestration.py:229) and kopf logs only changes of that
state (peering.py:138-150, `if conflicts_found.is_off()`). A replica that
meets a higher-priority peer at its first look stays paused without a word,
its peering worker asleep until that peer's keep-alive expires (peering.py:159;
kopf reports it at exit as "Unprocessed streams left for kopfpeerings"). So
the state is: paused, until "Resuming operations", until "Pausing operations".
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailpipe.contracts.topics import Topics
from mailpipe.devstack import harness
from mailpipe.devstack.stack import StackState
from mailpipe.kafkakit import read_topic
from tests.conftest import wait_for
from tests.helm.kubelet import Kubelet
from tests.helm.test_chart import helm, operator_container, render

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailpipe"
PEERING = "mailpipe"  # the chart's peering.name
# The chart's peering.lifetimeSeconds in the crash test: its schema's minimum,
# so the test waits as little as a chart allows for a dead replica's keep-alive.
LIFETIME_SECONDS = 15
# ...and in the clean-stop test: long, so a hand-over well within it cannot
# have come from the keep-alive expiring (the leaving replica removed itself).
CLEAN_STOP_LIFETIME_SECONDS = 120
CLEAN_HANDOVER_SECONDS = 30  # SIGTERM to the standby's resume, on a loaded machine
# After a crash the standby resumes when the dead peer's keep-alive expires
# (at most the lifetime after the crash), plus its own watch event round trip.
CRASH_HANDOVER_SECONDS = LIFETIME_SECONDS + 15
ELECTION_SECONDS = 60  # both replicas started and in the peering object
RECONCILE_SECONDS = 120  # pool Ready / fan-out done, on a loaded machine
AUDIENCE = 20

STARTED = re.compile(rf"peering '{PEERING}' as (\S+), priority (-?\d+)")  # main.run
RESUMED = "Resuming operations after the pause"  # kopf peering.py:150
OBJECT_LOG = " kopf.objects "  # the logger of every handler, timer and daemon kopf runs
PAUSED = re.compile(r"kopf\._core\.engines\.peering Pausing (operations|all operators)")


def started_as(child: harness.Child) -> tuple[str, int]:
    """(peer identity, priority) the replica logged at start."""
    found = STARTED.search(child.log.read_text())
    assert found, child.log_section()
    return found[1], int(found[2])


def active(child: harness.Child) -> bool:
    """Whether kopf lets `child` act now (see the module docstring)."""
    state = False
    for line in child.log.read_text().splitlines():
        if RESUMED in line:
            state = True
        elif PAUSED.search(line):
            state = False
    return state


def peers(env: dict[str, str], namespace: str) -> dict[str, dict[str, Any]]:
    # the full resource name: a discovery cache from before the CRD knows no short one
    obj = harness.get_object(env, "kopfpeerings.kopf.dev", PEERING, namespace) or {}
    return dict(obj.get("status") or {})


def install(env: dict[str, str], name: str, namespace: str, bootstrap: str, lifetime: int) -> None:
    harness.kubectl_ok(env, "apply", "-f", str(ROOT / "crds"))
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        harness.kubectl_ok(env, "wait", "--for=condition=Established", f"crd/{crd}")
    values = {
        "operator.watchNamespaces": f"{{{namespace}}}",
        "operator.replicas": "2",
        "peering.enabled": "true",
        "peering.lifetimeSeconds": str(lifetime),
        "kafka.bootstrapServers": bootstrap,
    }
    sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
    harness.helm_ok(env, "install", name, str(CHART), "-n", namespace, *sets)


@pytest.fixture
def kubelet(
    cli_env: dict[str, str], stack_state: StackState, namespace: str, unique: str, tmp_path: Path
) -> Iterator[Kubelet]:
    kubelet = Kubelet(cli_env, Path(stack_state.kubeconfig), tmp_path)
    try:
        yield kubelet
    finally:
        # the CRs go while an operator still runs (it owns their finalizers)
        for kind in ("campaigns", "sendingpools"):
            harness.kubectl(cli_env, "delete", kind, "--all", "-n", namespace, "--wait=true")
        kubelet.stop()
        harness.helm(
            cli_env, "uninstall", f"pr{unique}", "-n", namespace, "--no-hooks"
        )  # hook Job: no kubelet


def elect(
    env: dict[str, str], kubelet: Kubelet, release: str, namespace: str
) -> tuple[harness.Child, harness.Child]:
    """Start a replica, then a second once the first acts: (active, standby).

    The later replica pauses and the first never does: a replica that starts
    (a rolling update's new pod) never preempts one that is working."""
    first = kubelet.run_operator(release, namespace)
    wait_for(lambda: active(first), ELECTION_SECONDS, "the only replica active", first)
    second = kubelet.run_operator(release, namespace)
    wait_for(lambda: len(peers(env, namespace)) == 2, ELECTION_SECONDS, "both in peering", second)
    identities = {c: started_as(c) for c in (first, second)}
    # kopf's identity is the pod's name (POD_ID from the downward API)
    assert set(peers(env, namespace)) == {pod for pod, _ in identities.values()}
    assert {p["priority"] for p in peers(env, namespace).values()} == {
        prio for _, prio in identities.values()
    }
    # kopf pauses the replica that sees a higher priority (equal ones: both)
    assert identities[first][1] > identities[second][1], identities
    # started paused, and its first look at the peering object kept it so (silently);
    # the first never paused, not even for a moment (its handlers below show it acts)
    assert active(first) and not active(second), first.log_section() + second.log_section()
    return first, second


def apply_pool(env: dict[str, str], namespace: str) -> None:
    pool = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "news", "namespace": namespace},
        "spec": {
            "kafka": {"partitions": 1},
            "egressIPs": [{"address": "192.0.2.30", "helo": "egress.sender.test"}],
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


def fanned_out(
    env: dict[str, str], namespace: str, name: str, bootstrap: str, by: harness.Child
) -> Counter[str]:
    """Wait until campaign `name`'s fan-out is done; its record ids on the outbound topic."""

    def state() -> Any:
        obj = harness.get_object(env, "campaigns.mailpipe.io", name, namespace) or {}
        return obj.get("status", {}).get("fanout", {}).get("state")

    wait_for(lambda: state() == "done", RECONCILE_SECONDS, f"campaign {name} fanned out", by)
    obj = harness.get_object(env, "campaigns.mailpipe.io", name, namespace) or {}
    uid = obj["metadata"]["uid"]
    topic = Topics.for_pool(namespace, "news").outbound
    ids = (json.loads(v)["id"] for _, v in read_topic(bootstrap, topic) if v)
    return Counter(i for i in ids if i.startswith(uid))


def assert_once(ids: Counter[str]) -> None:
    """Each recipient on the outbound topic exactly once: one replica fanned out."""
    assert len(ids) == AUDIENCE, ids
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]


def test_the_chart_names_each_peer_by_its_pod_and_passes_the_lifetime() -> None:
    docs = render("operator.replicas=2", "peering.enabled=true", "peering.lifetimeSeconds=45")
    container = operator_container(docs)
    assert "--peering-lifetime=45" in container["args"]
    pod_id = next(e for e in container["env"] if e["name"] == "POD_ID")  # kopf's identity
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "POD_ID" not in {e["name"] for e in operator_container(render())["env"]}


def test_a_lifetime_within_kopfs_renewal_margin_is_refused() -> None:
    out = helm("template", "rel", str(CHART), "--set", "peering.lifetimeSeconds=10")
    assert out.returncode != 0
    assert "lifetimeSeconds': minimum" in out.stderr, out.stderr
    render("peering.lifetimeSeconds=15")  # the minimum itself is fine


@pytest.mark.operator
def test_one_replica_acts_and_a_crash_hands_over_within_the_lifetime(
    cli_env: dict[str, str],
    namespace: str,
    unique: str,
    kafka_bootstrap: str,
    kubelet: Kubelet,
) -> None:
    release = f"pr{unique}"
    install(cli_env, release, namespace, kafka_bootstrap, LIFETIME_SECONDS)
    kubelet.report_relays()
    leader, standby = elect(cli_env, kubelet, release, namespace)

    apply_pool(cli_env, namespace)
    wait_for(
        lambda: harness.condition_true(harness.get_object(cli_env, "sp", "news", namespace)),
        RECONCILE_SECONDS,
        "pool Ready",
        leader,
    )
    apply_campaign(cli_env, namespace, "before")
    assert_once(fanned_out(cli_env, namespace, "before", kafka_bootstrap, leader))
    assert active(leader) and not active(standby)
    assert OBJECT_LOG in leader.log.read_text()
    assert OBJECT_LOG not in standby.log.read_text(), standby.log_section()  # no handler ran

    leader.kill()  # SIGKILL: no clean exit, its keep-alive just stops
    killed_at = time.monotonic()
    wait_for(lambda: active(standby), CRASH_HANDOVER_SECONDS, "the standby resumed", standby)
    print(f"crash hand-over: {time.monotonic() - killed_at:.1f} s (lifetime {LIFETIME_SECONDS} s)")

    apply_campaign(cli_env, namespace, "after")
    assert_once(fanned_out(cli_env, namespace, "after", kafka_bootstrap, standby))
    assert OBJECT_LOG in standby.log.read_text()
    # the campaign fanned out before the crash was not fanned out again
    assert_once(fanned_out(cli_env, namespace, "before", kafka_bootstrap, standby))


@pytest.mark.operator
def test_a_clean_stop_hands_over_without_waiting_for_the_lifetime(
    cli_env: dict[str, str],
    namespace: str,
    unique: str,
    kafka_bootstrap: str,
    kubelet: Kubelet,
) -> None:
    release = f"pr{unique}"
    install(cli_env, release, namespace, kafka_bootstrap, CLEAN_STOP_LIFETIME_SECONDS)
    leader, standby = elect(cli_env, kubelet, release, namespace)
    leader_id, _ = started_as(leader)

    leader.request_stop()  # SIGTERM, as on a rolling update or a drained node
    stopped_at = time.monotonic()
    wait_for(lambda: active(standby), CLEAN_HANDOVER_SECONDS, "the standby resumed", standby)
    print(f"clean hand-over: {time.monotonic() - stopped_at:.1f} s")
    leader.stop()
    assert leader_id not in peers(cli_env, namespace)  # it removed itself on the way out
