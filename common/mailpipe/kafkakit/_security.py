"""Client options: the one place a Kafka client gets its bootstrap servers and its login.

Every KafkaConsumer, KafkaProducer and KafkaAdminClient of mailpipe is built
with `**client_options(cluster)` (tests/kafkakit/test_client_options.py fails
on any production construction that passes `bootstrap_servers=` itself), so
no client can forget the credentials its process was given.

The files a `KafkaSecurity` names (password, user name, CA, client
certificate) are read or checked here, when a client is made, so a rotated
Secret is picked up by the next client; a missing or empty file is a
`KafkaCredentialsError` naming the file and the field, never a Kafka timeout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mailpipe.contracts.config import KafkaSettings
from mailpipe.contracts.errors import PermanentError
from mailpipe.contracts.kafka_security import KafkaConnection, KafkaSecurity

# A bare string is a PLAINTEXT cluster (dev, tests, an unsecured broker).
Cluster = str | KafkaConnection | KafkaSettings


class KafkaAccessError(PermanentError):
    """This identity cannot use Kafka as configured: credentials, login or ACLs."""


class KafkaCredentialsError(KafkaAccessError, ValueError):
    """A credential file that cannot be used: which one, and why."""


def connection_of(cluster: Cluster) -> KafkaConnection:
    """`cluster` as a `KafkaConnection` (a string: PLAINTEXT)."""
    if isinstance(cluster, KafkaConnection):
        return cluster
    if isinstance(cluster, KafkaSettings):
        return cluster.connection
    return KafkaConnection(bootstrap_servers=cluster)


def _read(path: str, field: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise KafkaCredentialsError(
            f"Kafka {field} {path} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None  # the OSError says nothing more, and a traceback is noise
    if not text:
        raise KafkaCredentialsError(f"Kafka {field} {path} is empty")
    return text


def _readable(path: str, field: str) -> str:
    if not os.access(path, os.R_OK):
        why = "does not exist" if not os.path.exists(path) else "is not readable"
        raise KafkaCredentialsError(f"Kafka {field} {path} {why}")
    return path


def security_options(security: KafkaSecurity) -> dict[str, Any]:
    """kafka-python arguments for `security`; reads the password and user name files."""
    out: dict[str, Any] = {"security_protocol": str(security.protocol)}
    if security.protocol.sasl:
        assert security.sasl_mechanism is not None  # the model's own check
        username = security.username
        if username is None:
            assert security.username_file is not None
            username = _read(security.username_file, "user name file (username_file)")
        out["sasl_mechanism"] = str(security.sasl_mechanism)
        out["sasl_plain_username"] = username
        out["sasl_plain_password"] = _read(
            security.password_file or "", "password file (password_file)"
        )
    if security.protocol.tls:
        if security.ca_file is not None:
            out["ssl_cafile"] = _readable(security.ca_file, "CA file (ca_file)")
        if security.cert_file is not None and security.key_file is not None:
            out["ssl_certfile"] = _readable(security.cert_file, "client certificate (cert_file)")
            out["ssl_keyfile"] = _readable(security.key_file, "client key (key_file)")
    return out


def client_options(cluster: Cluster) -> dict[str, Any]:
    """`bootstrap_servers` and the security arguments for a kafka-python client
    of `cluster`: spread into every KafkaConsumer, KafkaProducer and
    KafkaAdminClient (`KafkaConsumer(**client_options(c), group_id=...)`)."""
    conn = connection_of(cluster)
    return {"bootstrap_servers": conn.bootstrap_servers, **security_options(conn.security)}
