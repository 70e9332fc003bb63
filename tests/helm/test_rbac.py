"""Least privilege, proven on a real apiserver: `kubectl auth can-i` as every
ServiceAccount and role the chart creates, against a table of allowed and
denied verbs per namespace (issue 11: "RBAC wider than needed").

The chart is installed with `operator.replicas=0` (nothing to run: RBAC is
what is checked) and the tenant roles are bound to made-up users the way a
platform team would bind them. The dev stack runs no controller-manager, so
the built-in view/edit/admin roles do not aggregate here; the tests bind our
ClusterRoles directly, which is what aggregation copies. What the operator
does with these rights as the chart's ServiceAccount (relays where onboarded,
Forbidden elsewhere) runs on the stack's node: tests/cluster/test_chart_on_node.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailpipe.devstack import harness
from mailpipe.devstack.harness import kubectl

pytestmark = [pytest.mark.operator, pytest.mark.security]

CHART = Path(__file__).resolve().parents[2] / "helm" / "mailpipe"
YES, NO = True, False


def helm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return harness.helm(env, *args)


def can_i(env: dict[str, str], who: str, verb: str, resource: str, ns: str | None) -> bool:
    where = ["--all-namespaces"] if ns is None else ["-n", ns]
    kind, _, sub = resource.partition("/")  # "x/status" means the subresource, not a name
    subresource = [f"--subresource={sub}"] if sub else []
    out = kubectl(env, "auth", "can-i", verb, kind, f"--as={who}", *where, *subresource)
    answer = out.stdout.strip()
    assert answer in ("yes", "no"), out.stdout + out.stderr
    return answer == "yes"


def check_table(
    env: dict[str, str], who: str, table: list[tuple[str, str, str | None, bool]]
) -> None:
    wrong = [
        f"{verb} {resource} in {ns or 'all namespaces'}: expected {'yes' if want else 'no'}"
        for verb, resource, ns, want in table
        if can_i(env, who, verb, resource, ns) != want
    ]
    assert not wrong, f"{who}:\n" + "\n".join(wrong)


@pytest.fixture
def namespaces(cli_env: dict[str, str], unique: str) -> Iterator[tuple[str, str]]:
    """Two tenant namespaces: team A is onboarded, team B is not."""
    names = (f"team-a-{unique}", f"team-b-{unique}")
    for n in names:
        harness.kubectl_ok(cli_env, "create", "namespace", n)
    yield names
    for n in names:
        kubectl(cli_env, "delete", "namespace", n, "--wait=false")


@pytest.fixture
def release(cli_env: dict[str, str], namespace: str) -> Iterator[None]:
    """Uninstalls the test's release `rel` afterwards (ClusterRoles are cluster-wide)."""
    yield
    # --no-hooks: the pre-delete Job runs a pod, and only the node tests have a
    # kubelet (tests/cluster, where the hook runs and deletes the CRs)
    helm(cli_env, "uninstall", "rel", "-n", namespace, "--wait", "--no-hooks")


def install(env: dict[str, str], namespace: str, *sets: str) -> None:
    args = ["install", "rel", str(CHART), "-n", namespace, "--set", "operator.replicas=0"]
    for s in sets:
        args += ["--set", s]
    out = helm(env, *args)
    assert out.returncode == 0, out.stderr


def test_cluster_wide_operator_writes_only_in_onboarded_namespaces(
    cli_env: dict[str, str], namespace: str, namespaces: tuple[str, str], release: None
) -> None:
    team_a, team_b = namespaces
    install(cli_env, namespace, f"rbac.tenantNamespaces={{{team_a}}}")
    operator = f"system:serviceaccount:{namespace}:rel-mailpipe-operator"
    check_table(
        cli_env,
        operator,
        [
            # its own resources, everywhere it watches
            ("list", "sendingpools.mailpipe.io", None, YES),
            ("watch", "campaigns.mailpipe.io", None, YES),
            ("patch", "sendingpools.mailpipe.io/status", team_b, YES),
            ("create", "events", team_b, YES),
            ("watch", "deployments.apps", None, YES),
            # relays only where onboarded
            ("create", "deployments.apps", team_a, YES),
            ("delete", "deployments.apps", team_a, YES),
            ("patch", "configmaps", team_a, YES),
            ("create", "services", team_a, YES),
            ("create", "poddisruptionbudgets.policy", team_a, YES),
            ("get", "secrets", team_a, YES),
            # relay pods read where relays run, to say why they are missing
            ("list", "pods", team_a, YES),
            ("create", "deployments.apps", team_b, NO),
            ("get", "secrets", team_b, NO),
            ("get", "configmaps", team_b, NO),
            ("list", "pods", team_b, NO),
            ("list", "pods", "kube-system", NO),
            ("watch", "pods", None, NO),
            # never kube-system, never enumerate ConfigMaps or Secrets
            ("create", "deployments.apps", "kube-system", NO),
            ("patch", "deployments.apps", "kube-system", NO),
            ("get", "configmaps", "kube-system", NO),
            ("get", "secrets", "kube-system", NO),
            ("list", "configmaps", team_a, NO),
            ("watch", "configmaps", None, NO),
            ("list", "secrets", team_a, NO),
            # nothing beyond its job
            ("create", "pods", team_a, NO),
            ("delete", "pods", team_a, NO),
            ("create", "rolebindings.rbac.authorization.k8s.io", team_a, NO),
            ("delete", "namespaces", None, NO),
            ("create", "sendingpools.mailpipe.io", team_a, NO),
            ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, NO),
        ],
    )


