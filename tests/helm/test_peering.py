"""`operator.replicas: 2` with peering: exactly one replica acts, and the other takes over.

Two operators from the chart's own Deployment (same args, as two pods of one
ReplicaSet would run), against the KopfPeering object the chart installs: one
pauses in favour of the other (distinct priorities: kopf pauses *both* when
two share one), and when the active one stops, the other resumes. Before, the
chart shipped neither the peering object nor distinct priorities, and two
replicas without peering both acted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailpipe.devstack import harness
from mailpipe.devstack.stack import StackState
from tests.conftest import wait_for
from tests.helm.kubelet import Kubelet

pytestmark = pytest.mark.operator

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailpipe"
PEERING_SECONDS = 60  # kopf's peers see each other within a few keep-alives
PAUSED = "Pausing operations in favour of"
RESUMED = "Resuming operations after the pause"


@pytest.fixture
def replicas(
    cli_env: dict[str, str], stack_state: StackState, namespace: str, unique: str, tmp_path: Path
) -> Iterator[tuple[Kubelet, str]]:
    harness.kubectl_ok(cli_env, "apply", "-f", str(ROOT / "crds"))
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        harness.kubectl_ok(cli_env, "wait", "--for=condition=Established", f"crd/{crd}")
    name = f"pr{unique}"
    harness.helm_ok(
        cli_env,
        "install",
        name,
        str(CHART),
        "-n",
        namespace,
        "--set",
        f"operator.watchNamespaces={{{namespace}}}",
        "--set",
        "operator.replicas=2",
        "--set",
        "peering.enabled=true",
    )
    kubelet = Kubelet(cli_env, Path(stack_state.kubeconfig), tmp_path)
    try:
        yield kubelet, name
    finally:
        kubelet.children.stop_all()
        harness.helm(
            cli_env, "uninstall", name, "-n", namespace, "--no-hooks"
        )  # hook Job: no kubelet


def test_two_replicas_elect_one_and_hand_over(
    cli_env: dict[str, str], namespace: str, replicas: tuple[Kubelet, str]
) -> None:
    kubelet, release = replicas
    first = kubelet.run_operator(release, namespace)
    second = kubelet.run_operator(release, namespace)

    def peers() -> dict[str, dict[str, object]]:
        # the full resource name: a discovery cache from before the CRD knows no short one
        obj = harness.get_object(cli_env, "kopfpeerings.kopf.dev", "mailpipe", namespace) or {}
        return dict(obj.get("status") or {})

    wait_for(lambda: len(peers()) == 2, PEERING_SECONDS, "both replicas in the KopfPeering", first)
    priorities = {p["priority"] for p in peers().values()}
    assert len(priorities) == 2, peers()  # equal priorities would pause both

    def paused() -> list[harness.Child]:
        return [c for c in (first, second) if PAUSED in c.log_tail(500)]

    wait_for(lambda: len(paused()) == 1, PEERING_SECONDS, "exactly one replica paused", first)
    [standby] = paused()
    active = second if standby is first else first
    assert PAUSED not in active.log_tail(500)

    active.stop()
    wait_for(
        lambda: RESUMED in standby.log_tail(500),
        PEERING_SECONDS,
        "the standby replica resumed",
        standby,
    )
