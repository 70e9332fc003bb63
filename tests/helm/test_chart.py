"""The chart: lint, rendering with several value sets, schema, CRD source, install."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.devstack import harness
from mailpipe.devstack.harness import kubectl

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailpipe"
OPENAPI_PUBLISHED_SECONDS = 15  # the apiserver publishes a new CRD's OpenAPI within seconds


def helm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return harness.helm(env, *args)


def render(*sets: str, namespace: str = "mail") -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", namespace, "--include-crds"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def test_lint_is_clean() -> None:
    out = helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_defaults_render_cluster_wide_least_privilege() -> None:
    docs = render()
    assert kinds(docs) == [
        "ClusterRole/rel-mailpipe-edit",
        "ClusterRole/rel-mailpipe-operator",
        "ClusterRole/rel-mailpipe-operator-crds",
        "ClusterRole/rel-mailpipe-operator-workloads",
        "ClusterRole/rel-mailpipe-pool-admin",
        "ClusterRole/rel-mailpipe-uninstall",  # the pre-delete hook's (hooks/uninstall.yaml)
        "ClusterRole/rel-mailpipe-view",
        "ClusterRoleBinding/rel-mailpipe-operator",
        "ClusterRoleBinding/rel-mailpipe-operator-crds",
        "ClusterRoleBinding/rel-mailpipe-uninstall",
        "CustomResourceDefinition/campaigns.mailpipe.io",
        "CustomResourceDefinition/sendingpools.mailpipe.io",
        "Deployment/rel-mailpipe-operator",
        "Job/rel-mailpipe-uninstall",
        "Pod/rel-mailpipe-test",
        "ServiceAccount/rel-mailpipe-operator",
        "ServiceAccount/rel-mailpipe-uninstall",
    ]  # no binding of the workload role: no namespace is onboarded by default

    def rules(name: str) -> dict[tuple[tuple[str, ...], tuple[str, ...]], set[str]]:
        role = next(d for d in docs if d["metadata"]["name"] == name and d["kind"] == "ClusterRole")
        return {
            (tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]
        }

    watch = rules("rel-mailpipe-operator")
    assert watch[(("apps",), ("deployments",))] == {"get", "list", "watch"}  # read-only
    assert not any(res in ("configmaps", "services", "secrets") for _, r in watch for res in r)
    workloads = rules("rel-mailpipe-operator-workloads")
    assert workloads[(("",), ("configmaps", "services"))] == {
        "get",
        "create",
        "patch",
        "update",
        "delete",
    }  # by name only: no list or watch of ConfigMaps
    assert workloads[(("",), ("secrets",))] == {"get"}
    for verbs in [*watch.values(), *workloads.values()]:
        assert "*" not in verbs
    assert not any("kopf.dev" in g for g, _ in watch)  # no peering unless enabled
    view = next(d for d in docs if d["metadata"]["name"] == "rel-mailpipe-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    admin = next(d for d in docs if d["metadata"]["name"] == "rel-mailpipe-pool-admin")
    assert not any("aggregate" in k for k in admin["metadata"]["labels"])


def test_tenant_namespaces_bind_the_workload_role_only_there() -> None:
    docs = render("rbac.tenantNamespaces={team-a,team-b}")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings} == {
        ("team-a", "rel-mailpipe-operator-workloads"),
        ("team-b", "rel-mailpipe-operator-workloads"),
    }
    assert "ClusterRoleBinding/rel-mailpipe-operator-workloads" not in kinds(docs)
    everywhere = render("rbac.tenantNamespaces={*}")
    assert "ClusterRoleBinding/rel-mailpipe-operator-workloads" in kinds(everywhere)


def test_deployment_runs_non_root_with_the_operator_entry_point() -> None:
    dep = next(d for d in render("image.tag=1.2.3") if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/mailpipe/mailpipe:1.2.3"
    assert container["args"][0] == "operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_watching_namespaces_installs_roles_instead_of_cluster_roles() -> None:
    docs = render("operator.watchNamespaces={mail,news}", "rbac.aggregatedRoles=false")
    names = kinds(docs)
    assert (
        "Role/rel-mailpipe-operator" in names and "ClusterRole/rel-mailpipe-operator" not in names
    )
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"} == {"mail", "news"}
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert "--namespace=mail" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_monitoring_and_peering_are_optional() -> None:
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.dashboard.enabled=true",
        "peering.enabled=true",
    )
    names = kinds(docs)
    assert "ServiceMonitor/rel-mailpipe-relays" in names
    dash = next(d for d in docs if d["kind"] == "ConfigMap")
    panels = json.loads(dash["data"]["mailpipe.json"])["panels"]
    assert {p["title"] for p in panels} >= {
        "Deliveries by outcome",
        "Consumer lag",
        "Warm-up budget left per IP",
    }
    role = next(
        d
        for d in docs
        if d["metadata"]["name"] == "rel-mailpipe-operator" and d["kind"] == "ClusterRole"
    )
    assert any("kopf.dev" in r["apiGroups"] for r in role["rules"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("operator.replicas=-1", "replicas"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("bogus=1", "bogus"),
    ],
)
def test_schema_rejects_bad_values(value: str, message: str) -> None:
    out = helm("template", "rel", str(CHART), "--set", value)
    assert out.returncode != 0
    assert message in out.stderr


def test_chart_crds_are_the_crds_directory() -> None:
    docs = [d for d in render() if d["kind"] == "CustomResourceDefinition"]
    for doc in docs:
        plural = doc["spec"]["names"]["plural"]
        assert doc == yaml.safe_load((ROOT / "crds" / f"{plural}.yaml").read_text())
    assert (CHART / "crds").resolve() == (ROOT / "crds").resolve()  # one source, no copy


def test_dockerfile_entry_points_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    entry = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    [command] = json.loads(entry.split(None, 1)[1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command in scripts
    exe = Path(sys.executable).parent / command
    helptext = subprocess.run([str(exe), "--help"], capture_output=True, text=True).stdout
    dep = next(d for d in render() if d["kind"] == "Deployment")
    operator_sub = dep["spec"]["template"]["spec"]["containers"][0]["args"][0]
    from mailpipe.operator.models import SendingPoolSpec
    from mailpipe.operator.pool import PoolRef, build_deployment

    pool = SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": "k:9092"},
            "egressIPs": [{"address": "10.0.0.1", "helo": "a.test"}],
        }
    )
    relay_sub = build_deployment(PoolRef("p", "n", "u"), pool, "")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"][0]
    for sub in (operator_sub, relay_sub):
        assert sub in helptext, f"{sub} is not a subcommand of {command}"
    assert "USER 10001" in dockerfile


def test_image_ships_no_dev_stack() -> None:
    """The image copies the production source roots only (ARCHITECTURE.md, components)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    copies = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert "devstack/" not in copies and all("devstack" not in c for c in copies), copies
    assert {"common/", "operator/", "relay/"} <= set(copies), copies


