"""What only a real cluster shows, short of delivered mail: one release, its pools, one node.

The chart's operator runs as a pod, watching one tenant namespace, with four
pools made at the start:

- `steady` (2 relays): its relay pods run from the start to the drift check
  near the end, while the other tests run beside it (an eviction of one of its
  pods and a restart of the operator included); the check needs
  `OBSERVE_SECONDS` of that with the operator up, so the five-minute watch for
  phantom drift costs the module only what the tests before it did not take;
- `tamper` (1 relay): a tenant editor (the built-in `edit` role, through
  aggregation) changes its ConfigMap;
- `nokafka` (1 relay): its bootstrap is a port nobody listens on, so its relay
  never reaches Kafka; it is watched for the same five minutes;
- `doomed` (1 relay): deleted while the operator is away.

The tests run in file order (they share the release): the RBAC table, the
tampered ConfigMap, the PodDisruptionBudget, then the operator is stopped for
what happens without it (the garbage collector takes a deleted pool's
children; a relay pod that starts with a tampered config refuses it) and
started again, then the five-minute checks (no phantom drift, a restart
included; a relay without Kafka unready and never restarted), and last `helm
uninstall` leaves nothing, CRs included.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mailpipe.devstack import harness
from mailpipe.devstack.node import Node
from mailpipe.devstack.stack import StackState
from mailpipe.operator.pool import CONFIG_KEY
from tests.cluster.conftest import Image, install, operator_pods, uninstall
from tests.conftest import wait_for
from tests.helm.test_rbac import NO, YES, check_table

# The first test waits for the image build (cold: minutes), the operator and
# three pools' relays; the drift check waits out its five minutes.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

OPERATOR_READY_TIMEOUT_SECONDS = 240  # image unpack, Python and kopf start on a loaded machine
RELAY_READY_TIMEOUT_SECONDS = 300  # three pools' relay pods start at once on two cores
AGGREGATION_TIMEOUT_SECONDS = 60  # kube-controller-manager copies the rules within seconds
REVERT_TIMEOUT_SECONDS = 30  # the operator's children timer looks every 5 s
GC_TIMEOUT_SECONDS = 120  # the garbage collector, then the pods' grace period (60 s)
# The kubelet refreshes a mounted ConfigMap within its sync period (1 min) and
# the relay looks at its file every 2 s, then joins Kafka.
RELOAD_TIMEOUT_SECONDS = 240
# Relay pods running, watched for phantom drift (the five minutes).
OBSERVE_SECONDS = 300
OBSERVE_POLL_SECONDS = 5.0  # an Event that should not be there fails the test within this
# The relay's liveness probe (pool.build_deployment): first after 30 s, every
# 10 s, 6 failures: a relay that failed it would restart after 90 s at the earliest.
LIVENESS_RESTART_AFTER_SECONDS = 30 + 10 * 6
POLL_SECONDS = 0.2  # how finely a revert's time is taken
NOWHERE = "127.0.0.1:1"  # in the relay pod's own network namespace nothing listens there
PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget"


@dataclass
class Release:
    env: dict[str, str]
    api: client.ApiClient
    name: str
    namespace: str
    tenant: str
    other: str  # a namespace the release does not touch
    bootstrap_host: str  # the stack's Kafka, as the host reaches it
    # wall-clock time (seconds) and monotonic time the `steady` relays were all Ready
    steady_ready_wall: float = 0.0
    steady_ready_at: float = 0.0
    operator_away_seconds: float = 0.0  # scaled to 0 until Ready again: not an observation
    uninstalled: bool = False
    observed: dict[str, str] = field(default_factory=dict)  # what each test saw, printed at the end

    @property
    def operator(self) -> str:
        return f"{self.name}-mailpipe-operator"

    def user(self, role: str) -> str:
        """The made-up user bound to the built-in `role` in the tenant namespace."""
        return f"{role}-{self.tenant}"


def _pool(name: str, tenant: str, replicas: int, **kafka: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": tenant},
        "spec": {
            "replicas": replicas,
            "kafka": {"partitions": 1, **kafka},
            # A loopback address: in the relay pod's own namespace it is local.
            "egressIPs": [{"address": "127.0.0.2", "helo": "egress-2.sender.test"}],
        },
    }


def _pods(rel: Release, pool: str) -> list[dict[str, Any]]:
    listed: Any = client.CoreV1Api(rel.api).list_namespaced_pod(
        rel.tenant, label_selector=f"mailpipe.io/pool={pool}", _preload_content=False
    )
    items: list[dict[str, Any]] = json.loads(listed.data)["items"]
    return items


def _live_pods(rel: Release, pool: str) -> list[dict[str, Any]]:
    return [p for p in _pods(rel, pool) if not p["metadata"].get("deletionTimestamp")]


def _ready_pods(rel: Release, pool: str) -> list[dict[str, Any]]:
    return [p for p in _live_pods(rel, pool) if harness.condition_true(p)]


def _restarts(pod: dict[str, Any]) -> int:
    return sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses") or [])


def _events(rel: Release, name: str, *reasons: str) -> list[dict[str, Any]]:
    listed: Any = client.CoreV1Api(rel.api).list_namespaced_event(
        rel.tenant, field_selector=f"involvedObject.name={name}", _preload_content=False
    )
    items: list[dict[str, Any]] = json.loads(listed.data)["items"]
    return [e for e in items if not reasons or e.get("reason") in reasons]


def _event_time(event: dict[str, Any]) -> float:
    stamps = [event.get(k) for k in ("eventTime", "lastTimestamp", "firstTimestamp")]
    parsed = [datetime.datetime.fromisoformat(s).timestamp() for s in stamps if s]
    return max(parsed)


def _operator_ready(rel: Release) -> bool:
    pods = operator_pods(rel.env, rel.namespace, rel.name)
    return len(pods) == 1 and harness.condition_true(pods[0])


def _config(rel: Release, pool: str) -> dict[str, str]:
    cm = harness.get_object(rel.env, "cm", f"mailpipe-relay-{pool}", rel.tenant) or {}
    return dict(cm.get("data") or {})


def _log(rel: Release, pod: str) -> str:
    got = harness.kubectl(rel.env, "logs", "-n", rel.tenant, pod)
    return got.stdout if got.returncode == 0 else ""


@pytest.fixture(scope="module")
def release(
    node: Node,
    imported: list[str],
    image: Image,
    stack_state: StackState,
    kube_api: client.ApiClient,
) -> Iterator[Release]:
    env = {**os.environ, **stack_state.env()}
    bootstrap = node.expose_kafka(stack_state)
    suffix = uuid.uuid4().hex[:8]
    rel = Release(
        env,
        kube_api,
        f"b{suffix}",
        f"mailpipe-b{suffix}",
        f"tenant-b{suffix}",
        f"other-b{suffix}",
        stack_state.kafka_bootstrap,
    )
    for ns in (rel.tenant, rel.other):
        harness.kubectl_ok(env, "create", "namespace", ns)
    install(
        env,
        rel.name,
        rel.namespace,
        image,
        f"kafka.bootstrapServers={bootstrap}",
        # only the tenant: the session's API server holds other tests' CRs, and
        # the uninstall hook deletes every CR the operator watches
        f"operator.watchNamespaces={{{rel.tenant}}}",
        f"policy.allowedImages={{{image.repository}:*}}",
        f"policy.allowedBootstrapServers={{{bootstrap},{NOWHERE}}}",
    )
    try:
        harness.apply(env, _pool("steady", rel.tenant, 2))
        harness.apply(env, _pool("tamper", rel.tenant, 1))
        harness.apply(env, _pool("doomed", rel.tenant, 1))
        # Retain: its topics were never made, and deleting them would wait for a
        # Kafka that never answers
        harness.apply(
            env, _pool("nokafka", rel.tenant, 1, bootstrapServers=NOWHERE, deletionPolicy="Retain")
        )
        started = time.monotonic()
        wait_for(lambda: _operator_ready(rel), OPERATOR_READY_TIMEOUT_SECONDS, "the operator Ready")
        wait_for(
            lambda: len(_ready_pods(rel, "steady")) == 2,
            RELAY_READY_TIMEOUT_SECONDS,
            "both steady relay pods Ready",
        )
        rel.steady_ready_wall, rel.steady_ready_at = time.time(), time.monotonic()
        print(f"steady relays Ready {rel.steady_ready_at - started:.1f}s after the pools")
        yield rel
    finally:
        if not rel.uninstalled:
            harness.kubectl(
                env, "scale", "deploy", rel.operator, "-n", rel.namespace, "--replicas=1"
            )
            uninstall(env, rel.name, rel.namespace)
        for what, seen in rel.observed.items():
            print(f"OBSERVED {what}: {seen}")
        harness.kubectl(env, "delete", "namespace", rel.tenant, rel.other, "--wait=false")
        harness.kubectl(env, "delete", "namespace", rel.namespace, "--wait=false")


def test_the_readme_rbac_table_holds_through_aggregation(release: Release) -> None:
    """Users bound to the built-in `view`, `edit` and `admin` roles in the
    tenant namespace get what the README's table says, through the chart's
    aggregated ClusterRoles (kube-controller-manager copies their rules into
    the built-in ones); the operator's ServiceAccount has what its
    namespaced mode grants and nothing elsewhere."""
    rel, env, tenant = release, release.env, release.tenant
    for role in ("view", "edit", "admin"):
        harness.kubectl_ok(
            env, "create", "rolebinding", role, f"--clusterrole={role}",
            f"--user={rel.user(role)}", "-n", tenant,
        )  # fmt: skip
    started = time.monotonic()

    def aggregated() -> bool:
        got = harness.kubectl(
            env, "auth", "can-i", "create", "campaigns.mailpipe.io",
            f"--as={rel.user('edit')}", "-n", tenant,
        )  # fmt: skip
        return got.stdout.strip() == "yes"

    wait_for(aggregated, AGGREGATION_TIMEOUT_SECONDS, "`edit` aggregating mailpipe-edit")
    rel.observed["RBAC aggregation"] = (
        f"`edit` may create campaigns {time.monotonic() - started:.1f}s after the binding"
    )
    reads = [
        (verb, resource, tenant, YES)
        for verb in ("get", "list", "watch")
        for resource in (
            "sendingpools.mailpipe.io",
            "campaigns.mailpipe.io",
            "sendingpools.mailpipe.io/status",
            "campaigns.mailpipe.io/status",
        )
    ]
    never = [
        # SendingPools are the platform's: `mailpipe-pool-admin` is aggregated nowhere
        ("create", "sendingpools.mailpipe.io", tenant, NO),
        ("patch", "sendingpools.mailpipe.io", tenant, NO),
        ("delete", "sendingpools.mailpipe.io", tenant, NO),
        ("update", "sendingpools.mailpipe.io/scale", tenant, NO),
        ("patch", "sendingpools.mailpipe.io/status", tenant, NO),
        ("patch", "campaigns.mailpipe.io/status", tenant, NO),
        ("list", "campaigns.mailpipe.io", rel.other, NO),
    ]
    check_table(
        env,
        rel.user("view"),
        [*reads, *never, ("create", "campaigns.mailpipe.io", tenant, NO)],
    )
    writes = [
        ("create", "campaigns.mailpipe.io", tenant, YES),
        ("update", "campaigns.mailpipe.io", tenant, YES),
        ("patch", "campaigns.mailpipe.io", tenant, YES),
        ("delete", "campaigns.mailpipe.io", tenant, YES),
        ("create", "campaigns.mailpipe.io", rel.other, NO),
        # the built-in role's own: why the operator signs the relay config
        ("patch", "configmaps", tenant, YES),
    ]
    for role in ("edit", "admin"):
        check_table(env, rel.user(role), [*reads, *never, *writes])
    operator = f"system:serviceaccount:{rel.namespace}:{rel.operator}"
    check_table(
        env,
        operator,
        [
            ("list", "sendingpools.mailpipe.io", tenant, YES),
            ("patch", "sendingpools.mailpipe.io/status", tenant, YES),
            ("create", "deployments.apps", tenant, YES),
            ("patch", "configmaps", tenant, YES),
            ("create", "poddisruptionbudgets.policy", tenant, YES),
            ("get", "secrets", tenant, YES),
            ("list", "pods", tenant, YES),
            ("create", "events", tenant, YES),
            ("list", "configmaps", tenant, NO),
            ("list", "secrets", tenant, NO),
            ("create", "pods", tenant, NO),
            ("create", "sendingpools.mailpipe.io", tenant, NO),
            ("create", "rolebindings.rbac.authorization.k8s.io", tenant, NO),
            ("list", "sendingpools.mailpipe.io", None, NO),
            ("list", "sendingpools.mailpipe.io", rel.other, NO),
            ("create", "deployments.apps", rel.other, NO),
            ("get", "secrets", "kube-system", NO),
            ("create", "deployments.apps", "kube-system", NO),
        ],
    )


def _tampered(config_text: str, tenant: str) -> str:
    """The relay config with another namespace's topics and group written in."""
    changed = config_text.replace(f"mailpipe.{tenant}.", "mailpipe.victim.")
    assert changed != config_text, config_text
    return changed


