"""The submission endpoint runs on what the operator renders for `spec.submission`.

The dev stack has no kubelet for these tests, so the test plays it: the
rendered ConfigMap's settings with the mounted files (certificate, users) at
their places in a temporary directory and the listeners on free loopback
ports, and the container's own arguments with `$(POD_NAME)` expanded, as the
kubelet expands them. The endpoint must start on the real broker with the
topics the operator creates, answer /readyz, and accept a message from a
logged-in user into the pool's outbound topic."""

from __future__ import annotations

import smtplib
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.contracts.wire import decode_record
from mailpipe.devstack.harness import Children
from mailpipe.devstack.procs import free_port, listening
from mailpipe.inbound.submission_policy import hash_password
from mailpipe.kafkakit import ensure_topics, read_topic
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children, topics
from tests.conftest import wait_for
from tests.relay.mx_certs import make_certs

pytestmark = pytest.mark.feedback

# The client's name for the endpoint, and its certificate's: the listeners are on
# 127.0.0.1 (the spec's hostname is only the greeting's, a dotted name).
HOST = "localhost"
LISTEN = "127.0.0.1"
START_SECONDS = 120  # Kafka transactions initialised and the lists read, on a loaded machine
CLIENT_TIMEOUT_SECONDS = 60
PASSWORD = "rendered-Submission-pw-3f9a"


def _rendered(ref: PoolRef, spec: SendingPoolSpec) -> tuple[dict[str, Any], list[str]]:
    """The endpoint's settings and its container's args, as the operator renders them."""
    _, children = build_children(ref, spec)
    name = ref.submission_name
    [cm] = [c for c in children if c["kind"] == "ConfigMap" and c["metadata"]["name"] == name]
    [dep] = [c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == name]
    [container] = dep["spec"]["template"]["spec"]["containers"]
    return yaml.safe_load(cm["data"]["submission.yaml"]), list(container["args"])


def test_the_endpoint_runs_on_what_the_operator_renders(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    namespace = f"test-{unique}"
    ref = PoolRef("news", namespace, "uid-1")
    spec = SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": kafka_bootstrap, "partitions": 1},
            "egressIPs": [{"address": "127.0.0.2", "helo": "egress.sender.test"}],
            "submission": {
                "hostname": "submit.sender.test",
                "tlsSecret": "tls",
                "usersSecret": "users",
            },
        }
    )
    settings, args = _rendered(ref, spec)
    t = topics(ref, spec)
    # what the operator's reconcile creates for a pool with the endpoint
    ensure_topics(kafka_bootstrap, t.all(), 1, 1, [*t.compacted(), t.submitted])

    # the kubelet's part: the Secrets mounted where the settings say, ports free
    certs = make_certs(tmp_path, HOST, ca_name="rendered-test-ca")
    mounts = {
        settings["tls_cert_file"]: certs.chain.read_bytes(),
        settings["tls_key_file"]: certs.key.read_bytes(),
        settings["users_file"]: yaml.safe_dump(
            {"app": {"password_hash": hash_password(PASSWORD), "sender_domains": ["shop.test"]}}
        ).encode(),
    }
    for path, data in mounts.items():
        local = tmp_path / "mounts" / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        settings[next(k for k, v in settings.items() if v == path)] = str(local)
    ports = {"starttls": free_port(LISTEN), "implicit_tls": free_port(LISTEN)}
    for listener, port in ports.items():
        assert settings[listener] is not None, listener
        settings[listener] = {"address": LISTEN, "port": port}
    settings["metrics_address"], settings["metrics_port"] = LISTEN, free_port(LISTEN)
    config = tmp_path / "submission.yaml"
    config.write_text(yaml.safe_dump(settings))
    config_arg = args.index("--config") + 1
    args[config_arg] = str(config)
    args = [a.replace("$(POD_NAME)", f"mailpipe-submission-news-{unique}") for a in args]

    with Children(tmp_path) as children:
        child = children.mailpipe("submission", args)
        wait_for(
            lambda: all(listening(LISTEN, p) for p in ports.values()),
            START_SECONDS,
            "the rendered endpoint listening",
            child,
        )
        ready = f"http://{LISTEN}:{settings['metrics_port']}/readyz"
        with urllib.request.urlopen(ready, timeout=CLIENT_TIMEOUT_SECONDS) as answer:
            assert answer.status == 200
        context = ssl.create_default_context(cafile=str(certs.ca))
        with smtplib.SMTP_SSL(
            HOST, ports["implicit_tls"], context=context, timeout=CLIENT_TIMEOUT_SECONDS
        ) as client:
            client.login("app", PASSWORD)
            message = (
                "From: Shop <news@shop.test>\r\nTo: u@d.test\r\nSubject: hi\r\n"
                f"Message-ID: <{unique}@shop.test>\r\n\r\nhello\r\n"
            )
            refused = client.sendmail("news@shop.test", ["u@d.test"], message)
            assert refused == {}
        records = [decode_record(value) for _, value in read_topic(kafka_bootstrap, t.outbound)]
        assert [[r.address for r in rec.recipients] for rec in records] == [["u@d.test"]]
        ledger = read_topic(kafka_bootstrap, t.submitted)
        assert len(ledger) == 1  # the message's id, in the same transaction
