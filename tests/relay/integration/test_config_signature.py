"""Issue 17: a relay uses only a config the operator signed, whoever can write its ConfigMap.

A real relay with the operator's public key in its environment (as the relay
Deployment sets it) and its config and signature on disk (as the ConfigMap
volume holds them). A tenant's edit of the config text, here a route to
another host (the issue's "route the cluster policy forbids"), leaves the
signature as it was: the relay refuses it on reload and keeps delivering with
the config it had; a relay that starts on such a config waits, not ready, and
sends nothing until the operator's config is back. A config the operator did
sign, but for another roll (an old one replayed with its signature), is not
used either: the pod template names the one config its relays run.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from mailpipe.contracts.config import RelayConfig, dump_config
from mailpipe.contracts.signing import (
    DIGEST_ENV,
    POOL_ENV,
    PUBLIC_KEY_ENV,
    ConfigSigner,
    config_digest,
    signature_path,
)
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from tests.relay.integration.conftest import MX_HOST, Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

METRICS_HOST = "127.0.0.5"  # stands in for the pod IP (MAILPIPE_METRICS_ADDRESS)
OTHER_MX = "127.0.0.11"  # where the tenant's route points
DELIVERY_SECONDS = 60
REFUSAL_SECONDS = 30  # the relay polls its config every 2 s


def _probe(path: str, port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{METRICS_HOST}:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:  # not listening (yet)
        return 0, ""


def _write(path: Path, text: str) -> None:
    """Replace the file in one rename, as the kubelet swaps a ConfigMap volume."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _setup(
    pool_factory: Callable[..., Pool], smtp_receiver: Callable[..., SMTPReceiver]
) -> tuple[Pool, SMTPReceiver, SMTPReceiver, ConfigSigner, str, str, int]:
    rx, other = smtp_receiver(MX_HOST), smtp_receiver(OTHER_MX)
    port = free_port(METRICS_HOST)
    pool = pool_factory(
        routes={"d.test": [{"host": rx.host, "port": rx.port}]},
        metrics_port=port,
        metrics_address=METRICS_HOST,
    )
    signer = ConfigSigner.generate()
    operators = dump_config(pool.config)
    tenants = dump_config(
        RelayConfig.model_validate(
            {
                **pool.config.model_dump(),
                "routes": {"d.test": [{"host": other.host, "port": other.port}]},
            }
        )
    )
    _write(signature_path(pool.path), signer.sign(operators))
    return pool, rx, other, signer, operators, tenants, port


def _env(pool: Pool, signer: ConfigSigner) -> dict[str, str]:
    """What the relay Deployment gives the relay container."""
    return {
        PUBLIC_KEY_ENV: signer.public_key,
        POOL_ENV: pool.config.pool,
        DIGEST_ENV: config_digest(dump_config(pool.config)),
        "MAILPIPE_METRICS_ADDRESS": METRICS_HOST,
    }


def test_a_tampered_config_is_refused_on_reload_and_the_relay_keeps_the_operators(
    pool_factory: Callable[..., Pool],
    smtp_receiver: Callable[..., SMTPReceiver],
    relays: Callable[..., RelayProcess],
) -> None:
    pool, rx, other, signer, operators, tenants, port = _setup(pool_factory, smtp_receiver)
    _write(pool.path, operators)
    relay = relays(pool, env=_env(pool, signer))
    pool.send("before@d.test")
    pool.flush()
    wait_for(lambda: "before@d.test" in rx.recipients(), DELIVERY_SECONDS, "delivery", relay)
    wait_for(lambda: _probe("/readyz", port)[0] == 200, DELIVERY_SECONDS, "ready", relay)

    _write(pool.path, tenants)  # the tenant's edit: the text changes, the signature cannot
    wait_for(
        lambda: "signature does not match" in _probe("/readyz", port)[1],
        REFUSAL_SECONDS,
        "/readyz naming the refused config",
        relay,
    )
    assert _probe("/readyz", port)[0] == 503
    assert "refusing the relay config on disk" in relay.log_tail(200)
    assert 'mailpipe_config_refused_total{reason="untrusted"} 1.0' in _probe("/metrics", port)[1]

    pool.send("after@d.test")
    pool.flush()
    wait_for(lambda: "after@d.test" in rx.recipients(), DELIVERY_SECONDS, "delivery", relay)
    assert "config reloaded" not in relay.log_tail(500)

    _write(pool.path, operators)  # the operator put its own back
    wait_for(lambda: _probe("/readyz", port)[0] == 200, REFUSAL_SECONDS, "ready again", relay)
    assert other.recipients() == [], "the tenant's route was used"


def test_a_relay_started_on_a_tampered_config_waits_unready_and_sends_nothing(
    pool_factory: Callable[..., Pool],
    smtp_receiver: Callable[..., SMTPReceiver],
    relays: Callable[..., RelayProcess],
) -> None:
    pool, rx, other, signer, operators, tenants, port = _setup(pool_factory, smtp_receiver)
    _write(pool.path, tenants)
    pool.send("waiting@d.test")
    pool.flush()
    relay = relays(pool, env=_env(pool, signer))
    wait_for(
        lambda: "signature does not match" in _probe("/readyz", port)[1],
        REFUSAL_SECONDS,
        "/readyz naming the refused config",
        relay,
    )
    assert "relay started" not in relay.log_tail(200)

    _write(pool.path, operators)
    wait_for(lambda: "waiting@d.test" in rx.recipients(), DELIVERY_SECONDS, "delivery", relay)
    wait_for(lambda: _probe("/readyz", port)[0] == 200, DELIVERY_SECONDS, "ready", relay)
    assert other.recipients() == [], "the tenant's route was used"


def test_a_replayed_config_the_operator_once_signed_is_not_used(
    pool_factory: Callable[..., Pool],
    smtp_receiver: Callable[..., SMTPReceiver],
    relays: Callable[..., RelayProcess],
) -> None:
    pool, rx, other, signer, operators, older, port = _setup(pool_factory, smtp_receiver)
    _write(pool.path, operators)
    relay = relays(pool, env=_env(pool, signer))
    wait_for(lambda: _probe("/readyz", port)[0] == 200, DELIVERY_SECONDS, "ready", relay)

    # A config the operator signed for an earlier roll, replayed with its signature.
    _write(signature_path(pool.path), signer.sign(older))
    _write(pool.path, older)
    wait_for(
        lambda: 'mailpipe_config_refused_total{reason="stale"}' in _probe("/metrics", port)[1],
        REFUSAL_SECONDS,
        "the replayed config counted as refused",
        relay,
    )
    assert "not the one this relay's pod was rolled for" in relay.log_tail(200)
    assert _probe("/readyz", port)[0] == 200  # the operator's own: no alarm, nothing to fix
    pool.send("replayed@d.test")
    pool.flush()
    wait_for(lambda: "replayed@d.test" in rx.recipients(), DELIVERY_SECONDS, "delivery", relay)
    assert other.recipients() == [], "the replayed config's route was used"