def _patch_as_editor(rel: Release, pool: str, data: dict[str, str]) -> None:
    harness.kubectl_ok(
        rel.env, "patch", "cm", f"mailpipe-relay-{pool}", "-n", rel.tenant,
        f"--as={rel.user('edit')}", "--type=merge", "-p", json.dumps({"data": data}),
    )  # fmt: skip


def test_a_tenant_editors_configmap_change_is_reverted_within_seconds(release: Release) -> None:
    """As the built-in `edit` role allows: the relay ConfigMap patched with
    another namespace's topics. The operator puts it back within seconds
    (a `ChildReverted` Warning Event names the key), and the running relay
    pod never runs it: the same pod, never restarted, Ready throughout, and
    its log never says it reloaded a config."""
    rel = release
    wait_for(lambda: len(_ready_pods(rel, "tamper")) == 1, RELAY_READY_TIMEOUT_SECONDS, "relay")
    [pod] = _ready_pods(rel, "tamper")
    signed = _config(rel, "tamper")
    _patch_as_editor(rel, "tamper", {CONFIG_KEY: _tampered(signed[CONFIG_KEY], rel.tenant)})
    patched = time.monotonic()
    assert _config(rel, "tamper") != signed
    ready_throughout = True

    def reverted() -> bool:
        nonlocal ready_throughout
        ready_throughout &= len(_ready_pods(rel, "tamper")) == 1
        return _config(rel, "tamper") == signed

    harness.wait_for(reverted, REVERT_TIMEOUT_SECONDS, "the ConfigMap put back",
                     interval_seconds=POLL_SECONDS)  # fmt: skip
    took = time.monotonic() - patched
    rel.observed["ConfigMap edited by a tenant editor"] = f"put back in {took:.1f}s"
    wait_for(
        lambda: any(
            e["type"] == "Warning" and f"data.{CONFIG_KEY}" in e["message"]
            for e in _events(rel, "tamper", "ChildReverted")
        ),
        REVERT_TIMEOUT_SECONDS,
        "a ChildReverted Warning Event naming the config key",
    )
    [now] = _live_pods(rel, "tamper")
    assert now["metadata"]["name"] == pod["metadata"]["name"], "the relay was rolled"
    assert _restarts(now) == 0, now["status"]
    assert ready_throughout and harness.condition_true(now), now["status"]
    log = _log(rel, pod["metadata"]["name"])
    assert "config reloaded" not in log, log[-3000:]


