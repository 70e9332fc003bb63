"""May this identity use these topics and this group? Asked once, answered in one line.

kafka-python 3 reports a refused login only in its own log: the client then
gives up with "Unable to bootstrap" (after its bootstrap timeout), the same
words as for a broker that is down. And a topic the principal may not
describe looks, in metadata, exactly like a topic that does not exist. A
relay whose credentials are wrong, or which names another tenant's topics,
must say *that* on its readiness endpoint (issue 11), so `probe_access` asks
the questions whose answers tell them apart:

- the SASL error kafka-python logged while bootstrapping (captured from its
  `kafka` logger for the duration of the probe: the only place it is kept);
- ListOffsets of partition 0 of each topic the metadata did not show (a
  refusal comes back at once as TopicAuthorizationFailedError);
- OffsetFetch for the consumer group (GroupAuthorizationFailedError), which
  reads the group's offsets without joining it.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
)

from ._autocreate import without_auto_create
from ._security import Cluster, KafkaAccessError, client_options, connection_of

# A refused login or topic is answered in milliseconds; a broker that is down
# is reported after this long, and asked again by the caller.
PROBE_TIMEOUT_MS = 10_000
CONNECT_SECONDS = 2.0  # a TCP connect to a listening broker takes milliseconds
# what kafka-python logs when a login is refused (not its "credentials in the clear" warning)
AUTH_WORDS = ("AuthenticationFailed", "AuthorizationFailed")


class KafkaLoginFailed(KafkaAccessError):
    """The broker refused this identity's login (wrong password, unknown user,
    mechanism the broker does not enable)."""


class KafkaAccessDenied(KafkaAccessError):
    """The broker's ACLs refuse this identity a topic or the consumer group."""


class _AuthFailures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(w in text for w in AUTH_WORDS):
            self.seen.append(text)


@contextmanager
def _auth_failures() -> Iterator[list[str]]:
    handler = _AuthFailures()
    logger = logging.getLogger("kafka")
    logger.addHandler(handler)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)


def _reason(logged: str) -> str:
    """'<KafkaConnection ...>: Connection lost: [Error 58] SaslAuthenticationFailedError:
    SaslAuthenticationFailedError: X (backoff 3.60 secs)' -> 'SaslAuthenticationFailedError: X'."""
    name = "SaslAuthenticationFailedError"
    text = logged.rsplit(f"{name}: ", 1)[-1] if name in logged else logged.rsplit(">: ", 1)[-1]
    text = re.sub(r"\s*\(backoff [^)]*\)$", "", text.strip())
    return f"{name}: {text}" if name in logged else text


def _listening(servers: str) -> bool:
    """Whether any bootstrap server accepts a TCP connection."""
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), CONNECT_SECONDS):
                return True
        except (OSError, ValueError):
            continue
    return False


def login_refused(cluster: Cluster, logged: Sequence[str] = ()) -> str | None:
    """Why a client of `cluster` could not bootstrap, if its login is the likely
    cause: it logs in (not PLAINTEXT) and a bootstrap server answers TCP, or
    kafka-python logged a SASL refusal (`logged`). None: the broker is away."""
    conn = connection_of(cluster)
    security, servers = conn.security, conn.bootstrap_servers
    if not logged and (security.protocol == "PLAINTEXT" or not _listening(servers)):
        return None
    # The broker answers but no session came of it. Its SASL error is logged
    # on some attempts only (it may close the connection first).
    why = _reason(logged[-1]) if logged else "the broker closed the connection"
    return (
        f"login to {servers} refused ({security}): {why};"
        " check the user name, password, mechanism and CA"
    )


def probe_access(cluster: Cluster, topics: Iterable[str], group: str | None = None) -> None:
    """Raise, with the broker's own reason, if this identity cannot log in
    (`KafkaLoginFailed`), may not use one of `topics` or `group`
    (`KafkaAccessDenied`, naming them), or its credential files are missing
    (`KafkaCredentialsError`); a broker that does not answer raises the client's
    KafkaTimeoutError. Topics that simply do not exist are not this probe's
    business (the relay's consumer reports them)."""
    conn = connection_of(cluster)
    with _auth_failures() as failures:
        try:
            consumer = without_auto_create(
                KafkaConsumer(
                    **client_options(conn),
                    group_id=group,
                    enable_auto_commit=False,
                    request_timeout_ms=PROBE_TIMEOUT_MS,
                    bootstrap_timeout_ms=PROBE_TIMEOUT_MS,
                )
            )
        except KafkaTimeoutError as exc:
            refused = login_refused(conn, failures)
            if refused is not None:
                raise KafkaLoginFailed(refused) from exc
            raise
    try:
        wanted = list(dict.fromkeys(topics))
        known = consumer.topics()
        for topic in (t for t in wanted if t not in known):
            try:
                consumer.end_offsets([TopicPartition(topic, 0)])
            except TopicAuthorizationFailedError as exc:
                # the first refusal is the answer: after it, kafka-python's
                # metadata requests for the other refused topics time out
                raise KafkaAccessDenied(_denied(f"topic {topic}", exc)) from None
            except KafkaError:
                continue  # missing (or slow): not an access problem
        if group is not None and wanted:
            try:
                consumer.committed(TopicPartition(wanted[0], 0))
            except GroupAuthorizationFailedError as exc:
                raise KafkaAccessDenied(_denied(f"consumer group {group}", exc)) from None
            except KafkaError:
                pass  # coordinator not ready yet: the consumer will find out
    finally:
        consumer.close()


def _denied(what: str, exc: KafkaError) -> str:
    return f"{type(exc).__name__}: not authorized for {what} (the Kafka ACLs of this principal)"
