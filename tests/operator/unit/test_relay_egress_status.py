"""Egress IPs a relay cannot use -> the pool's reason (`relay_pods`, `contracts.egress`).

Two troubles, both the platform's to fix and both to be read in `kubectl get
sp`: no node advertises the pool's egress IPs (the pod stays Pending on the
operator's node affinity), and a relay on a node that does not really hold
them (its `/readyz` answer names the addresses it cannot bind).
"""

from __future__ import annotations

import copy
from typing import Any

from mailpipe.contracts.egress import egress_reason
from mailpipe.operator.pool import build_deployment
from mailpipe.operator.relay_pods import PodReason, diagnose, readiness_to_ask
from tests.operator.unit.test_pool_builders import REF, spec
from tests.operator.unit.test_relay_pods import NOT_READY, NOW, UNSCHEDULABLE, _ago, _pod, _running

AFFINITY_MESSAGE = (
    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
    "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
)
CANNOT_BIND = (
    "egress IPs: cannot bind 172.30.240.9: not an address of this relay's network "
    "(with hostNetwork: the node's)"
)


def _two_ip_pod_spec() -> dict[str, Any]:
    s = spec(
        hostNetwork=True,
        egressIPs=[
            {"address": "172.30.240.1", "helo": "mta1.example.com"},
            {"address": "172.30.240.9", "helo": "mta2.example.com"},
        ],
    )
    pod_spec: dict[str, Any] = build_deployment(REF, s, "text")["spec"]["template"]["spec"]
    return pod_spec


def test_a_host_network_relay_may_only_go_where_every_egress_ip_is_advertised() -> None:
    pod_spec = _two_ip_pod_spec()
    [term] = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {"key": "egress.mailpipe.io/172.30.240.1", "operator": "Exists"},
        {"key": "egress.mailpipe.io/172.30.240.9", "operator": "Exists"},
    ]
    in_pod_network = build_deployment(REF, spec(), "text")["spec"]
    assert "affinity" not in in_pod_network["template"]["spec"]  # its IPs are the pod's
    assert "strategy" not in in_pod_network  # the default surge: a new relay fits anywhere


def test_a_host_network_relay_rolls_old_first_as_no_surge_pod_fits_its_node() -> None:
    s = spec(hostNetwork=True)
    strategy = build_deployment(REF, s, "text")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_a_pod_no_node_can_hold_names_its_egress_ips_and_the_label() -> None:
    pod = copy.deepcopy(UNSCHEDULABLE)
    pod["spec"] = {**pod["spec"], **_two_ip_pod_spec()}
    pod["status"]["conditions"][0]["message"] = AFFINITY_MESSAGE
    trouble = diagnose([pod], NOW)
    assert trouble is not None
    assert trouble.reason is PodReason.NO_NODE_HOLDS_EGRESS_IPS
    assert "no node holds all of its egress IPs 172.30.240.1 172.30.240.9" in trouble.message
    assert "egress.mailpipe.io/<address>" in trouble.message
    # Another reason not to fit (cpu) stays the scheduler's own.
    plain = diagnose([UNSCHEDULABLE], NOW)
    assert plain is not None and plain.reason is PodReason.UNSCHEDULABLE


def test_a_relay_that_cannot_bind_says_which_at_once_and_the_same_each_time() -> None:
    starting = _running(_pod(started=True, state={"running": {"startedAt": _ago(8)}}))
    name = starting["metadata"]["name"]
    answer = f"kafka access: NoBrokersAvailable (2 times, last 3s ago); {CANNOT_BIND}"
    trouble = diagnose([starting], NOW, {name: answer})
    assert trouble is not None
    assert trouble.reason is PodReason.EGRESS_IPS_NOT_BOUND
    assert trouble.message == (
        f"relay pod {name}: cannot send from its egress IPs: cannot bind 172.30.240.9: "
        "not an address of this relay's network (with hostNetwork: the node's)"
    )
    later = diagnose([starting], NOW, {name: f"{CANNOT_BIND}; kafka access: x (9 times)"})
    assert later == trouble
    # Without an answer about egress: starting is no trouble, long not Ready the generic one.
    assert diagnose([starting], NOW, {name: "kafka access: x"}) is None
    generic = diagnose([NOT_READY], NOW, {})
    assert generic is not None and generic.reason is PodReason.RELAYS_NOT_READY


def test_only_running_relays_that_are_not_ready_are_asked_at_their_metrics_port() -> None:
    def with_port(pod: dict[str, Any], name: str) -> dict[str, Any]:
        pod = copy.deepcopy(pod)
        pod["metadata"]["name"] = name
        pod["spec"]["containers"][0]["ports"] = [{"name": "metrics", "containerPort": 9090}]
        return pod

    ready = with_port(NOT_READY, "ready")
    ready["status"]["containerStatuses"][0]["ready"] = True
    pods = [
        with_port(NOT_READY, "a"),
        ready,
        with_port(UNSCHEDULABLE, "pending"),
        with_port(NOT_READY, "b"),
        with_port(NOT_READY, "c"),
    ]
    assert readiness_to_ask(pods, limit=2) == [
        ("a", "http://10.244.0.17:9090/readyz"),
        ("b", "http://10.244.0.17:9090/readyz"),
    ]


def test_the_egress_part_of_a_readiness_answer() -> None:
    assert egress_reason("ok") is None
    assert egress_reason(CANNOT_BIND) == CANNOT_BIND.split(": ", 1)[1]