def test_the_pdb_blocks_an_eviction_that_would_take_the_last_relay(release: Release) -> None:
    """Two relays, the PodDisruptionBudget the operator wrote (maxUnavailable 1):
    the policy/v1 Eviction of one is granted, of the other, now the last
    available relay, refused with 429 while its replacement is not Ready."""
    rel = release
    policy = client.PolicyV1Api(rel.api)

    def budget_allows_one() -> bool:
        pdb = policy.read_namespaced_pod_disruption_budget("mailpipe-relay-steady", rel.tenant)
        return bool(pdb.status and pdb.status.disruptions_allowed == 1)

    wait_for(lambda: len(_ready_pods(rel, "steady")) == 2, RELAY_READY_TIMEOUT_SECONDS, "2 relays")
    wait_for(budget_allows_one, RELAY_READY_TIMEOUT_SECONDS, "the PDB allowing one disruption")
    first, last = (p["metadata"]["name"] for p in _ready_pods(rel, "steady"))
    core = client.CoreV1Api(rel.api)

    def evict(pod: str) -> None:
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=rel.tenant))
        core.create_namespaced_pod_eviction(pod, rel.tenant, body)

    evict(first)
    with pytest.raises(ApiException) as refused:
        evict(last)
    assert refused.value.status == 429, refused.value
    assert PDB_MESSAGE in str(refused.value.body), refused.value.body
    kept = core.read_namespaced_pod(last, rel.tenant)
    assert kept.metadata is not None and kept.metadata.deletion_timestamp is None
    started = time.monotonic()
    wait_for(
        lambda: (
            len(_ready_pods(rel, "steady")) == 2
            and first not in {p["metadata"]["name"] for p in _live_pods(rel, "steady")}
        ),
        RELAY_READY_TIMEOUT_SECONDS,
        "a replacement relay Ready",
    )
    rel.observed["eviction of the last relay"] = (
        f"429 ({PDB_MESSAGE}); the first evicted relay replaced and Ready "
        f"{time.monotonic() - started:.1f}s later"
    )


