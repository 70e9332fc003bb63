"""End to end: the demo's whole run, smaller, on the stack's real node: the
operator and the pool's relay, feedback receiver and unsubscribe endpoint as
pods from the image built here, its per-domain and per-IP numbers, and what
comes back (DSNs, a complaint, a one-click unsubscribe, an out-of-office reply,
a follow-up campaign that skips the suppressed)."""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailpipe.devstack import harness, node_plan, procs
from mailpipe.devstack.demo import OPERATOR, RELAY, SYSTEM_NAMESPACE, Demo, Plan
from mailpipe.devstack.demo_plan import domain_of
from mailpipe.devstack.node import Node
from mailpipe.devstack.stack import Stack, StackState
from tests.conftest import wait_for

# The demo installs its chart into fixed namespaces, sets the stack's DNS
# records and brings up the stack's node: it runs alone, in the cluster phase.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.exclusive,
    pytest.mark.cluster,
    # a cold image build, the node, a loaded machine; the demo's own waits come first
    pytest.mark.timeout(2700),
]
# The demo's own stack (Kafka's JVM, etcd, the API server), then its node, on a
# loaded 2-core machine.
INTERRUPT_AFTER_TIMEOUT_SECONDS = 600
# The demo's clean-up (the chart, the node) and the stack's `down`.
STOPPED_TIMEOUT_SECONDS = 600


def test_campaign_end_to_end_with_every_component_a_pod(devstack: Stack, tmp_path: Path) -> None:
    plan = Plan.make(200)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line)  # pytest shows it when the run fails with an exception

    demo = Demo(devstack, tmp_path, plan, say)
    ok = demo.run()
    report = "\n".join(lines)
    assert ok, report
    failed = [what for good, what in demo.checks if not good]
    assert failed == [], report
    # Issue 18: the operator listened on 0.0.0.0 (the chart's value) on a stack said to be loopback.
    assert any("listens on loopback only" in what for _, what in demo.checks), report

    # Issue 17: during the demo, `kubectl get pods -A` showed the operator and
    # the relay Running on the node with the image built here, and printed it.
    assert "kubectl get pods -A" in report
    assert demo.image and demo.image in report
    by_role = {
        "operator": [p for p in demo.pods if p["metadata"]["name"].startswith(f"{OPERATOR}-")],
        "relay": [p for p in demo.pods if p["metadata"]["name"].startswith(f"{RELAY}-")],
    }
    for role, pods in by_role.items():
        assert pods, (role, report)
        for pod in pods:
            assert pod["status"]["phase"] == "Running", (role, pod["status"])
            assert pod["spec"]["nodeName"] == node_plan.NODE_NAME
            assert [c["image"] for c in pod["spec"]["containers"]] == [demo.image]
            assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["status"]
    assert {p["metadata"]["namespace"] for p in by_role["operator"]} == {SYSTEM_NAMESPACE}
    [relay] = by_role["relay"]
    assert relay["spec"]["hostNetwork"] is True
    for step in ("node up", "image import", "helm install", "pool Ready", "campaign Completed"):
        assert step in demo.timings, demo.timings

    # The numbers the summary prints, checked here against the plan itself.
    assert len(plan.bounce) == 10 and len(plan.defer) == 10 and len(plan.suppressed) == 2
    assert len(plan.async_bounce) == 2 and len(plan.came_back) == 4
    warm, warming = demo.egress.warm, demo.egress.warming
    per_ip: Counter[str] = Counter()
    per_domain: Counter[str] = Counter()
    for m in demo.receiver.messages():
        per_ip[m.peer] += len(m.rcpt_tos)
        per_domain.update(domain_of(r) for r in m.rcpt_tos)
    # alpha.test: its 50, and the follow-up to the one who was only away
    assert per_domain == {"alpha.test": 51, "beta.test": 40, "gamma.test": 50, "delta.test": 48}
    assert set(per_ip) <= {warm, warming}, per_ip  # mail left from the node's egress addresses
    assert 0 < per_ip[warming] <= plan.warmup_cap == 20
    assert per_ip[warm] + per_ip[warming] == 189
    # What came back went the way of the world: every report over SMTP to the
    # feedback receiver pod, the POST through the ingress stand-in to the endpoint pod.
    assert sorted(demo.answers.values()) == [200, *[250] * 4], demo.answers
    for part in ("inactive_mailbox by DSN", "complained 1 == 1", "unsubscribed 1 == 1"):
        assert any(part in what for _, what in demo.checks), (part, report)
    assert "follow-up skipped the 4 suppressed" in report
    assert_no_secret_in_any_log(demo, report)
    # Everything the demo made is gone: the node with its pods, the chart.
    assert demo.node_state is not None and demo.node.state is None
    assert demo.node.leftovers(demo.node_state) == []


