"""Relays that come and go under load, on the stack's node: nothing lost, nothing sent twice.

One release for the module, its pools on the pod network (no hostNetwork: any
number of relays fit the one node; their egress address is `0.0.0.0`, the pod's
own, masqueraded as the node's on the way out). The recipients' domains are
chosen so that their sites (`contracts.sites`: here each domain is its own,
its MX host's provider domain being the domain) hash to every partition of a
pool's outbound topic, so every relay of the group owns some of them; a slow
per-site throttle keeps a campaign in flight while the relays change.

- Scaling 1 -> 3 -> 1 (`kubectl scale sp`, the pool's scale subresource): the
  group rebalances over three relays (each says which partitions it got), each
  delivers (counted from the `relay` of the pool's events), then two go away
  while the campaign still sends. Every recipient arrives. Duplicates are
  counted against the in-flight window of a hand-over (see
  `test_scaling_relays_1_3_1_under_load_loses_nothing`).
- A cluster policy that stops a pool: the platform team narrows the SMTP ports
  with `helm upgrade` while a campaign sends; the operator scales the pool's
  relay Deployment to 0 (kept), the pool says `PolicyViolation`, the relays
  drain and commit, and the rest of the campaign waits on Kafka (the group's
  lag). The platform team loosens it again (`helm upgrade`): the Deployment
  goes back to spec.replicas and the returning pods deliver the backlog, every
  recipient exactly once.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.partitioner.default import murmur2

from mailpipe.contracts.topics import Topics, pool_group
from mailpipe.contracts.wire import Disposition, decode_event
from mailpipe.devstack import harness
from mailpipe.devstack.node import Node
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import Stack, StackState
from mailpipe.kafkakit import client_options, end_offsets, read_records
from tests.cluster.conftest import (
    CHART,
    Delivering,
    Image,
    campaign_manifest,
    campaign_phase,
    delivering,
    operator_pods,
    pool_pods,
    ready_condition,
    sending_pool,
)
from tests.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

RELAY_READY_TIMEOUT_SECONDS = 240  # the relay pods start, join the group
DELIVERY_TIMEOUT_SECONDS = 240  # the campaign's tail at the slow rate, on a loaded machine
STOP_TIMEOUT_SECONDS = 120  # the operator sees the policy, the relay pods drain and go (grace 60 s)
# The kubelet rewrites the operator's mounted policy at its next sync of the
# pod (its sync period, a minute by default, with jitter), the operator re-reads
# it every 5 s: a platform team waits up to about 90 s for a policy change.
POLICY_TIMEOUT_SECONDS = 180
PARTITIONS = 6  # of each pool's outbound topic: three relays own two each
# One site per partition (`_domains`): a relay owns the sites of its partitions.
SITES = PARTITIONS
# Scaling: per site, a message every 5 s and 12 messages: the campaign lasts
# 55 s at one relay, longer than three relay pods take to start on a loaded
# machine (13 s seen at a load of 10 on two cores), so it is still sending
# when they are up and when two go again.
SCALE_PER_MINUTE = 12
SCALE_PER_SITE = 12
# The policy stop: per site, one message a minute, two messages: the first goes
# at once (a relay's first token per site is free), the second a minute later,
# long after the tightened policy stopped the relays; the returning relays'
# first tokens are free again, so the backlog goes at once when they are back.
HELD_PER_MINUTE = 1
HELD_PER_SITE = 2
ASSIGNED = re.compile(r"assigned (\d+) of (\d+) outbound partitions: \[([0-9, ]*)\]")
# A harmless annotation on the operator pod: a change to the pod makes the
# kubelet sync it now, and a sync rewrites its ConfigMap volumes.
REFRESH_ANNOTATION = "mailpipe.io/test-policy-refresh"


def _domains() -> list[str]:
    """Domains whose sites fall on every outbound partition, one each: a site is
    the record's Kafka key, placed by kafka-python's default partitioner."""
    chosen: dict[int, str] = {}
    for i in range(1000):
        domain = f"site{i}.test"
        chosen.setdefault((murmur2(domain.encode()) & 0x7FFFFFFF) % PARTITIONS, domain)
        if len(chosen) == PARTITIONS:
            return [chosen[p] for p in range(PARTITIONS)]
    raise AssertionError(f"no domain for some of {PARTITIONS} partitions: {chosen}")


DOMAINS = _domains()


def _pool(name: str, tenant: str, common: dict[str, Any], per_minute: float) -> dict[str, Any]:
    # the pod's own address: in the pod network a relay binds what it has
    egress = [("0.0.0.0", "relay.sender.test")]
    slow = {"default": {"messagesPerMinute": per_minute}}
    return sending_pool(name, tenant, egress, PARTITIONS, throttles=slow, **common)


def _recipients(prefix: str, per_site: int) -> list[str]:
    """Round by round: every site's first recipient, then every site's second...
    so a partition's records of one round precede the next round's."""
    return [f"{prefix}{n}@{d}" for n in range(per_site) for d in DOMAINS]


@pytest.fixture(scope="module")
def release(
    node: Node, imported: list[str], image: Image, stack_state: StackState, devstack: Stack
) -> Iterator[Delivering]:
    rx = SMTPReceiver("127.0.0.1", free_port("127.0.0.1")).start()
    suffix = uuid.uuid4().hex[:8]
    try:
        with delivering(
            node, image, stack_state, rx, devstack.set_dns, DOMAINS, f"s{suffix}", f"scale-{suffix}"
        ) as rel:
            yield rel
    finally:
        rx.stop()
        devstack.set_dns([])


def _ready_pods(rel: Delivering, pool: str) -> list[dict[str, Any]]:
    return [p for p in pool_pods(rel.env, rel.tenant, pool) if harness.condition_true(p)]


def _pool_ready(rel: Delivering, pool: str) -> bool:
    return harness.condition_true(harness.get_json(rel.env, "sp", pool, "-n", rel.tenant))


def _scale(rel: Delivering, pool: str, replicas: int) -> None:
    """As a user scales a pool: its scale subresource (`kubectl scale`)."""
    harness.kubectl_ok(rel.env, "scale", "sp", pool, "-n", rel.tenant, f"--replicas={replicas}")


def _assigned(rel: Delivering, pod: str) -> list[int] | None:
    """The outbound partitions the relay in `pod` last said it was assigned."""
    got = harness.kubectl(rel.env, "logs", "-n", rel.tenant, pod)
    found = ASSIGNED.findall(got.stdout) if got.returncode == 0 else []
    if not found:
        return None
    return [int(p) for p in found[-1][2].replace(" ", "").split(",") if p]


def _delivered_by(
    stack_state: StackState, rel: Delivering, pool: str, campaign: str
) -> Counter[str]:
    """Delivered events of the campaign on the pool's events topic, by relay pod
    (a relay's id is its host name, the pod's name, and a random suffix)."""
    events = Topics.for_pool(rel.tenant, pool).events
    counts: Counter[str] = Counter()
    for record in read_records(stack_state.kafka_bootstrap, events):
        if record.value is None:
            continue
        event = decode_event(record.value)
        if event.disposition is Disposition.DELIVERED and event.campaign == campaign:
            counts[(event.relay or "?").rsplit("-", 1)[0]] += 1
    return counts


def _lag(stack_state: StackState, rel: Delivering, pool: str) -> int:
    """Records of the pool's outbound topic its consumer group has not committed."""
    topic = Topics.for_pool(rel.tenant, pool).outbound
    group = pool_group(rel.tenant, pool)
    admin = KafkaAdminClient(**client_options(stack_state.kafka_bootstrap))
    try:
        committed = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    done = {tp.partition: om.offset for tp, om in committed.items() if tp.topic == topic}
    return sum(
        end - max(done.get(p, 0), 0)
        for p, end in end_offsets(stack_state.kafka_bootstrap, topic).items()
    )