def test_without_the_operator_the_collector_takes_a_deleted_pools_children_and_a_relay_refuses_a_tampered_config(  # noqa: E501
    release: Release,
) -> None:
    """The operator scaled to 0, as after a failed upgrade.

    A pool deleted (its finalizer removed by hand, as a platform team would with
    the operator gone) loses its children through their ownerReferences: the
    Deployment, its ReplicaSet and pods, the ConfigMap, Service and PDB.

    A tenant editor changes the `tamper` ConfigMap and deletes its relay pod: the
    new pod starts with the changed config, refuses it (not Ready, saying so,
    not restarted) and joins no Kafka group. With the operator back the
    ConfigMap is put back, and the same pod starts on the signed config."""
    rel, env, tenant = release, release.env, release.tenant
    wait_for(lambda: len(_ready_pods(rel, "doomed")) == 1, RELAY_READY_TIMEOUT_SECONDS, "relay")
    harness.kubectl_ok(env, "scale", "deploy", rel.operator, "-n", rel.namespace, "--replicas=0")
    away = time.monotonic()
    wait_for(
        lambda: operator_pods(env, rel.namespace, rel.name) == [],
        GC_TIMEOUT_SECONDS,
        "no operator pod",
    )
    # The tampered config, and a relay pod that must start with it.
    signed = _config(rel, "tamper")
    _patch_as_editor(rel, "tamper", {CONFIG_KEY: _tampered(signed[CONFIG_KEY], tenant)})
    [old] = _live_pods(rel, "tamper")
    harness.kubectl_ok(
        env, "delete", "pod", old["metadata"]["name"], "-n", tenant, f"--as={rel.user('edit')}",
        "--wait=false",
    )  # fmt: skip

    # The pool deleted without its operator.
    harness.kubectl_ok(env, "delete", "sp", "doomed", "-n", tenant, "--wait=false")
    harness.kubectl_ok(
        env, "patch", "sp", "doomed", "-n", tenant, "--type=merge",
        "-p", '{"metadata":{"finalizers":null}}',
    )  # fmt: skip
    wait_for(
        lambda: harness.get_object(env, "sp", "doomed", tenant) is None,
        GC_TIMEOUT_SECONDS,
        "the pool gone",
    )
    gone_at = time.monotonic()
    children = dict.fromkeys(("deploy", "cm", "service", "pdb"), "mailpipe-relay-doomed")

    def collected() -> list[str]:
        left = [f"{k}/{n}" for k, n in children.items() if harness.get_object(env, k, n, tenant)]
        replicasets = harness.get_json(env, "rs", "-n", tenant, "-l", "mailpipe.io/pool=doomed")
        left += [f"rs/{r['metadata']['name']}" for r in replicasets["items"]]
        return left + [f"pod/{p['metadata']['name']}" for p in _pods(rel, "doomed")]

    wait_for(lambda: collected() == [], GC_TIMEOUT_SECONDS, "the pool's children collected")
    rel.observed["pool deleted, operator away"] = (
        f"children, ReplicaSet and pods collected {time.monotonic() - gone_at:.1f}s "
        "after the pool went"
    )

    def new_pod() -> dict[str, Any] | None:
        pods = [
            p for p in _live_pods(rel, "tamper") if p["metadata"]["name"] != old["metadata"]["name"]
        ]
        return pods[0] if pods else None

    def refusing() -> bool:
        pod = new_pod()
        return pod is not None and "refusing the relay config on disk" in _log(
            rel, pod["metadata"]["name"]
        )

    wait_for(refusing, RELAY_READY_TIMEOUT_SECONDS, "the new relay pod refusing the config")
    pod = new_pod()
    assert pod is not None
    name = pod["metadata"]["name"]
    log = _log(rel, name)
    assert "signature does not match" in log, log[-3000:]
    assert "relay started" not in log and "assigned" not in log, log[-3000:]
    assert not harness.condition_true(pod) and _restarts(pod) == 0, pod["status"]

    harness.kubectl_ok(env, "scale", "deploy", rel.operator, "-n", rel.namespace, "--replicas=1")
    back = time.monotonic()
    wait_for(lambda: _config(rel, "tamper") == signed, OPERATOR_READY_TIMEOUT_SECONDS, "put back")
    reverted = time.monotonic() - back
    wait_for(lambda: _operator_ready(rel), OPERATOR_READY_TIMEOUT_SECONDS, "the operator Ready")
    rel.operator_away_seconds += time.monotonic() - away
    wait_for(
        lambda: any(p["metadata"]["name"] == name for p in _ready_pods(rel, "tamper")),
        RELOAD_TIMEOUT_SECONDS,
        "the waiting relay Ready on the signed config",
    )
    [now] = _live_pods(rel, "tamper")
    assert now["metadata"]["name"] == name and _restarts(now) == 0, now["status"]
    assert "relay started" in _log(rel, name)
    rel.observed["relay pod started on a tampered config"] = (
        f"refused it, not Ready, 0 restarts; operator back: ConfigMap put back "
        f"{reverted:.1f}s after the scale-up, the same pod Ready "
        f"{time.monotonic() - back:.1f}s after it"
    )


