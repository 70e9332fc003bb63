"""The chart: lint, rendering with several value sets, schema, CRD source, install."""

from __future__ import annotations

import contextlib
import json
import re
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
# Several tenant namespaces need Kafka logins (templates/checks.yaml)
LOGINS = "policy.kafkaCredentialsRequired=true"
OPENAPI_PUBLISHED_SECONDS = 15  # the apiserver publishes a new CRD's OpenAPI within seconds


def helm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return harness.helm(env, *args)


SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"


def render(
    *sets: str, namespace: str = "mail", api_versions: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", namespace, "--include-crds"]
    for s in sets:
        args += ["--set", s]
    for api in api_versions:
        args += ["--api-versions", api]
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
        "ConfigMap/rel-mailpipe-policy",
        "CustomResourceDefinition/campaigns.mailpipe.io",
        "CustomResourceDefinition/clusterkopfpeerings.kopf.dev",
        "CustomResourceDefinition/kopfpeerings.kopf.dev",
        "CustomResourceDefinition/sendingpools.mailpipe.io",
        "Deployment/rel-mailpipe-operator",
        "Job/rel-mailpipe-uninstall",
        "Pod/rel-mailpipe-test",
        "Role/rel-mailpipe-test",
        "RoleBinding/rel-mailpipe-test",
        "Secret/rel-mailpipe-config-signing",  # the key relay configs are signed with
        "Service/rel-mailpipe-operator",
        "ServiceAccount/rel-mailpipe-operator",
        "ServiceAccount/rel-mailpipe-test",
        "ServiceAccount/rel-mailpipe-uninstall",
        "ValidatingAdmissionPolicy/rel-mailpipe-topic-ownership",
        "ValidatingAdmissionPolicyBinding/rel-mailpipe-topic-ownership",
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
    # relay pods read to say why relays are missing: never written, never watched
    assert workloads[(("",), ("pods",))] == {"get", "list"}
    assert not any("pods" in r for _, r in watch)
    for verbs in [*watch.values(), *workloads.values()]:
        assert "*" not in verbs
    assert not any("kopf.dev" in g for g, _ in watch)  # no peering unless enabled
    view = next(d for d in docs if d["metadata"]["name"] == "rel-mailpipe-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    admin = next(d for d in docs if d["metadata"]["name"] == "rel-mailpipe-pool-admin")
    assert not any("aggregate" in k for k in admin["metadata"]["labels"])


def test_tenant_namespaces_bind_the_workload_role_only_there() -> None:
    docs = render("rbac.tenantNamespaces={team-a,team-b}", LOGINS)
    bindings = [  # `helm test`'s own binding (a hook) aside
        d
        for d in docs
        if d["kind"] == "RoleBinding" and "helm.sh/hook" not in d["metadata"].get("annotations", {})
    ]
    assert {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings} == {
        ("team-a", "rel-mailpipe-operator-workloads"),
        ("team-b", "rel-mailpipe-operator-workloads"),
    }
    assert "ClusterRoleBinding/rel-mailpipe-operator-workloads" not in kinds(docs)
    everywhere = render("rbac.tenantNamespaces={*}", LOGINS)
    assert "ClusterRoleBinding/rel-mailpipe-operator-workloads" in kinds(everywhere)


def test_the_default_image_is_the_one_this_checkout_builds() -> None:
    """The chart's defaults name an image a user can produce: what `make image`
    (scripts/build-image.sh) and the README's `docker build` tag, at the chart's
    appVersion, which a node that has it loaded runs without a pull. The former
    default, ghcr.io/mailpipe/mailpipe, exists nowhere: ImagePullBackOff in the
    first minute."""
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    built = re.search(r"^REPOSITORY=\$\{MAILPIPE_IMAGE_REPOSITORY:-(\S+)\}$", script, re.M)
    assert built is not None, "build-image.sh names its repository"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    default = f"{built[1]}:{version}"
    docs = render()
    container = operator_container(docs)
    assert container["image"] == default
    assert container["imagePullPolicy"] == "IfNotPresent"  # loaded on the node: no pull
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILPIPE_RELAY_IMAGE"] == default  # the relays run it too
    assert default in (ROOT / "README.md").read_text()  # how to build and load it is said


def test_deployment_runs_non_root_with_the_operator_entry_point() -> None:
    dep = next(d for d in render("image.tag=1.2.3") if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "mailpipe.local/mailpipe:1.2.3"
    assert container["args"][0] == "operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_watching_namespaces_installs_roles_instead_of_cluster_roles() -> None:
    docs = render("operator.watchNamespaces={mail,news}", "rbac.aggregatedRoles=false", LOGINS)
    names = kinds(docs)
    assert (
        "Role/rel-mailpipe-operator" in names and "ClusterRole/rel-mailpipe-operator" not in names
    )
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"} == {"mail", "news"}
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert "--namespace=mail" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_topic_policy_of_a_namespaced_release_polices_its_namespaces_only() -> None:
    """A release that watches namespaces refuses pools there only: bound to the
    whole cluster, one team's release refused another team's pools (CI saw a test
    release's policy refuse a pool in a namespace it did not watch)."""
    [binding] = [
        d
        for d in render("operator.watchNamespaces={team-a}")
        if d["kind"] == "ValidatingAdmissionPolicyBinding"
    ]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}
    ]
    [cluster_wide] = [d for d in render() if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert "matchResources" not in cluster_wide["spec"]


def test_monitoring_and_peering_are_optional() -> None:
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.dashboard.enabled=true",
        "peering.enabled=true",
        api_versions=(SERVICE_MONITOR_API,),
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
    # --no-hooks: the pre-delete Job (hooks/uninstall.yaml) runs a pod, and this
    # API-server test has no node; the Job runs on the node in
    # tests/cluster/test_chart_on_node.py, what it runs is tested in test_day2.py.
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


# -- issue 12, point 7: the chart and its docs ------------------------------------------


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = next(d for d in docs if d["kind"] == "Deployment")
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def test_service_monitors_render_only_where_their_crd_exists() -> None:
    """Without the Prometheus Operator's CRD, `serviceMonitor.enabled=true` used to fail
    the install or upgrade ("no matches for kind ServiceMonitor")."""
    enabled = "metrics.serviceMonitor.enabled=true"
    assert not [d for d in render(enabled) if d["kind"] == "ServiceMonitor"]
    docs = render(enabled, api_versions=(SERVICE_MONITOR_API,))
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {
        "rel-mailpipe-relays",
        "rel-mailpipe-endpoints",
        "rel-mailpipe-operator",
    }
    service = next(d for d in docs if d["kind"] == "Service")
    selector = monitors["rel-mailpipe-operator"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    ports = {p["name"] for p in operator_container(docs)["ports"]}
    assert "metrics" in ports
    assert not [
        d for d in render(api_versions=(SERVICE_MONITOR_API,)) if d["kind"] == "ServiceMonitor"
    ]


def test_several_replicas_require_peering() -> None:
    out = helm("template", "rel", str(CHART), "--set", "operator.replicas=2")
    assert out.returncode != 0
    assert "peering" in out.stderr, out.stderr


def test_peering_ships_its_object_rbac_and_flag() -> None:
    docs = render("operator.replicas=2", "peering.enabled=true", "peering.name=mp")
    assert "ClusterKopfPeering/mp" in kinds(docs)
    args = operator_container(docs)["args"]
    assert "--peering=mp" in args and "--standalone" not in args
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    role = next(
        d
        for d in docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "rel-mailpipe-operator"
    )
    rule = next(r for r in role["rules"] if "kopf.dev" in r["apiGroups"])
    assert "clusterkopfpeerings" in rule["resources"] and "patch" in rule["verbs"]
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds
    # namespaced: one KopfPeering per watched namespace, where the Roles are
    docs = render("peering.enabled=true", "operator.watchNamespaces={mail,news}", LOGINS)
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert {d["metadata"]["namespace"] for d in peerings} == {"mail", "news"}


def test_one_replica_runs_standalone() -> None:
    docs = render()
    assert "--standalone" in operator_container(docs)["args"]
    assert not [d for d in docs if d["kind"] in ("KopfPeering", "ClusterKopfPeering")]


def test_the_charts_image_pull_secrets_and_kafka_reach_the_relays() -> None:
    """The operator gets them as env; a pool that leaves them unset gets them in its
    relay Deployment (`build_children`)."""
    from mailpipe.operator.defaults import PoolDefaults
    from mailpipe.operator.models import SendingPoolSpec
    from mailpipe.operator.pool import PoolRef, build_children

    docs = render(
        "image.repository=registry.example.com/mailpipe",
        "image.tag=1.2.3",
        "imagePullSecrets[0].name=regcred",
        "kafka.bootstrapServers=kafka.kafka.svc:9092",
    )
    env = {e["name"]: e["value"] for e in operator_container(docs)["env"] if "value" in e}
    defaults = PoolDefaults.from_env(env)
    pool = yaml.safe_load((ROOT / "examples" / "warmup-pool.yaml").read_text())
    spec = SendingPoolSpec.model_validate(pool["spec"], context=defaults.context())
    assert spec.kafka.bootstrap_servers == "kafka.kafka.svc:9092"
    _, children = build_children(PoolRef("marketing", "mail", "u"), spec)
    pod = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/mailpipe:1.2.3"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def notes(*sets: str) -> str:
    args = ["install", "rel", str(CHART), "-n", "mailpipe-system", "--dry-run=client"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout[out.stdout.index("NOTES:") :]


def test_notes_suggest_examples_that_work_together() -> None:
    """NOTES.txt used to suggest the transactional pool with a campaign whose poolRef is
    `marketing` (PoolNotFound). Every Campaign it applies must name a pool it applies,
    in a namespace it creates."""
    text = notes()
    applied = [ROOT / p for p in re.findall(r"kubectl apply -f (\S+)", text)]
    created = set(re.findall(r"kubectl create namespace (\S+)", text))
    assert applied
    objects = [d for p in applied for d in yaml.safe_load_all(p.read_text()) if d]
    pools = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in objects
        if d["kind"] == "SendingPool"
    }
    campaigns = [d for d in objects if d["kind"] == "Campaign"]
    assert campaigns
    for c in campaigns:
        assert (c["metadata"]["namespace"], c["spec"]["poolRef"]) in pools, c["metadata"]
    assert {d["metadata"]["namespace"] for d in objects} <= created
    assert "kafka.bootstrapServers" in text  # no default Kafka: it says how to set one
    onboard = "--set 'rbac.tenantNamespaces={mail}'"
    assert onboard in text  # relays may run only in onboarded namespaces
    assert onboard not in notes("rbac.tenantNamespaces={mail}")
    assert "kafka.example:9092" in notes("kafka.bootstrapServers=kafka.example:9092")


def test_notes_say_how_to_get_the_default_image_onto_the_nodes() -> None:
    """The default image is built from source and served by no registry: NOTES
    say so and how to load it, and say nothing of it for an image of the user's."""
    text = notes()
    assert "mailpipe.local/mailpipe:0.1.0 is built from the chart's source" in text, text
    assert "no registry serves it" in text and "kind load docker-image" in text, text
    assert "no registry serves it" not in notes("image.repository=registry.example.com/mp")


@pytest.mark.parametrize(
    ("sets", "relays_in", "create_mail", "upgrade"),
    [
        ((), "in no namespace yet", True, "--set 'rbac.tenantNamespaces={mail}'"),
        (("rbac.tenantNamespaces={mail}",), "in: mail", False, None),
        (("rbac.tenantNamespaces={team-a}",), "in: team-a", True, "{team-a,mail}"),
        (("rbac.tenantNamespaces={*}", LOGINS), "in every namespace", True, None),
        (("operator.watchNamespaces={mail}",), "namespaces it watches", False, None),
        (("operator.watchNamespaces={news}",), "namespaces it watches", True, "{news,mail}"),
    ],
    ids=[
        "none-onboarded",
        "mail-onboarded",
        "other-onboarded",
        "wildcard",
        "watch-mail",
        "watch-other",
    ],
)
def test_notes_follow_the_onboarded_namespaces(
    sets: tuple[str, ...], relays_in: str, create_mail: bool, upgrade: str | None
) -> None:
    """Issue 18: NOTES told the reader to create `mail` after an install that had
    onboarded it (the install needs it first), whatever rbac.tenantNamespaces said.
    A namespace the install needed is never to be created after it; one to onboard
    later is created before the `helm upgrade` that onboards it."""
    text = notes(*sets)
    assert relays_in in text
    lines = text.splitlines()
    creates = [i for i, line in enumerate(lines) if "kubectl create namespace mail" in line]
    assert bool(creates) == create_mail, text
    upgrades = [i for i, line in enumerate(lines) if "helm upgrade rel" in line]
    if upgrade is None:
        assert not upgrades, text
    else:
        assert upgrade in lines[upgrades[0]] and creates[0] < upgrades[0], text


def test_helm_test_runs_the_shipped_script_in_a_watched_namespace() -> None:
    docs = render("operator.watchNamespaces={news,mail}", LOGINS)
    pod = next(d for d in docs if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["args"] == [(CHART / "files" / "helm-test.py").read_text()]
    assert {"name": "MAILPIPE_TEST_NAMESPACE", "value": "news"} in container["env"]
    role = next(
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "rel-mailpipe-test"
    )
    assert role["metadata"]["namespace"] == "news"
    assert pod["spec"]["serviceAccountName"] == "rel-mailpipe-test"
