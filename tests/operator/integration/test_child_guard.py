"""Issue 17: the operator owns its relay ConfigMap, Service and PDB, and signs the config.

Tried as a hostile tenant would: a user bound to Kubernetes' built-in `edit`
role in the pool's namespace (who may write ConfigMaps, Services and PDBs
there) patches the relay ConfigMap to add a route, adds a key, deletes the
Service and loosens the PDB. The operator puts each back within seconds and
says so in a Warning Event on the pool; the config it writes carries a
signature the relays check with the public key in their pod template.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mailpipe.contracts.signing import (
    DIGEST_ENV,
    PUBLIC_KEY_ENV,
    ConfigSigner,
    ConfigVerifier,
    trusted_config,
)
from mailpipe.operator.config_signing import SIGNATURE_KEY, SIGNING_KEY_ENV
from mailpipe.operator.pool import CONFIG_KEY

from .conftest import OperatorProcess, get, kubectl, ready_pool, wait_for

pytestmark = [pytest.mark.operator, pytest.mark.security]

CHILD = "mailpipe-relay-news"
TENANT = "tenant-editor"  # a user bound to the built-in `edit` role in the namespace
REVERT_SECONDS = 20  # the guard looks every 3 s; generous for a loaded machine


def _as_tenant(env: dict[str, str], namespace: str, *args: str) -> None:
    done = kubectl(env, *args, "-n", namespace, f"--as={TENANT}")
    assert done.returncode == 0, f"the tenant could not {' '.join(args)}: {done.stderr}"


def _warnings(env: dict[str, str], namespace: str) -> list[str]:
    out = kubectl(
        env,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=news,type=Warning,reason=ChildReverted",
        "-o",
        "json",
    )
    return [e["message"] for e in json.loads(out.stdout)["items"]]


def _signing_key(tmp_path: Path) -> tuple[Path, ConfigSigner]:
    signer = ConfigSigner.generate()
    pem = signer.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "signing.pem"
    path.write_bytes(pem)
    return path, signer


def test_a_tenants_edits_of_the_relay_children_are_put_back_with_an_event(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    key_file, signer = _signing_key(tmp_path)
    op = operator_factory(**{SIGNING_KEY_ENV: str(key_file)})
    ready_pool(cli_env, namespace, kafka_bootstrap, topic_prefix, op)
    # `edit` is an aggregated role and the dev stack runs no controller-manager to
    # aggregate it: the rules it would hold are bound from the roles it aggregates.
    for role in ("edit", "system:aggregate-to-edit", "system:aggregate-to-view"):
        bound = kubectl(
            cli_env, "create", "rolebinding", f"tenant-{role.replace(':', '-')}",
            f"--clusterrole={role}", f"--user={TENANT}", "-n", namespace,
        )  # fmt: skip
        assert bound.returncode == 0, bound.stderr

    def data() -> dict[str, str]:
        return dict((get(cli_env, "configmap", CHILD, namespace) or {}).get("data") or {})

    # What the operator wrote is signed, and the relays get the key to check it.
    written = data()
    deployment = get(cli_env, "deployment", CHILD, namespace) or {}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[PUBLIC_KEY_ENV] == signer.public_key
    verifier = ConfigVerifier.from_base64(
        env[PUBLIC_KEY_ENV], env["MAILPIPE_POOL"], env[DIGEST_ENV]
    )
    trusted_config(written[CONFIG_KEY], written[SIGNATURE_KEY], verifier)

    # The finding: a route the cluster policy forbids, written into the ConfigMap.
    tampered = written[CONFIG_KEY].replace(
        "routes: {}", "routes:\n  forbidden.test:\n  - host: 10.0.0.9\n    port: 25\n"
    )
    assert tampered != written[CONFIG_KEY]
    patch = {"data": {CONFIG_KEY: tampered, "extra": "x"}}
    _as_tenant(
        cli_env, namespace, "patch", "configmap", CHILD, "--type=merge", "-p", json.dumps(patch)
    )
    patched = time.monotonic()
    wait_for(lambda: data() == written, REVERT_SECONDS, "the ConfigMap put back", op)
    print(f"ConfigMap put back {time.monotonic() - patched:.1f} s after the tenant's patch")
    wait_for(
        lambda: any(f"ConfigMap/{CHILD} (data.extra, data.relay.yaml)" in m
                    for m in _warnings(cli_env, namespace)),
        REVERT_SECONDS,
        "a Warning Event naming the ConfigMap's changed keys",
        op,
    )  # fmt: skip

    # The other children: a deleted Service and a loosened PDB.
    _as_tenant(cli_env, namespace, "delete", "service", CHILD)
    loosen = {"spec": {"maxUnavailable": 5}}
    _as_tenant(cli_env, namespace, "patch", "pdb", CHILD, "--type=merge", "-p", json.dumps(loosen))

    def pdb() -> Any:
        return ((get(cli_env, "pdb", CHILD, namespace) or {}).get("spec") or {}).get(
            "maxUnavailable"
        )

    wait_for(
        lambda: get(cli_env, "service", CHILD, namespace) is not None and pdb() == 1,
        REVERT_SECONDS,
        "the Service re-created and the PDB put back",
        op,
    )
    wait_for(
        lambda: any(f"Service/{CHILD} (deleted)" in m for m in _warnings(cli_env, namespace))
        and any(f"PodDisruptionBudget/{CHILD} (spec.maxUnavailable)" in m
                for m in _warnings(cli_env, namespace)),
        REVERT_SECONDS,
        "Warning Events naming the Service and the PDB",
        op,
    )  # fmt: skip
    assert data() == written, "the ConfigMap stays as the operator wrote it"
    # Nothing but the tenant's changes was ever put back (no drift from the apiserver's
    # defaults): each Event names one of them.
    expected = (
        f"ConfigMap/{CHILD} (data.extra, data.relay.yaml)",
        f"Service/{CHILD} (deleted)",
        f"PodDisruptionBudget/{CHILD} (spec.maxUnavailable)",
    )
    for message in _warnings(cli_env, namespace):
        for reverted in message.split(": ", 1)[1].split("; "):
            assert reverted in expected, message
