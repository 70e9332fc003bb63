"""The kubectl plugin's Kubernetes IO: find a pool's Kafka, annotate, delete, release.

The user names a namespace and a pool; everything else (bootstrap servers,
topic names) is read from the SendingPool (a pool that names no Kafka: from
the chart's operator Deployment, whose environment gives the operator its
default) and named by the operator's own models (`mailpipe.operator.models`,
`mailpipe.operator.pool.topics`), so the plugin and the operator cannot
disagree on a topic. Credentials are kubectl's:
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
from kubernetes.config import ConfigException as ConfigException  # re-exported
from pydantic import ValidationError

from mailpipe.contracts.topics import TopicOwnershipError, Topics
from mailpipe.operator.defaults import PoolDefaults
from mailpipe.operator.models import GROUP, VERSION, SendingPoolSpec
from mailpipe.operator.pool import PoolRef, topics

from .records import UsageError
from .targets import (
    OPERATOR_SELECTOR,
    NamespaceState,
    campaign_missing,
    chart_kafka,
    chart_kafka_forbidden,
    choose_pool,
    invalid_pool,
    operator_kafka,
)

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

    def namespace_state(self, namespace: str) -> NamespaceState:
        """Whether `namespace` exists (UNKNOWN: the user may not read namespaces)."""
        try:
            client.CoreV1Api(self.api).read_namespace(namespace)
        except ApiException as exc:
            if exc.status == 404:
                return NamespaceState.MISSING
            if exc.status in (401, 403):
                return NamespaceState.UNKNOWN
            raise
        return NamespaceState.EXISTS

    def pool_object(self, namespace: str, name: str | None) -> dict[str, Any]:
        """The SendingPool `name` (or the only one in `namespace` when None), as
        the API serves it; UsageError naming what is wrong and what to do."""
        if name is not None:
            got = self.get("sendingpools", namespace, name)
            if got is not None:
                return got
        pools = {p["metadata"]["name"]: p for p in self.objects("sendingpools", namespace)}
        state = NamespaceState.EXISTS if pools else self.namespace_state(namespace)
        return pools[choose_pool(namespace, name, sorted(pools), state)]

    def chart_kafka(self, pool: str, namespace: str) -> str:
        """The chart's kafka.bootstrapServers for a pool that names no Kafka: the
        operator Deployment's environment, which is what the operator uses."""
        try:
            listed = client.AppsV1Api(self.api).list_deployment_for_all_namespaces(
                label_selector=OPERATOR_SELECTOR
            )
        except ApiException as exc:
            if exc.status in (401, 403):
                raise chart_kafka_forbidden(pool, namespace) from exc
            raise
        deployments = [self.api.sanitize_for_serialization(d) for d in listed.items]
        return chart_kafka(pool, namespace, [operator_kafka(d) for d in deployments])

    def pool(self, namespace: str, name: str | None, bootstrap: str | None = None) -> PoolTarget:
        """The SendingPool `name` (or the only one in `namespace` when None) and
        its Kafka: `bootstrap` if given (e.g. from outside the cluster), else
        the pool's own, else the chart's, as the operator would use it."""
        obj = self.pool_object(namespace, name)
        meta = obj["metadata"]
        ns, pool_name = meta["namespace"], meta["name"]
        raw = dict(obj.get("spec") or {})
        own = str((raw.get("kafka") or {}).get("bootstrapServers") or "")
        kafka = bootstrap or own or self.chart_kafka(pool_name, ns)
        try:
            spec = SendingPoolSpec.model_validate(
                raw, context=PoolDefaults(kafka_bootstrap_servers=kafka).context()
            )
            pool_topics = topics(PoolRef(pool_name, ns, meta["uid"]), spec)
        except ValidationError as exc:
            raise invalid_pool(pool_name, ns, exc) from exc
        except TopicOwnershipError as exc:
            raise UsageError(f"sendingpool {pool_name} in namespace {ns}: {exc}") from exc
        return PoolTarget(
            ns, pool_name, bootstrap or spec.kafka.bootstrap_servers, pool_topics, spec, obj
        )

    def pools(self, namespace: str, bootstrap: str | None = None) -> list[PoolTarget]:
        """Every SendingPool of `namespace` as `pool` gives it (none: `pool`'s
        UsageError saying whether the namespace exists)."""
        names = sorted(p["metadata"]["name"] for p in self.objects("sendingpools", namespace))
        if not names:
            return [self.pool(namespace, None, bootstrap)]
        return [self.pool(namespace, name, bootstrap) for name in names]

    def campaign(self, namespace: str, name: str) -> dict[str, Any]:
        """Campaign `name` in `namespace`; UsageError saying what to do if there is none."""
        obj = self.get("campaigns", namespace, name)
        if obj is None:
            raise campaign_missing(namespace, name, self.namespace_state(namespace))
        return obj

    def events_about(self, namespace: str | None, kind: str) -> list[dict[str, Any]]:
        """The Events about objects of `kind` in `namespace` (None: all namespaces)."""
        core = client.CoreV1Api(self.api)
        selector = f"involvedObject.kind={kind}"
        if namespace is None:
            listed = core.list_event_for_all_namespaces(field_selector=selector)
        else:
            listed = core.list_namespaced_event(namespace, field_selector=selector)
        return [self.api.sanitize_for_serialization(e) for e in listed.items]

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
