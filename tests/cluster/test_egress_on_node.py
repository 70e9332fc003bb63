"""A Campaign delivered by relay pods from their pool's egress IPs, on the stack's node.

Egress on Kubernetes as a platform team sets it up (`contracts.egress`): the
node holds egress addresses on its interface and advertises them with the
labels `egress.mailpipe.io/<address>` (the stack does both at `up`), the pool
runs its relays with hostNetwork, and the operator's node affinity places them
where their IPs are. Mail then leaves from those addresses: the recording
receiver (on the host's loopback, reached at the host end of the link) sees
each recipient once, from one of the pool's IPs with that IP's HELO; the relay
pods found the receiver by MX records in the stack's dnsmasq (the pool's
`dnsNameserver`, the host end of the link too). Nothing leaves loopback and
the node's namespace.

Beside it, two pools that cannot send, each with its own reason on the pool
and never a crash loop: one whose IP no node advertises (its relay stays
Pending; its campaign waits, not fails), and one whose IP a node advertises
but does not hold (its relay runs, cannot bind it, says which, is not Ready).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mailpipe.contracts.egress import egress_label
from mailpipe.devstack import harness, node_plan
from mailpipe.devstack.node import Node
from mailpipe.devstack.node_plan import Link
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import StackState
from tests.cluster.conftest import (
    Image,
    campaign_manifest,
    campaign_phase,
    delivering,
    pool_pods,
    ready_condition,
    sending_pool,
)
from tests.conftest import DNSSetter, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

RELAY_READY_TIMEOUT_SECONDS = 300  # topics, the relay pod, its followers and consumer join
DELIVERY_TIMEOUT_SECONDS = 300  # fan-out of 50, relay reads, 3 domains over one receiver
REASON_TIMEOUT_SECONDS = 180  # the pod Pending or running, the operator's 3 s pod re-check
DOMAINS = ("alpha.egress.test", "beta.egress.test", "gamma.egress.test")
RECIPIENTS = 50
NOT_HELD = 9  # the 9th address of the node's egress block: the stack never puts it on the node
NOWHERE = 10  # the 10th: neither held nor advertised
# The roll: per domain, slow enough that the campaign is still sending when the
# throttle changes (a burst, then one a minute), then fast enough to finish.
ROLL_RECIPIENTS = 30
SLOW_PER_MINUTE = 2
FAST_PER_MINUTE = 6000


def _pool(name: str, tenant: str, egress: list[tuple[str, str]], **spec: Any) -> dict[str, Any]:
    return sending_pool(name, tenant, egress, partitions=3, hostNetwork=True, **spec)


def _pool_says(env: dict[str, str], tenant: str, pool: str, reason: str) -> Callable[[], bool]:
    def check() -> bool:
        ready = ready_condition(env, "sp", pool, tenant)
        return ready.get("status") == "False" and ready.get("reason") == reason

    return check


@dataclass(frozen=True)
class Release:
    """The chart installed for one test, its tenant allowed hostNetwork and inward
    delivery, and what the pools need to reach the test's receiver."""

    env: dict[str, str]
    tenant: str
    rx: SMTPReceiver
    egress: list[str]  # the node's egress addresses
    block: list[str]  # every address of the node's egress block
    common: dict[str, Any]  # pool spec fields: the resolver, SMTP port, inward delivery


@pytest.fixture
def release(
    node: Node,
    imported: list[str],
    image: Image,
    stack_state: StackState,
    dns_zones: DNSSetter,
    smtp_receiver: Callable[..., SMTPReceiver],
    unique: str,
) -> Iterator[Release]:
    env = {**os.environ, **stack_state.env()}
    state = node.state
    assert state is not None and len(state.egress) >= 2, state
    link = Link(ipaddress.IPv4Network(state.link))
    block = [str(a) for a in node_plan.egress_block(link).hosts()]
    labels = harness.get_json(env, "node", node_plan.NODE_NAME)["metadata"]["labels"]
    assert {egress_label(a) for a in state.egress} <= set(labels), labels
    tenant = f"egress-{unique}"
    with delivering(
        node,
        image,
        stack_state,
        smtp_receiver("127.0.0.1"),
        dns_zones,
        DOMAINS,
        f"e{unique}",
        tenant,
        f"policy.hostNetworkNamespaces={{{tenant}}}",
    ) as rel:
        yield Release(rel.env, tenant, rel.rx, list(state.egress), block, rel.common)
        print(f"node cgroup peak memory {node.memory_peak_bytes(state) / 2**20:.0f} MiB so far")


