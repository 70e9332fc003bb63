"""The relay's mounted config: the file, its signature beside it, and whether to trust them.

In a cluster the config is the pool's ConfigMap, which a tenant with the
namespace's `edit` role can write. The operator signs what it renders
(`contracts.signing`) and puts its public key in the relay's pod template;
with that key set, a config whose signature is missing or does not match (or
that the operator signed for another pod: an older config replayed) is never
used: at start the relay waits, not ready, until a config it trusts
appears (the operator puts its own back within seconds); on a reload it keeps
running with the config it has, counts the refusal and says why on `/readyz`.
Without a key (a relay started by hand or by the dev stack) any valid config
is used, as before.

The config and its signature are read together and their modification times
are watched together: the kubelet swaps a ConfigMap volume's files at once,
but a process writing them one after the other must not leave the relay on a
half-written pair.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from mailpipe.contracts.config import ConfigError, RelayConfig
from mailpipe.contracts.signing import (
    DIGEST_ENV,
    POOL_ENV,
    ConfigVerifier,
    StaleConfigError,
    UntrustedConfigError,
    signature_path,
    trusted_config,
)

from .health import Health
from .metrics import RelayMetrics

log = logging.getLogger("mailpipe.relay")

CONFIG_CHECK = "relay config"  # the readiness check of an untrusted config on disk
DEFAULT_METRICS_PORT = 9090  # RelayConfig.metrics_port's default
MAX_PORT = 65536
Stamp = tuple[float, float]  # modification times of the config and its signature


def verifier_from_env(public_key: str | None) -> ConfigVerifier | None:
    """The verifier for `public_key` (the `--config-public-key` value, by default
    `$MAILPIPE_CONFIG_PUBLIC_KEY`), this relay's pool (`$MAILPIPE_POOL`) and the
    config its pod was rolled for (`$MAILPIPE_CONFIG_SHA256`), or None when no
    key is set. A key that is set but malformed is a ConfigError:
    a relay told to check signatures never runs unchecked."""
    if not public_key:
        return None
    return ConfigVerifier.from_base64(
        public_key, os.environ.get(POOL_ENV), os.environ.get(DIGEST_ENV)
    )


@dataclass
class ConfigFile:
    """The config at `path` and its signature (`<path>.sig`), checked by `verifier`."""

    path: Path
    verifier: ConfigVerifier | None = None
    read: Stamp = (0.0, 0.0)
    """The stamp of the files as `load` last read them: a watcher compares with
    this, so a change made between the read and the watcher's start is seen."""

    def stamp(self) -> Stamp:
        """Changes whenever either file is replaced or rewritten (0 for a missing one)."""

        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:
                return 0.0

        return mtime(self.path), mtime(signature_path(self.path))

    def load(self) -> RelayConfig:
        """The config, if it is valid and (with a verifier) the operator's.

        Raises `UntrustedConfigError` for a config the operator did not sign,
        `ConfigError` for an invalid one, `OSError` when it cannot be read."""
        stamp = self.stamp()  # before reading: a write during the read shows as a change
        text = self.path.read_text()
        try:
            signature: str | None = signature_path(self.path).read_text()
        except FileNotFoundError:
            signature = None
        self.read = stamp
        return trusted_config(text, signature, self.verifier)


async def wait_until_trusted(
    source: ConfigFile,
    first: UntrustedConfigError,
    health: Health,
    poll_seconds: float,
    refused: Callable[[UntrustedConfigError], None],
) -> RelayConfig:
    """Poll `source` until it holds a config the relay trusts; `first` is why the
    one found at start was refused. Meanwhile readiness is false with the reason
    (`CONFIG_CHECK`), re-reported every poll so it does not age out."""
    error: ConfigError | OSError = first
    while True:
        if isinstance(error, UntrustedConfigError):
            health.report(CONFIG_CHECK, str(error))
        await asyncio.sleep(poll_seconds)
        if source.stamp() == source.read:
            continue
        try:
            config = source.load()
        except UntrustedConfigError as exc:
            refused(exc)
            error = exc
            continue
        except (ConfigError, OSError) as exc:
            log.error("waiting for a config the relay can use: %s", exc)
            error = exc
            continue
        health.resolve(CONFIG_CHECK)
        return config


def refusal_reporter(
    health: Health, metrics: RelayMetrics
) -> Callable[[UntrustedConfigError], None]:
    """What the relay does with a config it will not use: log it and count it
    (`mailpipe_config_refused_total`), and, unless the operator wrote it (a
    `StaleConfigError`: the ConfigMap changed under a running pod, which a
    roll replaces anyway), say it on `/readyz`."""

    def refused(exc: UntrustedConfigError) -> None:
        if isinstance(exc, StaleConfigError):
            log.warning("keeping the running config: %s", exc)
            metrics.config_refused.labels("stale").inc()
            return
        log.error("refusing the relay config on disk: %s", exc)
        metrics.config_refused.labels("untrusted").inc()
        health.report(CONFIG_CHECK, str(exc))

    return refused


def metrics_port_of(path: Path) -> int | None:
    """The metrics port named by a config that is not trusted, to answer `/readyz`
    (not ready, and why) while the relay waits for one it trusts.

    The only value ever taken from an untrusted config: the port of the relay's
    own probe endpoint on its pod IP, where a wrong one only fails the probe,
    which is the verdict anyway. None when the file does not say."""
    try:
        data = yaml.safe_load(path.read_text())
        port = data.get("metrics_port", DEFAULT_METRICS_PORT) if isinstance(data, dict) else None
    except (OSError, yaml.YAMLError):
        return None
    return port if isinstance(port, int) and 0 < port < MAX_PORT else None
