"""Relay configs the operator signs and the relay checks: a ConfigMap edit is not a config.

A tenant with Kubernetes' built-in `edit` role can write the relay ConfigMap
in its namespace, and it can read every Secret and ConfigMap there, so no key
a relay could hold may make a config trustworthy: an HMAC key the relay can
read, the tenant can read too. The operator therefore signs each rendered
config with an Ed25519 private key that lives only in the operator's own
namespace (the chart's Secret, mounted into the operator alone), and the
relay gets only the public key, in its Deployment's pod template
(`PUBLIC_KEY_ENV`), which the operator applies back within a second when it
is edited. A tenant can write any text into the ConfigMap but cannot produce
its signature; the relay refuses it, at start and on reload.

Ed25519 (RFC 8032, through `cryptography`, already a dependency): one fixed
curve and hash, no parameters to choose wrongly, deterministic signatures,
and a 32-byte public key that fits one environment variable.

What is signed is `DOMAIN` + the exact bytes of the config text: the relay
verifies the text it is about to parse, so no canonicalisation can differ
between signer and verifier, and a signature made for anything else (another
purpose, a later format) never verifies as a relay config. The config names
its pool (`pool: namespace/name`); the relay also checks that against its
own pool (`POOL_ENV`, set by the Deployment), so one pool's signed config
copied into another pool's ConfigMap is refused too.

A signature says who wrote a config, not when: a config the operator signed
for this pool last month (before the platform removed a route) still carries
a good signature. So the pod template also names the SHA-256 of the config
it was rolled for (`DIGEST_ENV`), and a relay uses no other text
(`StaleConfigError`). The operator rolls the relays whenever the config
changes (the pod template carries its hash), so a relay never needs another:
a newer one reaches it as a new pod.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .config import ConfigError, RelayConfig, parse_config

__all__ = [
    "DIGEST_ENV",
    "DOMAIN",
    "POOL_ENV",
    "PUBLIC_KEY_ENV",
    "SIGNATURE_SUFFIX",
    "ConfigSigner",
    "ConfigVerifier",
    "StaleConfigError",
    "UntrustedConfigError",
    "config_digest",
    "signature_path",
    "trusted_config",
]

DOMAIN = b"mailpipe relay config v1\n"  # what the signature is for (domain separation)
SIGNATURE_SUFFIX = ".sig"  # `relay.yaml` is signed by `relay.yaml.sig`, in the same ConfigMap
PUBLIC_KEY_ENV = "MAILPIPE_CONFIG_PUBLIC_KEY"  # base64 of the raw 32-byte Ed25519 public key
DIGEST_ENV = "MAILPIPE_CONFIG_SHA256"  # hex SHA-256 of the config text the pod was rolled for
POOL_ENV = "MAILPIPE_POOL"  # `namespace/name` of the relay's pool, from its Deployment


class UntrustedConfigError(ConfigError):
    """The config was not written by the operator: no signature, a bad one, another pool's."""


class StaleConfigError(UntrustedConfigError):
    """The operator wrote this config, but not for this pod: an older or newer one."""


def config_digest(text: str) -> str:
    """The hex SHA-256 of a config text, as the pod template names it (`DIGEST_ENV`)."""
    return hashlib.sha256(text.encode()).hexdigest()


def signature_path(config_path: Path) -> Path:
    """Where the signature of the config file at `config_path` is (the same directory)."""
    return config_path.with_name(config_path.name + SIGNATURE_SUFFIX)


@dataclass(frozen=True)
class ConfigSigner:
    """The operator's half: signs rendered config text."""

    key: Ed25519PrivateKey

    @classmethod
    def from_pem(cls, pem: bytes) -> ConfigSigner:
        """From a PKCS#8 PEM Ed25519 private key (Helm's `genPrivateKey "ed25519"`)."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"config signing key: not a PEM private key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(
                f"config signing key: an Ed25519 key is needed, not {type(key).__name__}"
            )
        return cls(key)

    @classmethod
    def generate(cls) -> ConfigSigner:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, text: str) -> str:
        """The signature of `text` (base64, one line): the ConfigMap's `<key>.sig`."""
        return base64.b64encode(self.key.sign(DOMAIN + text.encode())).decode()

    @property
    def public_key(self) -> str:
        """The public key the relays verify with (base64 of its 32 raw bytes)."""
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class ConfigVerifier:
    """The relay's half: the public key, and the pool the relay belongs to."""

    key: Ed25519PublicKey
    pool: str | None = None  # the relay's own pool; None: not checked (a config's pool is free)
    digest: str | None = None  # the config text's SHA-256 its pod was rolled for; None: any

    @classmethod
    def from_base64(
        cls, public_key: str, pool: str | None = None, digest: str | None = None
    ) -> ConfigVerifier:
        try:
            raw = base64.b64decode(public_key.strip(), validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{PUBLIC_KEY_ENV}: not a base64 Ed25519 public key ({exc})") from exc
        return cls(key, pool or None, (digest or "").strip().lower() or None)

    def verify(self, text: str, signature: str | None) -> None:
        """Raise `UntrustedConfigError` unless `signature` is the operator's for `text`."""
        if signature is None:
            raise UntrustedConfigError(
                "relay config is not signed (no signature file beside it): the operator did"
                " not write it; refusing it"
            )
        try:
            raw = base64.b64decode(signature.strip(), validate=True)
            self.key.verify(raw, DOMAIN + text.encode())
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise UntrustedConfigError(
                "relay config signature does not match its text: it was changed after the"
                " operator wrote it; refusing it"
            ) from exc


def trusted_config(
    text: str, signature: str | None, verifier: ConfigVerifier | None
) -> RelayConfig:
    """Parse `text`, after checking it is the operator's when a verifier is given.

    The signature is checked before the text is parsed, so nothing of an
    untrusted config is used (not even to report its own errors); then its
    pool must be the relay's, and its text the one the relay's pod was rolled
    for (`StaleConfigError`: signed, but older or newer). Without a verifier (a
    relay run by hand or by the dev stack, which has no operator to sign), this
    is `parse_config`.
    """
    if verifier is not None:
        verifier.verify(text, signature)
        if verifier.digest is not None and config_digest(text) != verifier.digest:
            raise StaleConfigError(
                f"relay config (sha256 {config_digest(text)[:12]}…) is the operator's but not the"
                f" one this relay's pod was rolled for ({verifier.digest[:12]}…); keeping to that"
            )
    config = parse_config(text)
    if verifier is not None and verifier.pool is not None and config.pool != verifier.pool:
        raise UntrustedConfigError(
            f"relay config is signed for pool {config.pool}, but this relay belongs to"
            f" {verifier.pool}; refusing it"
        )
    return config