def test_namespaced_operator_touches_nothing_outside_its_namespaces(
    cli_env: dict[str, str], namespace: str, namespaces: tuple[str, str], release: None
) -> None:
    team_a, team_b = namespaces
    install(cli_env, namespace, f"operator.watchNamespaces={{{team_a}}}")
    operator = f"system:serviceaccount:{namespace}:rel-mailpipe-operator"
    check_table(
        cli_env,
        operator,
        [
            ("list", "sendingpools.mailpipe.io", team_a, YES),
            ("create", "deployments.apps", team_a, YES),
            ("get", "secrets", team_a, YES),
            ("list", "pods", team_a, YES),
            ("list", "sendingpools.mailpipe.io", None, NO),
            ("list", "pods", team_b, NO),
            ("list", "sendingpools.mailpipe.io", team_b, NO),
            ("create", "deployments.apps", team_b, NO),
            ("create", "deployments.apps", "kube-system", NO),
            ("get", "configmaps", "kube-system", NO),
            ("list", "configmaps", team_a, NO),
        ],
    )


def test_tenants_write_campaigns_and_only_the_platform_writes_pools(
    cli_env: dict[str, str], namespace: str, namespaces: tuple[str, str], release: None
) -> None:
    team_a, team_b = namespaces
    install(cli_env, namespace)
    bindings = [
        ("tenant", "rel-mailpipe-edit"),
        ("viewer", "rel-mailpipe-view"),
        ("platform", "rel-mailpipe-pool-admin"),
    ]
    for user, role in bindings:
        harness.kubectl_ok(
            cli_env,
            "create",
            "rolebinding",
            user,
            f"--clusterrole={role}",
            f"--user={user}",
            "-n",
            team_a,
        )
    check_table(
        cli_env,
        "tenant",
        [
            ("create", "campaigns.mailpipe.io", team_a, YES),
            ("delete", "campaigns.mailpipe.io", team_a, YES),
            ("get", "sendingpools.mailpipe.io", team_a, YES),
            ("create", "sendingpools.mailpipe.io", team_a, NO),
            ("patch", "sendingpools.mailpipe.io", team_a, NO),
            ("patch", "campaigns.mailpipe.io/status", team_a, NO),
            ("create", "campaigns.mailpipe.io", team_b, NO),
        ],
    )
    check_table(
        cli_env,
        "viewer",
        [
            ("list", "campaigns.mailpipe.io", team_a, YES),
            ("create", "campaigns.mailpipe.io", team_a, NO),
        ],
    )
    check_table(
        cli_env,
        "platform",
        [
            ("create", "sendingpools.mailpipe.io", team_a, YES),
            ("update", "sendingpools.mailpipe.io/scale", team_a, YES),
            ("patch", "sendingpools.mailpipe.io/status", team_a, NO),
            ("create", "sendingpools.mailpipe.io", team_b, NO),
        ],
    )


def test_install_refuses_a_tenant_namespace_that_does_not_exist(
    cli_env: dict[str, str], namespace: str, unique: str, release: None
) -> None:
    """Issue 18: an install onboarding a namespace that does not exist yet failed
    half-way (`namespaces "mail" not found`) and left a release that refused the
    retry (`cannot reuse a name that is still in use`). It is refused before
    anything is created, saying what to do, and the retry then works."""
    missing = f"team-c-{unique}"
    out = helm(
        cli_env,
        "install",
        "rel",
        str(CHART),
        "-n",
        namespace,
        "--set",
        "operator.replicas=0",
        "--set",
        f"rbac.tenantNamespaces={{{missing}}}",
    )
    assert out.returncode != 0
    told = f'namespace "{missing}" does not exist: create it first (kubectl create namespace'
    assert told in out.stderr, out.stderr
    assert helm(cli_env, "status", "rel", "-n", namespace).returncode != 0  # no half release
    harness.kubectl_ok(cli_env, "create", "namespace", missing)
    try:
        install(cli_env, namespace, f"rbac.tenantNamespaces={{{missing}}}")
    finally:
        kubectl(cli_env, "delete", "namespace", missing, "--wait=false")
