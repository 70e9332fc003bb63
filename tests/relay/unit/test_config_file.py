"""The relay uses a config on disk only when the operator signed it (relay.config_file)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailpipe.contracts.config import EgressIP, dump_config
from mailpipe.contracts.signing import (
    ConfigSigner,
    ConfigVerifier,
    UntrustedConfigError,
    signature_path,
)
from mailpipe.devstack import samples
from mailpipe.relay.config_file import CONFIG_CHECK, ConfigFile, wait_until_trusted
from mailpipe.relay.health import Health

POOL = "team-a/news"
POLL_SECONDS = 0.01


def _text(**overrides: object) -> str:
    kafka = samples.pool_topics("127.0.0.1:9092", "mailpipe.team-a.news", ["1m"])
    egress = [EgressIP(address="192.0.2.1", helo="mail.sender.test")]
    return dump_config(samples.relay_config(POOL, kafka, egress, **overrides))


def _write(path: Path, text: str, signature: str | None) -> None:
    path.write_text(text)
    sig = signature_path(path)
    if signature is None:
        sig.unlink(missing_ok=True)
    else:
        sig.write_text(signature)


@pytest.fixture
def signer() -> ConfigSigner:
    return ConfigSigner.generate()


@pytest.fixture
def config_file(tmp_path: Path, signer: ConfigSigner) -> ConfigFile:
    return ConfigFile(tmp_path / "relay.yaml", ConfigVerifier.from_base64(signer.public_key, POOL))


def test_the_signature_beside_the_config_is_checked(
    config_file: ConfigFile, signer: ConfigSigner
) -> None:
    text = _text()
    _write(config_file.path, text, signer.sign(text))
    assert config_file.load().pool == POOL
    _write(config_file.path, _text(smtp_port=2525), signer.sign(text))  # edited by hand
    with pytest.raises(UntrustedConfigError, match="does not match"):
        config_file.load()
    _write(config_file.path, text, None)
    with pytest.raises(UntrustedConfigError, match="not signed"):
        config_file.load()


def test_the_stamp_changes_when_only_the_signature_does(
    config_file: ConfigFile, signer: ConfigSigner
) -> None:
    """A writer that writes the config, then its signature: the relay must look again."""
    text = _text()
    _write(config_file.path, text, None)
    before = config_file.stamp()
    signature_path(config_file.path).write_text(signer.sign(text))
    assert config_file.stamp() != before


async def test_a_relay_started_on_an_untrusted_config_waits_not_ready_for_the_operators(
    config_file: ConfigFile, signer: ConfigSigner
) -> None:
    text = _text()
    _write(config_file.path, _text(smtp_port=2525), signer.sign(text))
    with pytest.raises(UntrustedConfigError) as first:
        config_file.load()
    health = Health()
    refused: list[UntrustedConfigError] = []
    waiting = asyncio.create_task(
        wait_until_trusted(config_file, first.value, health, POLL_SECONDS, refused.append)
    )
    await asyncio.sleep(POLL_SECONDS * 5)
    assert not waiting.done()
    (reason,) = health.readiness()
    assert reason.startswith(f"{CONFIG_CHECK}: relay config signature does not match")
    _write(config_file.path, _text(smtp_port=2526), "AAAA")  # another attempt, still refused
    await asyncio.sleep(POLL_SECONDS * 5)
    assert not waiting.done() and len(refused) == 1
    _write(config_file.path, text, signer.sign(text))  # the operator put its own back
    config = await asyncio.wait_for(waiting, timeout=5)
    assert config.smtp_port == 25
    assert health.readiness() == []
