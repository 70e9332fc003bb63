"""A single-node Apache Kafka in KRaft mode, run straight from its Maven classpath.

The broker is one JVM acting as broker and controller, with a small heap
because it shares two cores and the test machine with everything else. It is
ready when a metadata request answers, which is what every client needs first.
"""

from __future__ import annotations

import base64
import gc
import socket
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import kube, paths, procs

HEAP = "-Xmx512m"  # ample for test volumes; the default (1/4 of RAM) would take 6 GiB
STORAGE_TOOL = "kafka.tools.StorageTool"
MAIN = "kafka.Kafka"
PROBE_CONNECT_SECONDS = 1.0  # loopback: a listening broker accepts at once


@dataclass(frozen=True)
class KafkaPorts:
    broker: int
    controller: int
    # The listener for the node's pods, bound on loopback like the others and
    # advertised at kube.KAFKA_SERVICE_IP; 0: none (the SASL broker).
    pods: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker}"

    @property
    def pods_bootstrap(self) -> str:
        """What a pod on the node bootstraps from (through `Node.expose_kafka`)."""
        return f"{kube.KAFKA_SERVICE_IP}:{self.pods}" if self.pods else ""


def server_properties(
    ports: KafkaPorts,
    data_dir: Path,
    partitions: int = 4,
    sasl_users: Mapping[str, str] | None = None,
) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{ports.controller}",
        "listeners": f"PLAINTEXT://127.0.0.1:{ports.broker},CONTROLLER://127.0.0.1:{ports.controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{ports.broker}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(partitions),
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",  # default 50 makes first group join slow
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",  # tests join groups constantly
        "auto.create.topics.enable": "true",
        "log.retention.hours": "24",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.cleaner.backoff.ms": "1000",  # compacted suppressions topic in tests
    }
    if ports.pods and sasl_users is None:
        props.update(pods_listener_properties(ports))
    if sasl_users is not None:
        props.update(sasl_properties(ports, sasl_users))
    return "".join(f"{k}={v}\n" for k, v in props.items())


def pods_listener_properties(ports: KafkaPorts) -> dict[str, str]:
    """A second plaintext listener, PODS, for clients in the node's pods.

    Bound on loopback (nothing listens beyond it); what it advertises is the
    Kafka Service's ClusterIP, which kube-proxy and the node's DNAT rule carry
    back to this port. Host clients keep the PLAINTEXT listener, whose metadata
    names 127.0.0.1, an address that in a pod is the pod itself."""
    return {
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{ports.broker},PODS://127.0.0.1:{ports.pods},"
            f"CONTROLLER://127.0.0.1:{ports.controller}"
        ),
        "advertised.listeners": (
            f"PLAINTEXT://127.0.0.1:{ports.broker},PODS://{ports.pods_bootstrap}"
        ),
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,PODS:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
    }


SASL_ADMIN = "admin"  # the super user of a broker with ACLs: creates topics and ACLs
# Every SASL user may also log in with SCRAM (what production brokers use:
# the password never crosses the wire); their credentials are written into the
# metadata log when the storage is formatted (`scram_arguments`).
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def scram_arguments(users: Mapping[str, str]) -> list[str]:
    """StorageTool `format` arguments that create every user's SCRAM credentials."""
    return [
        f"--add-scram={m}=[name={name},password={password}]"
        for name, password in users.items()
        for m in SCRAM_MECHANISMS
    ]


def sasl_properties(ports: KafkaPorts, users: Mapping[str, str]) -> dict[str, str]:
    """A broker whose clients log in with SASL/PLAIN or SCRAM (`users`: name -> password,
    `SASL_ADMIN` among them) and are authorized by ACLs (KRaft's
    StandardAuthorizer), nothing allowed without one. For the tests of the
    Kafka ACLs the README tells a platform team to set (issue 11). The
    controller listener stays PLAINTEXT on loopback; its principal (ANONYMOUS)
    is the broker talking to its own controller, hence a super user."""
    listener = f"SASL_PLAINTEXT://127.0.0.1:{ports.broker}"
    accounts = " ".join(f'user_{name}="{password}"' for name, password in users.items())
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{SASL_ADMIN}" password="{users[SASL_ADMIN]}" {accounts};'
    )
    return {
        "listeners": f"{listener},CONTROLLER://127.0.0.1:{ports.controller}",
        "advertised.listeners": listener,
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": ",".join(("PLAIN", *SCRAM_MECHANISMS)),
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        **{
            f"listener.name.sasl_plaintext.{m.lower()}.sasl.jaas.config": SCRAM_JAAS
            for m in SCRAM_MECHANISMS
        },
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{SASL_ADMIN};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
        "auto.create.topics.enable": "false",  # topics are the operator's to create
    }


LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=INFO
"""


def _cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes, URL-safe base64 without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def java_command(main: str, *args: str, log_dir: Path) -> list[str]:
    return [
        str(paths.java()),
        HEAP,
        "-XX:+UseG1GC",
        "-XX:TieredStopAtLevel=1",  # C1 only: faster start, plenty for test loads
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={log_dir}",
        f"-Dlog4j.configuration=file:{log_dir / 'log4j.properties'}",
        "-cp",
        paths.kafka_classpath(),
        main,
        *args,
    ]


def prepare(
    state_dir: Path, sasl_users: Mapping[str, str] | None = None
) -> tuple[KafkaPorts, list[str], Path]:
    """Write config, format storage; return ports, the broker command and its log.
    `sasl_users`: a broker with SASL/PLAIN and SCRAM logins and ACLs (`sasl_properties`)."""
    import subprocess

    home = state_dir / "kafka"
    data = home / "data"  # empty: `Stack.up` removes a previous run's (a new cluster id)
    data.mkdir(parents=True, exist_ok=True)
    # The SASL broker (ACL tests) has no pods listener: no pod reaches it.
    pods = procs.free_port() if sasl_users is None else 0
    ports = KafkaPorts(procs.free_port(), procs.free_port(), pods)
    props = home / "server.properties"
    props.write_text(server_properties(ports, data, sasl_users=sasl_users))
    (home / "log4j.properties").write_text(LOG4J)
    log = home / "kafka.log"
    # "--cluster-id=ID": an id may start with "-", which argparse would take for an option
    fmt = java_command(
        STORAGE_TOOL,
        "format",
        f"--cluster-id={_cluster_id()}",
        "-c",
        str(props),
        *scram_arguments(sasl_users or {}),
        log_dir=home,
    )
    with log.open("ab") as out:
        result = subprocess.run(fmt, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise procs.ComponentFailed("kafka", "storage format failed", log)
    return ports, java_command(MAIN, str(props), log_dir=home), log


def is_ready(bootstrap: str) -> bool:
    """True when the broker answers a metadata request and has a controller.

    A probe that raises means "not yet". kafka-python leaves the sockets of a
    bootstrap that failed half-way open; they are collected here, with their
    ResourceWarnings silenced, rather than in whatever test runs next (where
    pytest's warnings-as-errors turned them into a failure of that test)."""
    from kafka import KafkaAdminClient

    host, _, port = bootstrap.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=PROBE_CONNECT_SECONDS):
        pass  # not listening yet: no client, nothing to leak
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    except Exception:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        raise
    try:
        admin.list_topics()
        return True
    finally:
        admin.close()
