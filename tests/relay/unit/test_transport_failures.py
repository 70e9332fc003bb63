"""How the transport turns what went wrong before a transaction into one reply:
the MX lookup's failures (`dns_failure`) and a connection that could not be
opened (`connect_failure`), each with the stage that decided it. Table tests of
the two pure mappings `SMTPTransport.deliver` calls."""

from __future__ import annotations

import aiosmtplib
import pytest

from mailpipe.relay.addresses import AddressLiteral, InvalidDomain
from mailpipe.relay.delivery.dial import Refused, StageTimeout
from mailpipe.relay.delivery.mx import NoSuchDomain, NullMX, TemporaryDNSError, UnroutableDomain
from mailpipe.relay.delivery.transport import (
    CONNECT_FAILURES,
    _NoTLS,
    _TLSFailed,
    connect_failure,
    dns_failure,
)
from mailpipe.relay.ports import Stage


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (AddressLiteral("u@[192.0.2.1]"), 550, "5.1.2"),
        (InvalidDomain("a..b"), 553, "5.1.3"),
        (NullMX("null.test"), 556, "5.1.10"),
        (NoSuchDomain("gone.test"), 550, "5.1.2"),
        (UnroutableDomain("ip-mx.test"), 550, "5.4.4"),
        (TemporaryDNSError("timeout"), 451, "4.4.3"),
        (RuntimeError("resolver bug"), 451, "4.4.3"),  # deferred, never a crash
    ],
    ids=["literal", "invalid", "null-mx", "nxdomain", "unroutable", "temporary", "bug"],
)
def test_dns_failures(exc: Exception, code: int, status: str) -> None:
    r = dns_failure(exc, "dest.test")
    assert (r.code, r.text.split()[0]) == (code, status)


@pytest.mark.parametrize(
    ("exc", "code", "stage"),
    [
        (_NoTLS(), 451, Stage.TLS),
        (Refused("127.0.0.1 not allowed by policy"), 550, Stage.DNS),
        (StageTimeout(Stage.CONNECT, "no connection", 30), 421, Stage.CONNECT),
        (StageTimeout(Stage.GREETING, "no greeting", 300), 451, Stage.GREETING),
        (_TLSFailed("handshake"), 451, Stage.TLS),
        (aiosmtplib.SMTPConnectResponseError(554, "go away"), 554, Stage.GREETING),
        (aiosmtplib.SMTPResponseException(421, "busy"), 421, Stage.EHLO),
        (aiosmtplib.SMTPServerDisconnected("closed during EHLO"), 421, Stage.CONNECT),
        (ConnectionRefusedError(111, "refused"), 421, Stage.CONNECT),
        (TimeoutError(), 421, Stage.CONNECT),
    ],
    ids=[
        "no-starttls", "policy", "connect-timeout", "greeting-timeout", "tls-failed",
        "greeting-refused", "ehlo-refused", "disconnected", "refused", "timeout",
    ],
)  # fmt: skip
def test_connect_failures(exc: BaseException, code: int, stage: Stage) -> None:
    assert isinstance(exc, CONNECT_FAILURES)  # caught by deliver, not raised through
    r, decided = connect_failure(exc, "mx.dest.test")
    assert (r.code, decided) == (code, stage)
