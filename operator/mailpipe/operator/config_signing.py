"""The operator's signature on every relay config it renders (pure, plus loading the key).

A tenant with the built-in `edit` role can write the relay ConfigMap in its
namespace; the relays must not take that as their config (issue 17: a patched
ConfigMap made a relay deliver to a route the cluster policy forbids, and read
another namespace's topics after a restart). The operator holds an Ed25519
private key that only its own namespace has (the chart's Secret, mounted into
the operator alone: `--config-signing-key`); `signed` adds the signature of
the rendered config beside it in the ConfigMap (`relay.yaml.sig`) and the
public key and the config's digest to the relay container's environment, so
the relay refuses any other text, even one the operator signed before
(`contracts.signing`, `relay.config_file`).

Why the public key travels in the pod template: a relay has no API token and
cannot mount anything from the operator's namespace, so whatever it trusts
must come through its own pod spec. The pod template is the operator's (a
changed relay Deployment is applied back within a second), whereas the
ConfigMap is data a tenant may write and the operator only puts back after
the fact (`handlers.children`). A key rotation changes the template, so the
relays roll onto the new key and their newly signed configs together.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

from mailpipe.contracts.config import ConfigError
from mailpipe.contracts.signing import (
    DIGEST_ENV,
    PUBLIC_KEY_ENV,
    SIGNATURE_SUFFIX,
    ConfigSigner,
    config_digest,
)

from .pool import CONFIG_KEY

log = logging.getLogger("mailpipe.operator")

SIGNING_KEY_ENV = "MAILPIPE_CONFIG_SIGNING_KEY_FILE"  # the default of --config-signing-key
COMPONENT_LABEL = "app.kubernetes.io/component"  # `PoolRef.labels`
SIGNATURE_KEY = CONFIG_KEY + SIGNATURE_SUFFIX  # the ConfigMap key of the signature
SIGNER_MEMO_KEY = "config_signer"  # kopf memo key: put by `mailpipe operator`, read at startup


def load_signer(path: str | None) -> ConfigSigner | None:
    """The operator's signing key from the PEM file at `path`; None (with a
    warning) when no path is given. A path that is given but unreadable or not
    an Ed25519 key stops the operator: it must never fall back to unsigned."""
    if not path:
        log.warning(
            "relay configs are not signed (no --config-signing-key or $%s): relays then"
            " trust whatever their ConfigMap says; the chart always sets one",
            SIGNING_KEY_ENV,
        )
        return None
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config signing key {path}: {exc.strerror}") from exc
    signer = ConfigSigner.from_pem(pem)
    log.info("relay configs are signed; relays verify with public key %s", signer.public_key)
    return signer


def signing_key_path(arg: str | None) -> str | None:
    return arg or os.environ.get(SIGNING_KEY_ENV) or None


def signed(
    children: list[dict[str, Any]], config_text: str, signer: ConfigSigner | None
) -> list[dict[str, Any]]:
    """`children` (from `pool.build_children`) with the config's signature in the
    ConfigMap, and the public key and the config's digest in the relay
    container's env (the digest changes exactly when the pod template's
    config hash does: no extra roll); unchanged
    without a signer. Ed25519 signatures are deterministic, so the same config
    renders the same ConfigMap and an unchanged pool writes nothing."""
    if signer is None:
        return children
    out = copy.deepcopy(children)
    for child in out:
        # the relays' ConfigMap and Deployment only: the endpoints' children
        # hold no relay config (or mount the relays' ConfigMap and verify nothing)
        if child["metadata"]["labels"].get(COMPONENT_LABEL) != "relay":
            continue
        if child["kind"] == "ConfigMap":
            child["data"][SIGNATURE_KEY] = signer.sign(config_text)
        elif child["kind"] == "Deployment":
            for container in child["spec"]["template"]["spec"]["containers"]:
                container.setdefault("env", []).extend(
                    [
                        {"name": PUBLIC_KEY_ENV, "value": signer.public_key},
                        # the one config this pod runs: an older signed one is refused too
                        {"name": DIGEST_ENV, "value": config_digest(config_text)},
                    ]
                )
    return out
