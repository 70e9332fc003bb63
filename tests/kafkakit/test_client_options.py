"""Every Kafka client of mailpipe logs in as configured (issue 11).

Before: every KafkaConsumer, KafkaProducer and KafkaAdminClient was built from
a bootstrap string only, so a broker with ACLs could not tell one tenant's
relays from another's. Now the one typed model (`KafkaSecurity`) says how a
client logs in, `kafkakit.client_options` turns it into client arguments, and
this file fails if a production client is constructed any other way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from mailpipe.contracts.config import KafkaSettings, RelayConfig, dump_config, parse_config
from mailpipe.contracts.kafka_security import KafkaConnection, KafkaSecurity, security_from_env
from mailpipe.contracts.topics import Topics
from mailpipe.kafkakit import KafkaCredentialsError, client_options

pytestmark = pytest.mark.security

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = [
    ROOT / "common" / "mailpipe",
    ROOT / "operator" / "mailpipe",
    ROOT / "relay" / "mailpipe",
]
CLIENTS = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient"}


def _constructions() -> list[tuple[str, ast.Call]]:
    out = []
    for root in PRODUCTION:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                    if name in CLIENTS:
                        out.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return out


def test_every_production_client_is_made_with_client_options() -> None:
    sites = _constructions()
    # the brief's count (13), less the two kafkakit/_read.py readers that now share one
    # construction with the third (`_read._consumer`): none was missed
    assert len(sites) >= 12, [s for s, _ in sites]
    wrong = []
    for where, call in sites:
        spread = [
            k.value
            for k in call.keywords
            if k.arg is None
            and isinstance(k.value, ast.Call)
            and getattr(k.value.func, "id", None) == "client_options"
        ]
        if not spread or any(k.arg == "bootstrap_servers" for k in call.keywords):
            wrong.append(where)
    assert not wrong, f"Kafka clients made without **client_options(...): {wrong}"


def _sasl(tmp_path: Path, **extra: str) -> KafkaSecurity:
    password = tmp_path / "password"
    password.write_text("s3cret-pw\n")
    fields = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username": "mailpipe-a",
        "password_file": str(password),
        **extra,
    }
    return KafkaSecurity.model_validate(fields)


def test_client_options_reads_the_password_file_and_passes_the_login(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    security = _sasl(tmp_path, ca_file=str(ca))
    options = client_options(KafkaConnection(bootstrap_servers="k:9093", security=security))
    assert options == {
        "bootstrap_servers": "k:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "mailpipe-a",
        "sasl_plain_password": "s3cret-pw",  # stripped of the file's newline
        "ssl_cafile": str(ca),
    }
    assert client_options("k:9092") == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert "s3cret" not in str(security) and "s3cret" not in repr(security)


def test_a_missing_or_empty_credential_file_is_named(tmp_path: Path) -> None:
    security = _sasl(tmp_path, password_file=str(tmp_path / "nope"))
    with pytest.raises(KafkaCredentialsError, match=r"password file.*/nope cannot be read"):
        client_options(KafkaConnection(bootstrap_servers="k:1", security=security))
    (tmp_path / "empty").write_text("\n")
    security = _sasl(tmp_path, password_file=str(tmp_path / "empty"))
    with pytest.raises(KafkaCredentialsError, match=r"/empty is empty"):
        client_options(KafkaConnection(bootstrap_servers="k:1", security=security))
    security = _sasl(tmp_path, ca_file=str(tmp_path / "ca.crt"))
    with pytest.raises(KafkaCredentialsError, match=r"CA file.*ca.crt does not exist"):
        client_options(KafkaConnection(bootstrap_servers="k:1", security=security))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "SCRAM-SHA-512"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "password_file": "/p"}, "user name"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "username": "u"}, "password file"),
        ({"protocol": "SASL_SSL", "username": "u", "password_file": "/p"}, "SASL mechanism"),
        ({"protocol": "PLAINTEXT", "username": "u"}, "use SASL_PLAINTEXT or SASL_SSL"),
        ({"protocol": "SASL_PLAINTEXT", "ca_file": "/ca"}, "SASL mechanism"),
        ({"protocol": "PLAINTEXT", "ca_file": "/ca"}, "use SSL or SASL_SSL"),
        ({"protocol": "SSL", "cert_file": "/c"}, "needs its key"),
        ({"protocol": "TLS"}, "SASL_SSL"),
        ({"password": "inline"}, "Extra inputs are not permitted"),  # never a secret inline
    ],
)
def test_an_unusable_login_is_refused_with_the_reason(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSecurity.model_validate(fields)


def test_the_environment_gives_the_operators_and_the_plugins_login() -> None:
    env = {
        "MAILPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "MAILPIPE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "MAILPIPE_KAFKA_USERNAME_FILE": "/etc/mailpipe/kafka/username",
        "MAILPIPE_KAFKA_PASSWORD_FILE": "/etc/mailpipe/kafka/password",
        "MAILPIPE_KAFKA_CA_FILE": "",  # unset in the chart: the default
    }
    security = security_from_env(env)
    assert security.protocol == "SASL_PLAINTEXT" and security.username_file is not None
    assert security_from_env({}) == KafkaSecurity()


def test_the_relay_config_carries_paths_and_stays_the_same_without_a_login() -> None:
    topics = Topics.for_pool("a", "news", ["1m"])
    plain = KafkaSettings.for_topics(topics, bootstrap_servers="k:9092", group_id="g")
    config = RelayConfig(
        pool="a/news", kafka=plain, egress=[{"address": "127.0.0.1", "helo": "mx.test"}]
    )
    assert "security" not in dump_config(config)  # unchanged text and hash for existing pools
    secured = plain.model_copy(
        update={
            "security": KafkaSecurity(
                protocol="SASL_PLAINTEXT",
                sasl_mechanism="SCRAM-SHA-512",
                username_file="/etc/mailpipe/kafka/username",
                password_file="/etc/mailpipe/kafka/password",
            )
        }
    )
    text = dump_config(config.model_copy(update={"kafka": secured}))
    assert "password_file: /etc/mailpipe/kafka/password" in text
    assert parse_config(text).kafka.security == secured.security
