"""Issue 22 Deliver 5: the TLS of each attempt is visible, with bounded labels.

The transport's `TransactionResult.tls` (mode applied, what the destination
published, protocol, verified or why not) reaches each event of the attempt
and `mailpipe_tls_attempts_total`; whatever the destinations, that metric's
series are bounded by the domain labels the pool allows (the other labels
come from fixed sets).
"""

from __future__ import annotations

import pytest

from mailpipe.contracts.tls_outcome import TLSFailure, TLSOutcome
from mailpipe.relay.metrics import DEFAULT_DOMAIN_LABELS

from .conftest import Harness, make_config, record_bytes

pytestmark = pytest.mark.security

TESTING = TLSOutcome(
    mode="mta-sts",
    policy="testing",
    protocol="TLSv1.3",
    verified=False,
    failure=TLSFailure.CERTIFICATE_HOST_MISMATCH,
)


async def test_the_tls_outcome_reaches_the_events_and_the_metric() -> None:
    h = Harness(make_config())
    h.transport.tls = TESTING
    h.put(record_bytes("a@d.test", "b@d.test"))
    await h.run_until(lambda: len(h.events()) == 2)
    for event in h.events():
        assert event["tls"] == {
            "mode": "mta-sts",
            "policy": "testing",
            "protocol": "TLSv1.3",
            "verified": False,
            "failure": "certificate-host-mismatch",
        }
    labels = {
        "domain": "d.test",
        "mode": "mta-sts",
        "policy": "testing",
        "protocol": "TLSv1.3",
        "verified": "false",
        "failure": "certificate-host-mismatch",
    }
    registry = h.engine.metrics.registry
    assert registry.get_sample_value("mailpipe_tls_attempts_total", labels) == 1  # one attempt


async def test_tls_series_stay_bounded_over_a_thousand_domains() -> None:
    h = Harness(make_config())
    h.transport.tls = TLSOutcome(mode="opportunistic", protocol="SSLv3")
    for i in range(1000):
        h.put(record_bytes(f"a@d{i}.test"))
    await h.run_until(lambda: len(h.events()) == 1000, 60)
    samples = [
        s
        for family in h.engine.metrics.registry.collect()
        if family.name == "mailpipe_tls_attempts"
        for s in family.samples
        if s.name.endswith("_total")
    ]
    assert len(samples) == DEFAULT_DOMAIN_LABELS + 1  # the named domains and "other"
    assert {s.labels["protocol"] for s in samples} == {"other"}  # not a value it was given
    assert sum(s.value for s in samples) == 1000
