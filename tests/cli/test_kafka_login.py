"""The kubectl plugin logs in to Kafka like the operator (issue 11): flags, or
the operator's MAILPIPE_KAFKA_* variables, a password only ever from a file.

Before: the plugin had no Kafka login options; against a broker with ACLs
it could neither suppress nor read a fate."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mailpipe.cli import kubectl
from mailpipe.cli.kubectl import build_parser, kafka_login
from mailpipe.contracts.kafka_security import KafkaConnection, KafkaSecurity
from mailpipe.kafkakit import client_options

pytestmark = pytest.mark.security


def test_flags_override_the_environment_and_the_password_comes_from_its_file(
    tmp_path: Path,
) -> None:
    password = tmp_path / "pw"
    password.write_text("plugin-pw\n")
    env = {
        "MAILPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "MAILPIPE_KAFKA_SASL_MECHANISM": "PLAIN",
        "MAILPIPE_KAFKA_USERNAME": "from-env",
    }
    args = build_parser().parse_args(
        [
            "suppressions",
            "list",
            "--kafka-sasl-mechanism=SCRAM-SHA-256",
            f"--kafka-password-file={password}",
        ]
    )
    login = kafka_login(args, env)
    assert login == KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        username="from-env",
        password_file=str(password),
    )
    options = client_options(KafkaConnection(bootstrap_servers="kafka:9093", security=login))
    assert options["sasl_plain_password"] == "plugin-pw"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kafka_login(build_parser().parse_args(["suppressions", "list"]), {}) == KafkaSecurity()


def test_a_login_that_cannot_work_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    code = kubectl.main(
        ["suppressions", "list", "--kafka-security-protocol=SASL_SSL", "--kafka-username=u"], out
    )
    assert code == 2
    assert "SASL mechanism" in capsys.readouterr().err