@pytest.mark.operator
def test_install_then_uninstall_leaves_only_the_crds(
    cli_env: dict[str, str], namespace: str
) -> None:
    installed = helm(
        "install", "mp", str(CHART), "-n", namespace, "--set", "operator.replicas=0", env=cli_env
    )
    assert installed.returncode == 0, installed.stderr
    harness.kubectl_ok(
        cli_env, "wait", "--for=condition=Established", "crd/sendingpools.mailpipe.io"
    )

    def explain() -> subprocess.CompletedProcess[str]:
        return kubectl(cli_env, "explain", "sendingpool.spec.egressIPs")

    with contextlib.suppress(harness.TimedOut):
        harness.wait_for(lambda: explain().returncode == 0, OPENAPI_PUBLISHED_SECONDS, "explain")
    explained = explain()
    assert "Egress IPs with their HELO names" in explained.stdout, (
        explained.stdout + explained.stderr
    )
    manifest = helm("get", "manifest", "mp", "-n", namespace, env=cli_env).stdout
    created = [d for d in yaml.safe_load_all(manifest) if d]
    assert created
    # --no-hooks: the pre-delete Job (hooks/uninstall.yaml) needs a kubelet to run,
    # which the dev stack has not; what it runs is tested in test_day2.py.
    removed = helm("uninstall", "mp", "-n", namespace, "--wait", "--no-hooks", env=cli_env)
    assert removed.returncode == 0, removed.stderr
    for doc in created:
        ns_args = (
            ["-n", namespace] if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding") else []
        )
        got = kubectl(cli_env, "get", doc["kind"], doc["metadata"]["name"], *ns_args)
        assert got.returncode != 0 and "NotFound" in got.stderr, (
            f"{doc['kind']}/{doc['metadata']['name']} remains"
        )
    crd = kubectl(cli_env, "get", "crd", "sendingpools.mailpipe.io")
    assert crd.returncode == 0  # Helm keeps CRDs it installed from crds/