def _exactly_once(rx: SMTPReceiver, recipients: list[str]) -> dict[str, int]:
    """Recipients of `recipients` received more than once, with their counts."""
    got = Counter(r for r in rx.recipients() if r in set(recipients))
    return {r: n for r, n in got.items() if n > 1}


def _send(rel: Delivering, pool: str, campaign: str, recipients: list[str]) -> list[str]:
    """Apply the campaign; return its recipients once every site's first arrived
    (from then on the throttle paces each site)."""
    harness.apply(rel.env, campaign_manifest(campaign, rel.tenant, pool, recipients))
    wait_for(
        lambda: len(set(rel.rx.recipients()) & set(recipients)) >= SITES,
        DELIVERY_TIMEOUT_SECONDS,
        "every site's first recipient",
    )
    return recipients


def _phase_is(rel: Delivering, campaign: str, phase: str) -> bool:
    return campaign_phase(rel.env, rel.tenant, campaign) == phase


def test_scaling_relays_1_3_1_under_load_loses_nothing(
    release: Delivering, stack_state: StackState
) -> None:
    """One relay, then three, then one, while a campaign sends at a slow rate.

    The bound on duplicates: a record goes out twice on a hand-over only when
    its SMTP transaction still runs on a partition that moves after the old
    owner's drain (`relay.handover`, DRAIN_SECONDS): at most one transaction
    per site that moved (the throttle lets a site start one message, of one
    recipient, every 5 s). So the scale-up may send at most as many twice as
    it moved partitions; a receiver that answers at once leaves none running,
    and the scale-down is a graceful drain of the leaving relays (SIGTERM:
    unfinished work dropped, the finished committed, the group left): 0 there."""
    rel, env, tenant, rx = release, release.env, release.tenant, release.rx
    pool, campaign = "elastic", "spring"
    harness.apply(env, _pool(pool, tenant, rel.common, SCALE_PER_MINUTE))
    wait_for(lambda: _pool_ready(rel, pool), RELAY_READY_TIMEOUT_SECONDS, "the pool Ready")
    [first] = (p["metadata"]["name"] for p in pool_pods(env, tenant, pool))
    recipients = _send(rel, pool, campaign, _recipients("e", SCALE_PER_SITE))
    wanted = set(recipients)

    _scale(rel, pool, 3)
    started = time.monotonic()
    wait_for(lambda: len(_ready_pods(rel, pool)) == 3, RELAY_READY_TIMEOUT_SECONDS, "3 Ready")
    to_three = time.monotonic() - started
    three = sorted(p["metadata"]["name"] for p in _ready_pods(rel, pool))
    assert first in three, three
    assignment: dict[str, list[int] | None] = {}

    def spread() -> bool:
        assignment.update({pod: _assigned(rel, pod) for pod in three})
        shares = [a for a in assignment.values() if a]
        return len(shares) == 3 and sorted(p for a in shares for p in a) == list(range(PARTITIONS))

    wait_for(spread, RELAY_READY_TIMEOUT_SECONDS, "the outbound partitions over the three relays")
    key = f"{tenant}/{campaign}"
    wait_for(
        lambda: set(_delivered_by(stack_state, rel, pool, key)) >= set(three),
        DELIVERY_TIMEOUT_SECONDS,
        "each of the three relays delivering",
    )
    moved_up = PARTITIONS - len(assignment[first] or [])
    by_relay_at_three = _delivered_by(stack_state, rel, pool, key)
    received = len(set(rx.recipients()) & wanted)
    assert received < len(recipients), "the campaign finished before the scale-down: no load"

    _scale(rel, pool, 1)
    down_at = time.time()
    started = time.monotonic()

    def one_left() -> bool:
        pods = harness.get_json(env, "pods", "-n", tenant, "-l", f"mailpipe.io/pool={pool}")
        return len(pods["items"]) == 1 and harness.condition_true(pods["items"][0])

    wait_for(one_left, RELAY_READY_TIMEOUT_SECONDS, "one relay left, the other two gone")
    to_one = time.monotonic() - started
    [survivor] = (p["metadata"]["name"] for p in pool_pods(env, tenant, pool))
    wait_for(
        lambda: _assigned(rel, survivor) == list(range(PARTITIONS)),
        RELAY_READY_TIMEOUT_SECONDS,
        "every outbound partition back with the one relay",
    )
    wait_for(
        lambda: set(rx.recipients()) >= wanted,
        DELIVERY_TIMEOUT_SECONDS,
        "every recipient at the receiver",
    )
    wait_for(lambda: _phase_is(rel, campaign, "Completed"), DELIVERY_TIMEOUT_SECONDS, "Completed")
    twice = _exactly_once(rx, recipients)
    # A duplicate belongs to the hand-over before its second copy arrived.
    second_at = {r: sorted(m.time for m in rx.messages() if r in m.rcpt_tos)[1] for r in twice}
    twice_down = {r: n for r, n in twice.items() if second_at[r] >= down_at}
    twice_up = {r: n for r, n in twice.items() if second_at[r] < down_at}
    by_relay = _delivered_by(stack_state, rel, pool, key)
    print(
        f"OBSERVED scaling 1->3->1 under load ({len(recipients)} recipients, {SITES} sites at "
        f"{SCALE_PER_MINUTE}/min each): 3 relays Ready {to_three:.1f}s after `kubectl scale`; "
        f"partitions {assignment}; delivered by relay when all three had delivered "
        f"{dict(by_relay_at_three)}, in all {dict(by_relay)}; {received} received before the "
        f"scale-down, one relay left {to_one:.1f}s after it (survivor {survivor}); "
        f"sent twice: scale-up {twice_up or 'none'} (bound {moved_up}: partitions moved), "
        f"scale-down {twice_down or 'none'} (bound 0: graceful drain)"
    )
    assert set(by_relay) >= set(three), by_relay
    assert len(twice_up) <= moved_up, twice_up
    assert twice_down == {}, twice_down
    assert sum(by_relay.values()) == len(recipients) + sum(n - 1 for n in twice.values())