def test_relay_pods_deliver_from_the_pools_egress_ips_and_pools_that_cannot_say_why(
    release: Release, unique: str
) -> None:
    env, tenant, rx, common = release.env, release.tenant, release.rx, release.common
    not_held, nowhere = release.block[NOT_HELD - 1], release.block[NOWHERE - 1]
    assert not {not_held, nowhere} & set(release.egress)
    # A node that says it holds an address it does not: the label lies.
    harness.kubectl_ok(env, "label", "node", node_plan.NODE_NAME, f"{egress_label(not_held)}=true")
    try:
        egress = [
            (release.egress[0], "egress-1.sender.test"),
            (release.egress[1], "egress-2.sender.test"),
        ]
        sender, lost, liar = f"s{unique}", f"n{unique}", f"l{unique}"
        harness.apply(env, _pool(sender, tenant, egress, **common))
        harness.apply(env, _pool(lost, tenant, [(nowhere, "lost.sender.test")], **common))
        # its own metrics port: on one node, hostNetwork relays share the node's ports
        liar_spec = {**common, "metricsPort": 9091}
        harness.apply(env, _pool(liar, tenant, [(not_held, "liar.sender.test")], **liar_spec))

        started = time.monotonic()
        wait_for(
            lambda: harness.condition_true(harness.get_json(env, "sp", sender, "-n", tenant)),
            RELAY_READY_TIMEOUT_SECONDS,
            "the sending pool Ready (its relay pod binds both IPs)",
        )
        print(f"sending pool Ready {time.monotonic() - started:.1f}s after it was applied")
        [pod] = pool_pods(env, tenant, sender)
        assert pod["spec"]["hostNetwork"] is True
        assert pod["spec"]["nodeName"] == node_plan.NODE_NAME

        recipients = [f"u{i:02d}@{DOMAINS[i % len(DOMAINS)]}" for i in range(RECIPIENTS)]
        harness.apply(env, campaign_manifest("autumn", tenant, sender, recipients))
        harness.apply(env, campaign_manifest("stuck", tenant, lost, ["w1@alpha.egress.test"]))
        started = time.monotonic()
        wait_for(
            lambda: len(rx.recipients()) >= RECIPIENTS,
            DELIVERY_TIMEOUT_SECONDS,
            f"{RECIPIENTS} recipients at the receiver",
        )
        print(f"{RECIPIENTS} recipients delivered {time.monotonic() - started:.1f}s after apply")
        wait_for(
            lambda: (
                (harness.get_object(env, "camp", "autumn", tenant) or {})
                .get("status", {})
                .get("phase")
                == "Completed"
            ),
            DELIVERY_TIMEOUT_SECONDS,
            "the campaign Completed",
        )
        got = Counter(rx.recipients())
        assert got == Counter(recipients), got - Counter(recipients)
        helo_of = dict(egress)
        sources = Counter((m.peer, m.helo) for m in rx.messages())
        print(f"messages by (source IP, HELO): {dict(sources)}")
        assert {peer for peer, _ in sources} <= set(helo_of), sources
        assert all(helo_of[peer] == helo for peer, helo in sources), sources

        # The pool whose IP no node advertises: Pending, and the pool says why.
        wait_for(
            _pool_says(env, tenant, lost, "NoNodeHoldsEgressIPs"),
            REASON_TIMEOUT_SECONDS,
            "NoNodeHoldsEgressIPs on the pool whose IP no node advertises",
        )
        message = ready_condition(env, "sp", lost, tenant)["message"]
        print(f"OBSERVED no node: {message}")
        assert nowhere in message and "egress.mailpipe.io/<address>" in message, message
        assert [p["status"]["phase"] for p in pool_pods(env, tenant, lost)] == ["Pending"]
        # the campaign's status is written by a timer that waits for the object
        # to settle: wait for its first phase, which must say it waits
        wait_for(
            lambda: campaign_phase(env, tenant, "stuck") is not None,
            REASON_TIMEOUT_SECONDS,
            "a phase on the campaign whose pool has no node",
        )
        assert campaign_phase(env, tenant, "stuck") == "Pending"
        assert "w1@alpha.egress.test" not in rx.recipients()

        # The pool whose node does not hold its IP: running, not Ready, saying which.
        wait_for(
            _pool_says(env, tenant, liar, "EgressIPsNotBound"),
            REASON_TIMEOUT_SECONDS,
            "EgressIPsNotBound on the pool whose node does not hold its IP",
        )
        message = ready_condition(env, "sp", liar, tenant)["message"]
        print(f"OBSERVED cannot bind: {message}")
        assert f"cannot bind {not_held}" in message, message
        [liar_pod] = pool_pods(env, tenant, liar)
        [container] = liar_pod["status"]["containerStatuses"]
        assert container["restartCount"] == 0 and "running" in container["state"], container
    finally:
        harness.kubectl(env, "label", "node", node_plan.NODE_NAME, f"{egress_label(not_held)}-")


