"""Issue 17, installed: the chart's operator signs the relay configs it writes with the key
the chart made in the release namespace, and an upgrade keeps that key (relays do not roll)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mailpipe.contracts.signing import PUBLIC_KEY_ENV, ConfigSigner, ConfigVerifier, trusted_config
from mailpipe.devstack import harness
from mailpipe.devstack.harness import kubectl
from mailpipe.devstack.stack import StackState
from mailpipe.operator.config_signing import SIGNATURE_KEY
from mailpipe.operator.pool import CONFIG_KEY
from tests.conftest import wait_for
from tests.helm.kubelet import Kubelet
from tests.helm.test_rbac import CHART, helm, install, namespaces, release
from tests.operator.integration.conftest import pool_manifest

# The installed operator watches every namespace: the test runs alone.
pytestmark = [pytest.mark.operator, pytest.mark.security, pytest.mark.exclusive]

__all__ = ["namespaces", "release"]  # fixtures, shared with test_rbac

SECRET = "rel-mailpipe-config-signing"
RELAYS_SECONDS = 90


def _key(env: dict[str, str], namespace: str) -> str:
    secret = harness.get_object(env, "secret", SECRET, namespace) or {}
    return str(secret["data"]["ed25519.pem"])


def test_the_installed_operator_signs_relay_configs_with_the_release_key(
    cli_env: dict[str, str],
    namespace: str,
    namespaces: tuple[str, str],
    release: None,
    stack_state: StackState,
    tmp_path: Path,
) -> None:
    team_a, _ = namespaces
    bootstrap = stack_state.kafka_bootstrap
    install(
        cli_env,
        namespace,
        f"rbac.tenantNamespaces={{{team_a}}}",
        f"kafka.bootstrapServers={bootstrap}",
        "policy.admission=false",
    )
    pem = _key(cli_env, namespace)
    signer = ConfigSigner.from_pem(base64.b64decode(pem))
    kubelet = Kubelet(cli_env, Path(stack_state.kubeconfig), tmp_path)
    try:
        operator = kubelet.run_operator("rel", namespace)
        manifest = pool_manifest("news", team_a, bootstrap, f"mailpipe.{team_a}.news")
        harness.kubectl_ok(cli_env, "apply", "-f", "-", stdin=manifest)
        wait_for(
            lambda: harness.get_object(cli_env, "deploy", "mailpipe-relay-news", team_a),
            RELAYS_SECONDS,
            "the relay Deployment",
            operator,
        )
        deployment = harness.get_object(cli_env, "deploy", "mailpipe-relay-news", team_a) or {}
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[PUBLIC_KEY_ENV] == signer.public_key
        data = (harness.get_object(cli_env, "cm", "mailpipe-relay-news", team_a) or {})["data"]
        verifier = ConfigVerifier.from_base64(env[PUBLIC_KEY_ENV], f"{team_a}/news")
        trusted_config(data[CONFIG_KEY], data[SIGNATURE_KEY], verifier)
    finally:
        kubectl(cli_env, "delete", "sp", "news", "-n", team_a, "--wait=false")
        kubelet.stop()

    upgraded = helm(cli_env, "upgrade", "rel", str(CHART), "-n", namespace, "--reuse-values")
    assert upgraded.returncode == 0, upgraded.stderr
    assert _key(cli_env, namespace) == pem, "an upgrade made a new key: every relay would roll"