def test_no_phantom_drift_while_relay_pods_run(release: Release) -> None:
    """From the moment both `steady` relays were Ready (before the tests above:
    an eviction and its replacement, and the operator's restart, whose resume
    reconciles every pool, among them) until `OBSERVE_SECONDS` of it with the
    operator up: no `Applied` Event (written on every apply the reconcile
    sends) and no `ChildReverted` one (every apply the children timer sends),
    and the Deployment's generation never moved."""
    rel = release
    deployment = harness.get_object(rel.env, "deploy", "mailpipe-relay-steady", rel.tenant) or {}
    generation = deployment["metadata"]["generation"]

    def phantom() -> list[str]:
        return [
            f"{e['reason']}: {e['message']}"
            for e in _events(rel, "steady", "Applied", "ChildReverted")
            if _event_time(e) >= int(rel.steady_ready_wall)
        ]

    def observed() -> float:
        return time.monotonic() - rel.steady_ready_at - rel.operator_away_seconds

    def observed_long_enough() -> bool:
        assert phantom() == []
        return observed() >= OBSERVE_SECONDS

    left = OBSERVE_SECONDS - observed()
    print(
        f"phantom drift: {OBSERVE_SECONDS - max(left, 0):.0f}s already observed, {left:.0f}s to go"
    )
    harness.wait_for(observed_long_enough, OBSERVE_SECONDS + 60, "the observation",
                     interval_seconds=OBSERVE_POLL_SECONDS)  # fmt: skip
    now = harness.get_object(rel.env, "deploy", "mailpipe-relay-steady", rel.tenant) or {}
    assert now["metadata"]["generation"] == generation
    applied = _events(rel, "steady", "Applied")
    assert applied, "no Applied Event at all: the check above could not fail"
    rel.observed["phantom drift"] = (
        f"none over {observed():.0f}s of running relays with the operator up "
        f"(and {rel.operator_away_seconds:.0f}s with it away and restarting) "
        f"({len(applied)} Applied Event(s), all before the relays were Ready; "
        f"extra time the module waited: {max(left, 0):.0f}s)"
    )


