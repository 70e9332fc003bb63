"""Issue 22 finding 2 on a real API server: a pool's private CA from a ConfigMap.

A missing ConfigMap stalls the pool with a reason naming it (rather than a
relay pod stuck mounting it); creating it is enough, no edit needed: the
relays get it mounted read-only and the relay config carries its path; a new
bundle rolls the relays (the pod template's reference hash changes).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from mailpipe.contracts.config import parse_config

from .conftest import OperatorProcess, get, kubectl, pool_manifest, wait_for, wait_pool_ready
from .test_pool_status import DEPLOYMENT, STATUS_SECONDS, _apply_pool, _wait_ready

pytestmark = [pytest.mark.operator, pytest.mark.security]

BUNDLE = "private-ca"
SECRETS_HASH = "mailpipe.io/secrets-hash"


def _config_map(namespace: str, pem: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": BUNDLE, "namespace": namespace},
            "data": {"bundle.pem": pem},
        }
    )


def _template_hash(env: dict[str, str], namespace: str) -> str:
    dep = get(env, "deployment", DEPLOYMENT, namespace) or {}
    annotations = dep.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations")
    return str((annotations or {}).get(SECRETS_HASH, ""))


def test_a_ca_bundle_configmap_is_checked_mounted_and_rolls_the_relays(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    tls = {"mode": "verify", "caBundle": {"configMap": BUNDLE, "key": "bundle.pem"}}
    _apply_pool(cli_env, pool_manifest("news", namespace, kafka_bootstrap, topic_prefix, tls=tls))

    message = _wait_ready(cli_env, namespace, op, "False", "ConfigMapNotFound")
    assert message == f"ConfigMap {BUNDLE} not found (spec.tls.caBundle.configMap)"
    assert get(cli_env, "deployment", DEPLOYMENT, namespace) is None

    applied = kubectl(cli_env, "apply", "-f", "-", stdin=_config_map(namespace, "CA one"))
    assert applied.returncode == 0, applied.stderr
    wait_pool_ready(cli_env, namespace, op)
    pod = (get(cli_env, "deployment", DEPLOYMENT, namespace) or {})["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls-ca")
    assert volume["configMap"]["name"] == BUNDLE
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls-ca")
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/mailpipe/tls-ca", True)
    cm = get(cli_env, "configmap", DEPLOYMENT, namespace) or {}
    config = parse_config(cm["data"]["relay.yaml"])
    assert config.tls.ca_file == "/etc/mailpipe/tls-ca/bundle.pem"

    first = _template_hash(cli_env, namespace)
    assert first
    applied = kubectl(cli_env, "apply", "-f", "-", stdin=_config_map(namespace, "CA two"))
    assert applied.returncode == 0, applied.stderr
    wait_for(
        lambda: _template_hash(cli_env, namespace) not in ("", first),
        STATUS_SECONDS,
        "the relays rolled for the new bundle",
        op,
    )
