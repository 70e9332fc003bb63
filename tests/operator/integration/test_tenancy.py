"""Issue 11 against the real apiserver and Kafka: a hostile tenant's pools.

Topic hijack: a pool in one namespace naming another's topics was Ready and
its Campaigns' records went to the victim's outbound topic. Now admission
refuses a prefix outside `mailpipe.` (what a CRD rule can see), the operator
refuses one outside the pool's namespace (Ready=False TopicNotOwned, a
Warning, no relay Deployment, no topic created). Anything goes in a pool:
with the platform's cluster policy, an SMTP port, an image or hostNetwork the
policy does not allow is Ready=False `PolicyViolation` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka.admin import KafkaAdminClient

from mailpipe.devstack import harness
from mailpipe.operator import kafka_io

from .conftest import OperatorProcess, get, kubectl, pool_manifest, wait_for, wait_pool_ready

pytestmark = [pytest.mark.operator, pytest.mark.security]

REFUSAL_SECONDS = 60  # the first reconcile, on a loaded machine
CHART = Path(__file__).resolve().parents[3] / "helm" / "mailpipe"
ADMISSION_TEMPLATE = "templates/admission-policy.yaml"


def _ready(env: dict[str, str], name: str, namespace: str) -> dict[str, Any]:
    obj = get(env, "sp", name, namespace) or {}
    conditions = obj.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _wait_refused(
    env: dict[str, str], name: str, namespace: str, reason: str, op: OperatorProcess
) -> dict[str, Any]:
    wait_for(
        lambda: _ready(env, name, namespace).get("status") == "False",
        REFUSAL_SECONDS,
        f"pool {name} Ready=False",
        op,
    )
    ready = _ready(env, name, namespace)
    assert ready["reason"] == reason, ready
    return ready


def _topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def test_admission_refuses_a_prefix_outside_mailpipe_topics(
    crds: None, cli_env: dict[str, str], namespace: str, kafka_bootstrap: str
) -> None:
    """The finding's `topicPrefix: victim.vpool`; CEL cannot see the namespace,
    so this is all a CRD rule can say."""
    for prefix in ("victim.vpool", "mailpipe._cluster.never-mail"):
        manifest = pool_manifest("evilpool", namespace, kafka_bootstrap, prefix)
        refused = kubectl(cli_env, "apply", "-f", "-", stdin=manifest)
        assert refused.returncode != 0, f"{prefix} was accepted"
        assert "kafka.topicPrefix must start with mailpipe.<namespace>." in refused.stderr


def test_a_pool_naming_another_namespaces_topics_is_refused(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    unique: str,
    kafka_bootstrap: str,
) -> None:
    op = operator_factory()
    victim = f"mailpipe.victim-{unique}.vpool"
    victims_outbound = f"{victim}.outbound"
    admins = kafka_io.Admins()
    try:  # the victim's pool
        admins.ensure_topics(kafka_bootstrap, [victims_outbound], 1, 1)
    finally:  # its socket must not outlive the test
        admins.close()
    manifest = pool_manifest("evilpool", namespace, kafka_bootstrap, victim)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    ready = _wait_refused(cli_env, "evilpool", namespace, "TopicNotOwned", op)
    assert f"'{victim}' is outside this namespace's topics" in ready["message"]
    assert f"mailpipe.{namespace}." in ready["message"]
    described = kubectl(cli_env, "describe", "sp", "evilpool", "-n", namespace).stdout
    assert "Warning" in described and "TopicNotOwned" in described
    # nothing made on the pool's word: no relays, no topic in the victim's space
    assert get(cli_env, "deployment", "mailpipe-relay-evilpool", namespace) is None
    assert {t for t in _topics(kafka_bootstrap) if t.startswith(victim)} == {victims_outbound}
    # and deleting the hostile pool deletes nothing of the victim's
    out = kubectl(cli_env, "delete", "sp", "evilpool", "-n", namespace, "--timeout=60s")
    assert out.returncode == 0, out.stderr + op.log_tail()
    assert victims_outbound in _topics(kafka_bootstrap)


def _policy(tmp_path: Path, bootstrap: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "allowedImages": ["mailpipe.local/mailpipe:*"],
                "allowedBootstrapServers": [bootstrap],
                "allowedSmtpPorts": [25],
                "hostNetworkNamespaces": ["platform-*"],
            }
        )
    )
    return path


REFUSED = {
    "port": ({"smtpPort": 6443}, "smtpPort 6443 not in allowed SMTP ports (25)"),
    "image": ({"image": "evil/x"}, "image evil/x not in allowed images"),
    "hostnet": ({"hostNetwork": True}, "hostNetwork not allowed in namespace "),
    "route": (
        {"routes": {"gmail.test": [{"host": "relay.evil.example", "port": 25}]}},
        "route gmail.test -> relay.evil.example:25 not in allowed routes (none)",
    ),
}


def test_the_cluster_policy_refuses_what_it_does_not_allow(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    op = operator_factory(MAILPIPE_POLICY=str(_policy(tmp_path, kafka_bootstrap)))
    for name, (spec, _) in REFUSED.items():
        prefix = f"mailpipe.{namespace}.{name}"
        manifest = pool_manifest(name, namespace, kafka_bootstrap, prefix, **spec)
        assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    good = pool_manifest("good", namespace, kafka_bootstrap, f"mailpipe.{namespace}.good")
    assert kubectl(cli_env, "apply", "-f", "-", stdin=good).returncode == 0

    for name, (_, message) in REFUSED.items():
        ready = _wait_refused(cli_env, name, namespace, "PolicyViolation", op)
        assert message in ready["message"], ready
        assert get(cli_env, "deployment", f"mailpipe-relay-{name}", namespace) is None
    # the policy refuses what it must, not everything
    wait_pool_ready(cli_env, namespace, op, "good")  # plays the kubelet for its relays


ADMISSION_ACTIVE_SECONDS = 30  # the apiserver compiles and starts a new policy within seconds


def test_the_charts_admission_policy_refuses_another_namespaces_prefix(
    crds: None, cli_env: dict[str, str], namespace: str, unique: str, kafka_bootstrap: str
) -> None:
    """What the CRD rule cannot say (the namespace), the chart's
    ValidatingAdmissionPolicy says at kubectl apply. Bound here to the test's
    namespace only, so other tests' pools never meet it."""
    rendered = harness.helm_ok(
        None, "template", f"t{unique}", str(CHART), "--show-only", ADMISSION_TEMPLATE
    )
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    manifest = yaml.safe_dump_all(docs)
    harness.kubectl_ok(cli_env, "apply", "-f", "-", stdin=manifest)
    try:
        hijack = pool_manifest(
            "evilpool", namespace, kafka_bootstrap, f"mailpipe.victim-{unique}.vpool"
        )

        def refused() -> bool:
            out = kubectl(cli_env, "apply", "--dry-run=server", "-f", "-", stdin=hijack)
            return out.returncode != 0 and "names topics outside this namespace" in out.stderr

        wait_for(refused, ADMISSION_ACTIVE_SECONDS, "the admission policy to refuse the hijack")
        own = pool_manifest("news", namespace, kafka_bootstrap, f"mailpipe.{namespace}.news")
        accepted = kubectl(cli_env, "apply", "--dry-run=server", "-f", "-", stdin=own)
        assert accepted.returncode == 0, accepted.stderr
    finally:
        kubectl(cli_env, "delete", "-f", "-", stdin=manifest)