def _template_hash(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"].get("pod-template-hash", ""))


def test_a_throttle_change_rolls_the_host_network_relay_under_load_and_loses_nothing(
    release: Release, unique: str
) -> None:
    """A hostNetwork relay holds its node's metrics port, so its Deployment rolls
    old-first (no surge pod could fit the one egress node): the throttle change
    stops the old relay mid-campaign (it drains and commits), the new one takes
    the rest. Every recipient arrives; none twice (the old relay's graceful
    drain re-sends nothing; a crash would re-send at most its read window)."""
    env, tenant, rx = release.env, release.tenant, release.rx
    roller = f"r{unique}"
    slow = {"default": {"messagesPerMinute": SLOW_PER_MINUTE}}
    egress = [(release.egress[2], "egress-3.sender.test")]
    harness.apply(env, _pool(roller, tenant, egress, throttles=slow, **release.common))
    wait_for(
        lambda: harness.condition_true(harness.get_json(env, "sp", roller, "-n", tenant)),
        RELAY_READY_TIMEOUT_SECONDS,
        "the pool Ready",
    )
    [old] = pool_pods(env, tenant, roller)
    recipients = [f"r{i:02d}@{DOMAINS[i % len(DOMAINS)]}" for i in range(ROLL_RECIPIENTS)]
    harness.apply(env, campaign_manifest("winter", tenant, roller, recipients))
    wait_for(
        lambda: len(rx.recipients()) >= len(DOMAINS),
        DELIVERY_TIMEOUT_SECONDS,
        "the first recipients at the old rate",
    )
    before = len(rx.recipients())
    assert before < ROLL_RECIPIENTS, "the campaign finished before the roll: no load"
    fast = {"spec": {"throttles": {"default": {"messagesPerMinute": FAST_PER_MINUTE}}}}
    harness.kubectl_ok(
        env, "patch", "sp", roller, "-n", tenant, "--type=merge", "-p", json.dumps(fast)
    )
    started = time.monotonic()
    seen: set[str] = set()

    def rolled() -> bool:
        pods = pool_pods(env, tenant, roller)
        seen.update(p["metadata"]["name"] for p in pods)
        return (
            len(pods) == 1
            and _template_hash(pods[0]) != _template_hash(old)
            and harness.condition_true(pods[0])
        )

    wait_for(rolled, RELAY_READY_TIMEOUT_SECONDS, "the Deployment rolled to a new Ready relay")
    print(
        f"rolled {time.monotonic() - started:.1f}s after the throttle change, "
        f"{before} of {ROLL_RECIPIENTS} received before it; relay pods seen: {sorted(seen)}"
    )
    wait_for(
        lambda: set(rx.recipients()) >= set(recipients),
        DELIVERY_TIMEOUT_SECONDS,
        "every recipient at the receiver after the roll",
    )
    wait_for(
        lambda: (
            (harness.get_object(env, "camp", "winter", tenant) or {}).get("status", {}).get("phase")
            == "Completed"
        ),
        DELIVERY_TIMEOUT_SECONDS,
        "the campaign Completed",
    )
    got = Counter(r for r in rx.recipients() if r in set(recipients))
    twice = {r: n for r, n in got.items() if n > 1}
    print(f"OBSERVED roll under load: {len(got)} recipients, sent twice: {twice or 'none'}")
    assert set(got) == set(recipients)
    assert twice == {}, twice
    assert {m.peer for m in rx.messages() if set(m.rcpt_tos) & set(recipients)} == {egress[0][0]}
