"""Issue 11, points 1 and 3, as pure decisions: a pool naming another tenant's
topics or using what the cluster policy does not allow is refused with the
reason; relay pods run under the restricted Pod Security profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailpipe.contracts.topics import NEVER_MAIL_TOPIC
from mailpipe.operator.cluster_policy import ClusterPolicy, PolicyError, load_policy, violations
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children, build_relay_config
from mailpipe.operator.tenancy import POLICY_VIOLATION, TOPIC_NOT_OWNED, Refusal, refusal

pytestmark = pytest.mark.security

KAFKA = "kafka.mailpipe.svc:9092"
POLICY = ClusterPolicy(
    allowed_images=["mailpipe.local/mailpipe:*"],
    allowed_bootstrap_servers=[KAFKA],
    allowed_dns_nameservers=["10.96.0.10:53"],
    allowed_smtp_ports=[25, 2525],
    allowed_routes=["smarthost.mail.svc:587"],
    host_network_namespaces=["mail-*"],
)


def spec(**extra: Any) -> SendingPoolSpec:
    base: dict[str, Any] = {
        "kafka": {"bootstrapServers": KAFKA},
        "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
    }
    base.update(extra)
    return SendingPoolSpec.model_validate(base)


def test_the_topic_hijack_is_refused_before_anything_else() -> None:
    """The finding: `kafka.topicPrefix: victim.vpool` in namespace sec."""
    hijack = spec(kafka={"bootstrapServers": KAFKA, "topicPrefix": "mailpipe.victim.vpool"})
    got = refusal("sec", "evilpool", hijack, ClusterPolicy.unrestricted())
    assert got is not None and got.reason == TOPIC_NOT_OWNED
    assert "'mailpipe.victim.vpool' is outside this namespace's topics" in got.message
    assert "mailpipe.sec." in got.message


def test_a_pool_inside_its_bounds_is_not_refused() -> None:
    ok = spec(kafka={"bootstrapServers": KAFKA, "topicPrefix": "mailpipe.mail-eu.legacy"})
    assert refusal("mail-eu", "news", ok, POLICY) is None
    assert refusal("mail-eu", "news", spec(hostNetwork=True, smtpPort=2525), POLICY) is None


@pytest.mark.parametrize(
    ("extra", "namespace", "message"),
    [
        (
            {"image": "evil/x"},
            "t",
            "image evil/x not in allowed images (mailpipe.local/mailpipe:*)",
        ),
        ({"smtpPort": 6443}, "t", "smtpPort 6443 not in allowed SMTP ports (25, 2525)"),
        ({"hostNetwork": True}, "tenant", "hostNetwork not allowed in namespace tenant"),
        (
            {"kafka": {"bootstrapServers": f"{KAFKA},evil.example:9092"}},
            "t",
            f"kafka.bootstrapServers evil.example:9092 not in allowed bootstrap servers ({KAFKA})",
        ),
        (
            {"dnsNameserver": "6.6.6.6:53"},
            "t",
            "dnsNameserver 6.6.6.6:53 not in allowed DNS resolvers (10.96.0.10:53)",
        ),
        (
            {"routes": {"gmail.test": [{"host": "evil.example", "port": 25}]}},
            "t",
            "route gmail.test -> evil.example:25 not in allowed routes (smarthost.mail.svc:587)",
        ),
    ],
    ids=["image", "smtp-port", "host-network", "bootstrap", "resolver", "route"],
)
def test_each_field_outside_the_policy_is_refused_with_what_is_allowed(
    extra: dict[str, Any], namespace: str, message: str
) -> None:
    assert violations(POLICY, namespace, spec(**extra)) == [message]
    assert refusal(namespace, "p", spec(**extra), POLICY) == Refusal(POLICY_VIOLATION, message)


def test_every_violation_is_named_at_once() -> None:
    bad = spec(image="evil/x", smtpPort=6443, hostNetwork=True)
    got = refusal("tenant", "p", bad, POLICY)
    assert got is not None and got.reason == POLICY_VIOLATION
    assert got.message.count("; ") == 2


def test_a_policy_file_leaves_out_keys_restrictively_and_refuses_unknown_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(f"allowedBootstrapServers: ['{KAFKA}']\n")
    policy = load_policy(str(path))
    assert violations(policy, "t", spec()) == []
    assert violations(policy, "t", spec(routes={"d.test": [{"host": "h", "port": 25}]})) == [
        "route d.test -> h:25 not in allowed routes (none)"
    ]
    assert violations(policy, "t", spec(hostNetwork=True)) == [
        "hostNetwork not allowed in namespace t"
    ]
    path.write_text("allowedImage: ['*']\n")  # a typo must not silently allow or deny
    with pytest.raises(PolicyError, match="allowedImage"):
        load_policy(str(path))
    assert load_policy(None) == ClusterPolicy.unrestricted()


def test_relay_pods_run_restricted() -> None:
    """Pod Security 'restricted': non-root, read-only root, no escalation, all
    capabilities dropped, RuntimeDefault seccomp, no API token; hostNetwork
    only when the pool asks (and the policy allowed it)."""
    _, children = build_children(PoolRef("news", "mail", "u"), spec())
    dep = next(c for c in children if c["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sc["capabilities"]  # binding egress IPs needs no capability
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["hostNetwork"] is False and pod["dnsPolicy"] == "ClusterFirst"
    _, children = build_children(PoolRef("news", "mail", "u"), spec(hostNetwork=True))
    pod = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_relays_obey_the_never_mail_list_and_their_namespaces_control() -> None:
    config = build_relay_config(PoolRef("news", "mail", "u"), spec())
    assert config.kafka.obeyed_suppressions_topics == [NEVER_MAIL_TOPIC]
    assert config.kafka.suppressions_topic == "mailpipe.mail.suppressions"
    assert config.kafka.control_topic == "mailpipe.mail.campaigns"
    routed = build_relay_config(
        PoolRef("mine", "mail", "u"), spec(routes={"gmail.test": [{"host": "h", "port": 25}]})
    )
    assert routed.kafka.suppressions_topic == "mailpipe.mail.mine.suppressions"
    assert routed.kafka.obeyed_suppressions_topics == [
        "mailpipe.mail.suppressions",
        NEVER_MAIL_TOPIC,
    ]


def test_delivering_inward_is_a_platform_decision() -> None:
    """A tenant field that lets relays connect to private addresses (the
    destination policy's opt-in) is refused unless the platform allows it."""
    for delivery in ({"allowPrivateDestinations": True}, {"allowedNetworks": ["10.0.0.0/8"]}):
        got = refusal("team-a", "news", spec(delivery=delivery), POLICY)
        assert got is not None and got.reason == POLICY_VIOLATION
        assert "delivery to private addresses" in got.message
    allowed = POLICY.model_copy(update={"private_destination_namespaces": ["team-*"]})
    assert (
        refusal("team-a", "news", spec(delivery={"allowPrivateDestinations": True}), allowed)
        is None
    )
