"""The kubectl plugin's Kubernetes IO: find a pool's Kafka, annotate, delete, release.

The user names a namespace and a pool; everything else (bootstrap servers,
topic names) is read from the SendingPool and named by the operator's own
models (`mailpipe.operator.models`, `mailpipe.operator.pool.topics`), so the
plugin and the operator cannot disagree on a topic. Credentials are kubectl's:
the kubeconfig (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`) and context,
or the pod's ServiceAccount when run in the cluster (the chart's uninstall hook).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException as ApiException  # re-exported

from mailpipe.contracts.topics import Topics
from mailpipe.operator.models import GROUP, VERSION, SendingPoolSpec
from mailpipe.operator.pool import PoolRef, topics

from .records import UsageError

FINALIZER = f"{GROUP}/finalizer"  # the operator's (handlers: settings.persistence.finalizer)
UNPAUSE_ANNOTATION = f"{GROUP}/unpause-ip"  # read by the operator: lifts a warm-up pause
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
POLL_SECONDS = 1.0  # how often a waiting uninstall looks again; finalizers take seconds
PLURALS = ("campaigns", "sendingpools")  # deletion order: campaigns need their pool to cancel


@dataclass(frozen=True)
class PoolTarget:
    """A SendingPool as the plugin needs it: where its Kafka is and its topics."""

    namespace: str
    name: str
    bootstrap: str
    topics: Topics
    spec: SendingPoolSpec
    obj: dict[str, Any]


class Cluster:
    """One API client and the namespace commands default to (kubectl's rules)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        try:
            self.api = config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            if context:
                contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
                active = next(c for c in contexts if c["name"] == context)
            self.namespace = active.get("context", {}).get("namespace") or "default"
        except config.ConfigException:
            if kubeconfig or context:
                raise
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            self.api = client.ApiClient()
            self.namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        self.custom = client.CustomObjectsApi(self.api)

    # -- reading ------------------------------------------------------------------

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: Any = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(obj)

    def objects(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of `plural` in `namespace` (None: all namespaces)."""
        if namespace is None:
            listed: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        else:
            listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        items: list[dict[str, Any]] = listed["items"]
        return items

    def pool(self, namespace: str, name: str | None, bootstrap: str | None = None) -> PoolTarget:
        """The SendingPool `name` (or the only one in `namespace` when None);
        `bootstrap` overrides its Kafka address (e.g. from outside the cluster)."""
        if name is None:
            pools = self.objects("sendingpools", namespace)
            if len(pools) != 1:
                found = ", ".join(p["metadata"]["name"] for p in pools) or "none"
                raise UsageError(f"name the pool with --pool: namespace {namespace} has {found}")
            obj = pools[0]
        else:
            got = self.get("sendingpools", namespace, name)
            if got is None:
                raise UsageError(f'sendingpool "{name}" not found in namespace {namespace}')
            obj = got
        meta = obj["metadata"]
        spec = SendingPoolSpec.model_validate(obj["spec"])
        ref = PoolRef(meta["name"], meta["namespace"], meta["uid"])
        return PoolTarget(
            meta["namespace"],
            meta["name"],
            bootstrap or spec.kafka.bootstrap_servers,
            topics(ref, spec),
            spec,
            obj,
        )

    def campaign_pool(self, namespace: str, campaign: str) -> str:
        """The poolRef of Campaign `campaign` in `namespace`."""
        obj = self.get("campaigns", namespace, campaign)
        if obj is None:
            raise UsageError(f'campaign "{campaign}" not found in namespace {namespace}')
        return str(obj["spec"]["poolRef"])

    # -- writing ------------------------------------------------------------------

    def annotate(self, plural: str, namespace: str, name: str, key: str, value: str) -> None:
        """`kubectl annotate <plural> <name> key=value --overwrite`."""
        body = {"metadata": {"annotations": {key: value}}}
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, body)

    def delete(self, plural: str, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:  # already gone
                raise

    def release(self, plural: str, obj: dict[str, Any]) -> bool:
        """Remove the operator's finalizer from `obj` (the escape hatch); True if removed."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return False
        kept = [f for f in finalizers if f != FINALIZER]
        # resourceVersion: a concurrent change fails (409) instead of being overwritten
        body = {
            "metadata": {"finalizers": kept or None, "resourceVersion": meta["resourceVersion"]}
        }
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], plural, meta["name"], body
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def wait_gone(
        self, plural: str, namespace: str | None, deadline: float, now: Callable[[], float]
    ) -> list[dict[str, Any]]:
        """Until no object of `plural` is left or `deadline`; returns those left."""
        while True:
            left = self.objects(plural, namespace)
            if not left or now() >= deadline:
                return left
            time.sleep(POLL_SECONDS)