def _upgrade_policy(rel: Delivering, value: str) -> None:
    """`helm upgrade` of the release with one policy value changed, as a platform team would."""
    harness.helm_ok(
        rel.env, "upgrade", rel.name, str(CHART), "-n", rel.namespace, "--reuse-values",
        "--set", value,
    )  # fmt: skip


def _refresh_policy_now(rel: Delivering) -> None:
    """Have the kubelet rewrite the operator's policy volume now rather than at
    its next periodic sync of the pod (up to a minute or more): a change to the
    pod makes it sync the pod at once."""
    for pod in operator_pods(rel.env, rel.namespace, rel.name):
        harness.kubectl_ok(
            rel.env, "annotate", "pod", pod["metadata"]["name"], "-n", rel.namespace,
            "--overwrite", f"{REFRESH_ANNOTATION}={time.monotonic_ns()}",
        )  # fmt: skip


def _warnings(rel: Delivering, pool: str) -> set[str]:
    got = harness.get_json(
        rel.env, "events", "-n", rel.tenant, "--field-selector",
        f"involvedObject.kind=SendingPool,involvedObject.name={pool},type=Warning",
    )  # fmt: skip
    return {str(e.get("reason")) for e in got["items"]}


def test_a_pool_stopped_by_the_cluster_policy_delivers_its_backlog_once_loosened(
    release: Delivering, stack_state: StackState
) -> None:
    """The platform team narrows the SMTP ports pools may use to 25 while a
    campaign sends through a pool that uses the receiver's port: the operator
    stops the pool's relays (Deployment scaled to 0 and kept, Ready=False
    `PolicyViolation` naming the port, Warning Events), they drain and commit,
    and the campaign's undelivered records wait on Kafka, uncommitted. Loosened
    again, the Deployment is back at spec.replicas and the returning relay
    pods deliver the backlog: every recipient exactly once.

    Both policy changes are made to land at once (`_refresh_policy_now`): the
    campaign need not outlast a kubelet sync, and the suite does not wait for
    one (on a default kubelet a mounted ConfigMap changes within its sync
    period, a minute, plus its cache's TTL: about 100 s measured here)."""
    rel, env, tenant, rx = release, release.env, release.tenant, release.rx
    pool, campaign, replicas = "held", "summer", 2
    spec = _pool(pool, tenant, rel.common, HELD_PER_MINUTE)
    spec["spec"]["replicas"] = replicas
    harness.apply(env, spec)
    wait_for(
        lambda: _pool_ready(rel, pool) and len(_ready_pods(rel, pool)) == replicas,
        RELAY_READY_TIMEOUT_SECONDS,
        f"the pool Ready with {replicas} relays",
    )
    recipients = _send(rel, pool, campaign, _recipients("h", HELD_PER_SITE))
    wanted = set(recipients)

    _upgrade_policy(rel, "policy.allowedSmtpPorts={25}")
    _refresh_policy_now(rel)
    started = time.monotonic()
    wait_for(
        lambda: ready_condition(env, "sp", pool, tenant).get("reason") == "PolicyViolation",
        STOP_TIMEOUT_SECONDS,
        "the pool refused by the narrowed policy",
    )
    refused_in = time.monotonic() - started
    message = ready_condition(env, "sp", pool, tenant)["message"]
    assert f"smtpPort {rx.port} not in allowed SMTP ports (25)" in message, message

    def stopped() -> bool:
        deployment = harness.get_object(env, "deploy", f"mailpipe-relay-{pool}", tenant)
        pods = harness.get_json(env, "pods", "-n", tenant, "-l", f"mailpipe.io/pool={pool}")
        return deployment is not None and deployment["spec"]["replicas"] == 0 and not pods["items"]

    wait_for(stopped, STOP_TIMEOUT_SECONDS, "the relay Deployment at 0 and its pods gone")
    stopped_in = time.monotonic() - started
    wait_for(
        lambda: {"PolicyViolation", "RelaysStopped"} <= _warnings(rel, pool),
        STOP_TIMEOUT_SECONDS,
        "PolicyViolation and RelaysStopped Warning Events on the pool",
    )
    sp = harness.get_json(env, "sp", pool, "-n", tenant)
    assert sp["spec"]["replicas"] == replicas, sp["spec"]  # the pool's own word stays
    # the campaign, fanned out, says its pool's words rather than only "Sending"
    wait_for(
        lambda: (
            "PolicyViolation" in ready_condition(env, "camp", campaign, tenant).get("message", "")
        ),
        STOP_TIMEOUT_SECONDS,
        "the campaign saying its pool is stopped by the policy",
    )
    campaign_says = ready_condition(env, "camp", campaign, tenant)["message"]
    assert _phase_is(rel, campaign, "Sending"), campaign_says
    delivered = set(rx.recipients()) & wanted
    backlog = len(wanted - delivered)
    lag = _lag(stack_state, rel, pool)
    assert backlog > 0, "the campaign finished before the policy stopped it: no backlog"
    # every undelivered record is still on Kafka, uncommitted (a finished one
    # may sit behind an unfinished one of its partition: the commit stops there)
    assert lag >= backlog, (lag, backlog)
    assert not _phase_is(rel, campaign, "Completed")

    _upgrade_policy(rel, f"policy.allowedSmtpPorts={{{rx.port}}}")
    _refresh_policy_now(rel)
    loosened = time.monotonic()
    wait_for(
        lambda: len(_ready_pods(rel, pool)) == replicas,
        POLICY_TIMEOUT_SECONDS + RELAY_READY_TIMEOUT_SECONDS,
        f"{replicas} relay pods back and Ready",
    )
    back_in = time.monotonic() - loosened
    wait_for(
        lambda: set(rx.recipients()) >= wanted,
        DELIVERY_TIMEOUT_SECONDS,
        "the backlog delivered by the returning relays",
    )
    delivered_in = time.monotonic() - loosened
    wait_for(lambda: _phase_is(rel, campaign, "Completed"), DELIVERY_TIMEOUT_SECONDS, "Completed")
    twice = _exactly_once(rx, recipients)
    by_relay = _delivered_by(stack_state, rel, pool, f"{tenant}/{campaign}")
    print(
        f"OBSERVED policy stop and loosening ({len(recipients)} recipients, {SITES} sites at "
        f"{HELD_PER_MINUTE}/min each, {replicas} relays): refused {refused_in:.1f}s and relays "
        f"gone {stopped_in:.1f}s after the narrowing helm upgrade (kubelet syncs forced); "
        f"while stopped {backlog} recipients undelivered, group lag {lag}; "
        f"{replicas} relay pods Ready {back_in:.1f}s and the backlog delivered "
        f"{delivered_in:.1f}s after the loosening helm upgrade (kubelet sync forced); "
        f"delivered by relay {dict(by_relay)}; sent twice: {twice or 'none'}; "
        f"pool's condition: {message}; campaign's while stopped: {campaign_says}"
    )
    assert twice == {}, twice
    assert set(rx.recipients()) & wanted == wanted