def test_a_relay_that_cannot_reach_kafka_is_unready_and_never_restarted(
    release: Release,
) -> None:
    """`nokafka`'s relay has watched a Kafka that never answers since the
    module began: Running, not Ready, saying why in its log, and never
    restarted by its liveness probe (which would have after 90 s)."""
    rel = release
    [pod] = _live_pods(rel, "nokafka")
    [status] = pod["status"]["containerStatuses"]
    assert "running" in status["state"], status
    started = datetime.datetime.fromisoformat(status["state"]["running"]["startedAt"])
    running = time.time() - started.timestamp()
    assert running > LIVENESS_RESTART_AFTER_SECONDS, running
    assert status["restartCount"] == 0, status
    assert not status["ready"], status
    log = _log(rel, pod["metadata"]["name"])
    assert "cannot use Kafka as" in log, log[-3000:]
    assert "relay started" not in log, log[-3000:]
    rel.observed["relay without Kafka"] = f"not Ready, 0 restarts over {running:.0f}s running"


def test_helm_uninstall_leaves_nothing_crs_included(release: Release) -> None:
    """The hook deletes the Campaign and the pools left while the operator runs;
    then nothing of the release or of its pools is left in any namespace."""
    rel, env, tenant = release, release.env, release.tenant
    harness.apply(
        env,
        {
            "apiVersion": "mailpipe.io/v1alpha1",
            "kind": "Campaign",
            "metadata": {"name": "left", "namespace": tenant},
            "spec": {
                "poolRef": "tamper",
                "from": {"address": "news@sender.test"},
                "subject": "Hello",
                "text": "Hi",
                "audience": {"inline": [{"address": "a@x.test"}]},
            },
        },
    )
    wait_for(lambda: _operator_ready(rel), OPERATOR_READY_TIMEOUT_SECONDS, "the operator Ready")
    started = time.monotonic()
    rel.uninstalled = True
    uninstall(env, rel.name, rel.namespace)
    for kind in ("sendingpools.mailpipe.io", "campaigns.mailpipe.io"):
        assert harness.get_json(env, kind, "-n", tenant)["items"] == [], kind
    managed = "app.kubernetes.io/managed-by=mailpipe-operator"
    wait_for(
        lambda: (
            harness.get_json(env, "deploy,rs,cm,svc,pdb,pods", "-n", tenant, "-l", managed)["items"]
            == []
            and harness.get_json(env, "pods", "-n", tenant)["items"] == []
        ),
        GC_TIMEOUT_SECONDS,
        "no child of a pool and no pod left in the tenant namespace",
    )
    rel.observed["helm uninstall"] = (
        f"nothing left, CRs included, {time.monotonic() - started:.1f}s after it began"
    )
