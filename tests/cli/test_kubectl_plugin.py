"""The pure parts of `kubectl mailpipe`: suppressions, fates, arguments, tables, and
the one-line errors when there is no cluster to talk to."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mailpipe.cli import kubectl
from mailpipe.cli.kubectl import build_parser
from mailpipe.cli.kubectl.records import (
    UNDECODABLE,
    UsageError,
    campaign_key,
    checked_address,
    fates,
    live_suppressions,
    matching,
    suppression_record,
    table,
    tombstones,
)
from mailpipe.cli.kubectl.targets import (
    NamespaceState,
    OperatorKafka,
    chart_kafka,
    choose_pool,
    first_problem,
    operator_kafka,
    topics_kept_step,
    unpause_refusal,
)
from mailpipe.contracts.wire import (
    Disposition,
    Event,
    Suppression,
    SuppressionReason,
    decode_suppression,
    encode,
)
from mailpipe.devstack.procs import free_port
from mailpipe.operator.handlers.warmup import split_unpause
from mailpipe.operator.models import SendingPoolSpec

T0 = 1_790_000_000.0


def _suppression(address: str, reason: SuppressionReason = SuppressionReason.HARD_BOUNCE) -> bytes:
    return encode(Suppression(address=address, reason=reason, time=T0, source="mail/news"))


def test_a_suppression_is_keyed_as_the_relays_key_it() -> None:
    key, value = suppression_record("Bob@Example.COM", SuppressionReason.MANUAL, "asked", T0)
    assert key == b"bob@example.com"
    assert value is not None
    s = decode_suppression(value)
    assert (s.address, s.reason, s.detail, s.source) == (
        "bob@example.com",
        SuppressionReason.MANUAL,
        "asked",
        "kubectl-mailpipe",
    )


@pytest.mark.parametrize("bad", ["no-at-sign", "a@b\r\nBcc: x@y", "a b@c", "<a@b>", "@b", "a@"])
def test_only_plain_mailboxes_are_accepted(bad: str) -> None:
    with pytest.raises(UsageError, match="not a plain mailbox"):
        checked_address(bad)


def test_live_suppressions_apply_tombstones_and_keep_undecodable_keys() -> None:
    live = live_suppressions(
        [
            (b"a@x.test", _suppression("a@x.test")),
            (b"b@x.test", _suppression("b@x.test")),
            (b"a@x.test", None),  # lifted
            (b"c@x.test", b"{not json"),  # the relay still suppresses this key
            (None, _suppression("nokey@x.test")),  # no key: not a suppression of anyone
        ]
    )
    assert sorted(live) == ["b@x.test", "c@x.test"]
    assert live["c@x.test"].reason == UNDECODABLE
    assert live["b@x.test"].reason == "hard_bounce"


def test_lifting_tombstones_every_live_key_of_the_address() -> None:
    """A suppression keyed by its mixed-case spelling is not lifted by a
    tombstone on the lower-cased key (the hand-made way): it would come back at
    the next relay start. The plugin tombstones every key naming the mailbox."""
    records = [
        (b"Bob@X.test", _suppression("Bob@X.test")),  # another producer's spelling
        (b"bob@x.test", _suppression("bob@x.test", SuppressionReason.COMPLAINT)),
        (b"carol@x.test", _suppression("carol@x.test")),
    ]
    hand_made = live_suppressions([*records, (b"bob@x.test", None)])
    assert matching("bob@x.test", hand_made), "the hand-made tombstone leaves one behind"

    live = live_suppressions(records)
    lifted = tombstones("BOB@x.test", live)
    assert lifted == [(b"Bob@X.test", None), (b"bob@x.test", None)]
    after = live_suppressions([*records, *lifted])
    assert matching("bob@x.test", after) == []
    assert [e.key for e in after.values()] == ["carol@x.test"]
    assert tombstones("nobody@x.test", live) == []


def _event(
    disposition: Disposition,
    t: float,
    *,
    recipient: str = "a@x.test",
    campaign: str | None = "mail/spring",
    attempt: int = 0,
    code: int | None = None,
    reply: str | None = None,
) -> Event:
    return Event(
        message_id=f"m-{recipient}",
        campaign=campaign,
        recipient=recipient,
        domain="x.test",
        disposition=disposition,
        time=t,
        attempt=attempt,
        smtp_code=code,
        reply=reply,
    )


def test_a_fate_is_each_attempt_in_order_and_the_last_word() -> None:
    events = [
        _event(Disposition.DELIVERED, T0 + 60, attempt=1, code=250, reply="2.0.0 Ok: queued"),
        _event(Disposition.DEFERRED, T0, code=451, reply="4.7.1 try later"),
        _event(Disposition.DELIVERED, T0, recipient="b@x.test", code=250),  # someone else
        _event(Disposition.BOUNCED, T0 + 5, campaign="mail/autumn", code=550, reply="no user"),
    ]
    found = fates(events, "A@X.test")
    assert [f.campaign for f in found] == ["mail/spring", "mail/autumn"]
    spring, autumn = found
    assert [a.disposition for a in spring.attempts] == [Disposition.DEFERRED, Disposition.DELIVERED]
    assert spring.final and autumn.final
    assert spring.summary() == (
        "delivered at 2026-09-21T14:14:20Z after 2 attempt(s): 250 2.0.0 Ok: queued"
    )
    assert autumn.summary().endswith("550 no user")
    only = fates(events, "a@x.test", campaign="mail/autumn")
    assert [f.campaign for f in only] == ["mail/autumn"]


def test_a_deferral_is_not_a_fate_yet() -> None:
    [f] = fates([_event(Disposition.DEFERRED, T0, code=421, reply="busy")], "a@x.test")
    assert not f.final
    assert f.summary().startswith("deferred, will be retried at")


def test_campaign_keys_are_namespaced_names() -> None:
    assert campaign_key("mail", "spring") == "mail/spring"
    assert campaign_key("mail", "other/spring") == "other/spring"


def test_common_options_are_taken_before_and_after_the_subcommand() -> None:
    """kubectl passes a plugin its arguments as typed: `-n` may come first or last."""
    parser = build_parser()
    before = parser.parse_args(["-n", "mail", "--pool", "news", "suppress", "a@x.test"])
    after = parser.parse_args(["suppress", "a@x.test", "-n", "mail", "--pool", "news"])
    for args in (before, after):
        assert (args.namespace, args.pool, args.addresses) == ("mail", "news", ["a@x.test"])
    listed = parser.parse_args(["suppressions", "list", "-o", "json", "--reason", "manual"])
    assert (listed.output, listed.reason) == ("json", "manual")
    with pytest.raises(SystemExit):
        parser.parse_args(["suppress", "a@x.test", "--reason", "because"])


def test_tables_align_like_kubectl() -> None:
    assert table(["A", "LONGER"], [["xxxx", "y"], ["z", ""]]).splitlines() == [
        "A      LONGER",
        "xxxx   y",
        "z",
    ]


# -- what a command acts on (targets): the one-line refusals of issue 18 -------------


@pytest.mark.parametrize(
    ("wanted", "found", "ns", "expected"),
    [
        ("news", ["news", "other"], NamespaceState.EXISTS, "news"),
        (None, ["news"], NamespaceState.EXISTS, "news"),
        (
            None,
            ["a", "b"],
            NamespaceState.EXISTS,
            "has 2 SendingPools (a, b): name one with --pool",
        ),
        (None, [], NamespaceState.EXISTS, "namespace mail has no SendingPool: name the pool's"),
        (None, [], NamespaceState.MISSING, "namespace mail does not exist: name yours with -n"),
        (None, [], NamespaceState.UNKNOWN, "no SendingPool in namespace mail (or no such"),
        (
            "x",
            ["a"],
            NamespaceState.EXISTS,
            'sendingpool "x" not found in namespace mail (it has a)',
        ),
        ("x", [], NamespaceState.MISSING, "namespace mail does not exist"),
    ],
    ids=["named", "only-one", "several", "none", "no-namespace", "unreadable", "unknown", "gone"],
)
def test_the_pool_a_command_means_or_why_not(
    wanted: str | None, found: list[str], ns: NamespaceState, expected: str
) -> None:
    if expected in found:
        assert choose_pool("mail", wanted, found, ns) == expected
        return
    with pytest.raises(UsageError) as err:
        choose_pool("mail", wanted, found, ns)
    assert expected in str(err.value) and "\n" not in str(err.value)


def _operator(namespace: str, kafka: str | None, *args: str) -> dict[str, object]:
    env = [{"name": "MAILPIPE_RELAY_IMAGE", "value": "img"}]
    if kafka is not None:
        env.append({"name": "MAILPIPE_KAFKA_BOOTSTRAP_SERVERS", "value": kafka})
    container = {"name": "operator", "args": ["operator", *args], "env": env}
    return {
        "metadata": {"name": "mailpipe-operator", "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }


def test_the_chart_kafka_is_read_from_the_operator_deployment_that_watches_the_pool() -> None:
    everywhere = operator_kafka(_operator("mailpipe-system", "kafka:9092", "--standalone"))
    assert everywhere == OperatorKafka("mailpipe-system/mailpipe-operator", (), "kafka:9092")
    only_b = operator_kafka(_operator("ops", "other:9092", "--namespace=b", "--namespace", "c"))
    assert only_b.watches == ("b", "c")
    assert chart_kafka("news", "mail", [everywhere, only_b]) == "kafka:9092"
    with pytest.raises(UsageError, match="disagree on Kafka"):
        chart_kafka("news", "b", [everywhere, only_b])
    with pytest.raises(UsageError, match="no mailpipe operator Deployment watches"):
        chart_kafka("news", "mail", [only_b])
    empty = operator_kafka(_operator("mailpipe-system", ""))
    with pytest.raises(UsageError, match=r"kafka\.bootstrapServers is empty"):
        chart_kafka("news", "mail", [empty])


def test_a_validation_failure_is_one_line() -> None:
    with pytest.raises(ValidationError) as err:
        SendingPoolSpec.model_validate(
            {
                "egressIPs": [{"address": "127.0.0.2", "helo": "h.test"}],
                "warmup": {"timeZone": "X/Y"},
            }
        )
    line = first_problem(err.value)
    assert "\n" not in line and "pydantic" not in line
    assert line.startswith("warmup.timeZone") or "X/Y" in line, line


def test_only_a_paused_ip_is_unpaused() -> None:
    status = [{"address": "10.0.0.1"}, {"address": "10.0.0.2", "pausedReason": "bounce rate 9%"}]
    egress = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert unpause_refusal("10.0.0.2", "news", egress, status) is None
    assert "10.0.0.1 is not paused" in (unpause_refusal("10.0.0.1", "news", egress, status) or "")
    assert "no warm-up state" in (unpause_refusal("10.0.0.3", "news", egress, status) or "")
    with pytest.raises(UsageError, match="not an egress IP"):
        unpause_refusal("10.0.0.9", "news", egress, status)
    # The operator: paused by its ledger or by the status it last wrote.
    assert split_unpause(
        ["a", "b", "c"], {"a": "bounce"}, [{"address": "b", "pausedReason": "x"}]
    ) == (
        ["a", "b"],
        ["c"],
    )


def test_kept_topics_are_named_with_the_command_that_deletes_them() -> None:
    step = topics_kept_step("mail", "news", {"kafka": {"bootstrapServers": "k:9092"}})
    assert step.endswith(
        "kafka-topics.sh --bootstrap-server k:9092 --delete --topic 'mailpipe\\.mail\\.news\\..*'"
    )
    # A prefix in another namespace's space: none of those topics are the pool's.
    assert topics_kept_step("mail", "news", {"kafka": {"topicPrefix": "mailpipe.other.x"}}) is None


KUBECONFIG_TO = """
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: c, context: {{cluster: c, user: u, namespace: mail}}}}]
current-context: c
"""


def test_no_kubeconfig_and_no_api_server_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code = kubectl.main(["suppressions", "list", "--kubeconfig", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--kubeconfig" in err, err
    config = tmp_path / "kubeconfig"
    port = free_port()  # nothing listens there
    config.write_text(KUBECONFIG_TO.format(port=port))
    code = kubectl.main(["fate", "a@x.test", "--kubeconfig", str(config)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert f"cannot reach the Kubernetes API at 127.0.0.1:{port}" in err
