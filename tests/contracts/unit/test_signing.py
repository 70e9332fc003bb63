"""A relay config is the operator's only when its signature says so (contracts.signing)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailpipe.contracts.config import ConfigError, EgressIP, dump_config
from mailpipe.contracts.signing import (
    ConfigSigner,
    ConfigVerifier,
    StaleConfigError,
    UntrustedConfigError,
    config_digest,
    trusted_config,
)
from mailpipe.devstack import samples

POOL = "team-a/news"


def _text(pool: str = POOL, **overrides: object) -> str:
    kafka = samples.pool_topics("127.0.0.1:9092", "mailpipe.team-a.news", ["1m"])
    egress = [EgressIP(address="192.0.2.1", helo="mail.sender.test")]
    return dump_config(samples.relay_config(pool, kafka, egress, **overrides))


@pytest.fixture
def signer() -> ConfigSigner:
    return ConfigSigner.generate()


def test_a_config_signed_by_the_operator_is_used(signer: ConfigSigner) -> None:
    text = _text()
    verifier = ConfigVerifier.from_base64(signer.public_key, POOL)
    assert trusted_config(text, signer.sign(text), verifier).pool == POOL


def _tampered(text: str) -> str:
    """What a tenant with `edit` did in issue 17: one more route, to a forbidden host."""
    assert "routes: {}" in text
    return text.replace("routes: {}", "routes:\n  forbidden.test:\n  - host: 10.0.0.9\n")


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("unsigned", "not signed"),
        ("tampered", "does not match"),
        ("other key", "does not match"),
        ("garbage signature", "does not match"),
        ("another pool's", "signed for pool team-a/other"),
    ],
    ids=lambda v: str(v).replace(" ", "-"),
)
def test_a_config_the_operator_did_not_write_is_refused(
    signer: ConfigSigner, case: str, why: str
) -> None:
    verifier = ConfigVerifier.from_base64(signer.public_key, POOL)
    text = _text()
    signature: str | None = signer.sign(text)
    if case == "unsigned":
        signature = None
    elif case == "tampered":
        text = _tampered(text)
    elif case == "other key":
        signature = ConfigSigner.generate().sign(text)
    elif case == "garbage signature":
        signature = "not base64!"
    elif case == "another pool's":
        text = _text("team-a/other")  # signed, by the operator, for its own pool
        signature = signer.sign(text)
    with pytest.raises(UntrustedConfigError, match=why):
        trusted_config(text, signature, verifier)


def test_a_config_the_operator_signed_for_another_roll_is_refused(signer: ConfigSigner) -> None:
    """A signature says who, not when: last month's config (with a route since removed)
    is signed too. The pod template names the one config its relays run."""
    current, old = _text(), _tampered(_text())
    verifier = ConfigVerifier.from_base64(signer.public_key, POOL, config_digest(current))
    assert trusted_config(current, signer.sign(current), verifier).routes == {}
    with pytest.raises(StaleConfigError, match="not the one this relay's pod was rolled for"):
        trusted_config(old, signer.sign(old), verifier)


def test_without_a_key_any_valid_config_is_used() -> None:
    """A relay run by hand or by the dev stack: no operator signs (the relay Deployment
    always sets the key)."""
    assert trusted_config(_tampered(_text()), None, None).routes


def test_the_signature_covers_the_text_not_only_what_it_parses_to(signer: ConfigSigner) -> None:
    text = _text()
    verifier = ConfigVerifier.from_base64(signer.public_key)
    with pytest.raises(UntrustedConfigError):
        trusted_config(text + "\n# a comment\n", signer.sign(text), verifier)


def test_the_signing_key_is_a_pkcs8_ed25519_pem_and_nothing_else(signer: ConfigSigner) -> None:
    pem = signer.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert ConfigSigner.from_pem(pem).public_key == signer.public_key
    ecdsa = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ConfigError, match="Ed25519"):
        ConfigSigner.from_pem(ecdsa)
    with pytest.raises(ConfigError, match="not a PEM"):
        ConfigSigner.from_pem(b"nonsense")


def test_a_malformed_public_key_stops_the_relay_rather_than_checking_nothing() -> None:
    with pytest.raises(ConfigError, match="MAILPIPE_CONFIG_PUBLIC_KEY"):
        ConfigVerifier.from_base64(base64.b64encode(b"short").decode())