def secrets_in(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value and value in text]


def assert_no_secret_in_any_log(demo: Demo, report: str) -> None:
    """Issue 11: the pool's DKIM key and its feedback token key never reach a
    pod's log or the demo's output, while the run really used both. (The
    operator's token is its pod's own ServiceAccount token: the demo never sees it.)"""
    delivered = demo.receiver.messages()
    assert delivered and all(b"DKIM-Signature:" in m.data for m in delivered)  # key in use
    pem_lines = demo.dkim_pem.strip().splitlines()
    secrets = {
        "a line of the DKIM key": pem_lines[5],
        "the DKIM key's base64, as Secret data shows it": "".join(pem_lines[1:-1])[:64],
        "the DKIM Secret's data field": base64.b64encode(demo.dkim_pem.encode()).decode()[:64],
        "a PEM private key": "PRIVATE KEY-----",
        "the feedback token key's Secret data": base64.b64encode(demo.feedback_key).decode(),
        "the feedback token key in hex": demo.feedback_key.hex(),
    }
    assert demo.feedback_key  # the tokens of every message were signed with it
    # the operator, the relay, the receiver, the endpoint: each pod's log was saved
    for prefix in (OPERATOR, RELAY, "mailpipe-feedback-demo", "mailpipe-unsubscribe-demo"):
        assert any(name.startswith(f"{prefix}-") for name in demo.pod_logs), demo.pod_logs
    logs = list(demo.pod_logs.values())
    assert all(log.stat().st_size > 0 for log in logs), logs
    leaked = {
        str(f): found for f in logs if (found := secrets_in(f.read_text(errors="replace"), secrets))
    }
    assert not leaked and not secrets_in(report, secrets), leaked


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose node sockets fit containerd's 104 bytes (pytest's
    temporary directories are too deep for a node of its own)."""
    path = Path(tempfile.mkdtemp(prefix="mpdemo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_an_interrupted_demo_leaves_nothing_behind(short_dir: Path) -> None:
    """Ctrl-C once the demo's node is up (while the image is imported or the
    chart installed): exit 130, and no process, mount, cgroup, rule, link or
    namespace of its node or its stack is left."""
    state_dir = short_dir / "demo"
    command = [str(harness.MAILPIPE), "demo", "--recipients", "20", "--state-dir", str(state_dir)]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        node = Node(state_dir)
        wait_for(
            lambda: demo.poll() is not None or bool((s := node.state) and s.complete),
            INTERRUPT_AFTER_TIMEOUT_SECONDS,
            "the demo's node up",
        )
        node_state, stack_state = node.state, StackState.load(state_dir)
        assert demo.poll() is None, demo.communicate()[0]
        assert node_state is not None and stack_state is not None
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=STOPPED_TIMEOUT_SECONDS)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 128 + signal.SIGINT, out
    assert "interrupted: everything the demo started is stopped" in out, out
    assert node.leftovers(node_state) == [], out
    assert [n for n, p in stack_state.processes.items() if procs.alive(p.pid)] == [], out
    assert Stack(state_dir).state is None
