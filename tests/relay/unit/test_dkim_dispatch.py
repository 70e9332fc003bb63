"""DKIM in the relay's dispatch: the RSA step runs in a worker thread, beside the
event loop, and every message sent still carries a signature dkimpy verifies;
a message that cannot be signed goes to the DLQ and spends no warm-up budget."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailpipe.devstack.certs import write_rsa_key
from mailpipe.relay import dkim_signing

from .conftest import Harness, make_config, record_bytes


def _signing_harness(tmp_path: Path, **overrides: Any) -> tuple[Harness, Any]:
    key_path = tmp_path / "k.pem"
    key = write_rsa_key(key_path)
    config = make_config(
        dkim={"domain": "sender.test", "selector": "s1", "private_key_path": str(key_path)},
        **overrides,
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return Harness(config), lambda name, timeout=5: txt


async def test_rsa_runs_beside_the_event_loop_and_every_signature_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, dns = _signing_harness(tmp_path)
    signed_on: list[threading.Thread] = []
    rsa_step = dkim_signing.openssl_rsa_sign

    def watched(key: rsa.RSAPrivateKey, algorithm: bytes, digest: bytes) -> bytes:
        signed_on.append(threading.current_thread())
        return rsa_step(key, algorithm, digest)

    monkeypatch.setattr(dkim_signing, "openssl_rsa_sign", watched)
    for i in range(6):
        h.put(record_bytes(f"u{i}@d.test"))
    await h.run_until(lambda: len(h.events()) == 6)

    assert [e["disposition"] for e in h.events()] == ["delivered"] * 6
    assert len(signed_on) == 6
    assert threading.main_thread() not in signed_on  # the loop's thread never waits on RSA
    for envelope in h.transport.envelopes:
        assert envelope.message.startswith(b"DKIM-Signature:")
        assert dkim.verify(envelope.message, dnsfunc=dns)


WARMING = {
    "egress": [{"address": "127.0.0.2", "helo": "cold.test", "warmup": True}],
    "warmup": {"schedule": [{"day": 1, "daily_limit": 5}]},
}


def _budget(h: Harness) -> float | None:
    registry = h.engine.metrics.registry
    labels = {"egress_ip": "127.0.0.2"}
    return registry.get_sample_value("mailpipe_warmup_budget_remaining", labels)


async def test_a_message_that_cannot_be_signed_goes_to_the_dlq_and_spends_no_budget(
    tmp_path: Path,
) -> None:
    h, _ = _signing_harness(tmp_path, **WARMING)
    h.put(record_bytes("a@d.test", content=None, raw="Subject: no sender\n\nbody\n"))
    h.put(record_bytes("b@d.test"))
    await h.run_until(lambda: len(h.sink.topics["p.dlq"]) == 1 and len(h.events()) == 1)

    [(_, copy)] = h.sink.topics["p.dlq"]
    assert "without a From header" in json.loads(copy or b"")["reason"]
    assert [e.recipients for e in h.transport.envelopes] == [("b@d.test",)]
    assert _budget(h) == 4  # the signed message only


async def test_a_signature_that_fails_in_its_thread_gives_the_budget_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up count is spent before the signature (two lanes cannot both
    take the last message); a signature that fails sends nothing, so the count
    goes back, and the record is failed to the DLQ as any relay error."""
    h, _ = _signing_harness(tmp_path, **WARMING)

    def broken(key: rsa.RSAPrivateKey, algorithm: bytes, digest: bytes) -> bytes:
        raise RuntimeError("no RSA today")

    monkeypatch.setattr(dkim_signing, "openssl_rsa_sign", broken)
    h.put(record_bytes("a@d.test"))
    await h.run_until(lambda: len(h.sink.topics["p.dlq"]) == 1)

    [(_, copy)] = h.sink.topics["p.dlq"]
    assert "no RSA today" in json.loads(copy or b"")["reason"]
    assert h.transport.envelopes == []
    assert _budget(h) == 5
