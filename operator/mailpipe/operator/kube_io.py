"""The operator's Kubernetes writes: server-side apply of children, cleanup, status.

The operator's only module that imports the Kubernetes client (`.importlinter`,
"kubernetes-only-at-its-boundary"): handlers call these functions and catch
`ApiException` from here, so a change of client touches one file.

Children are applied with server-side apply (field manager `mailpipe-operator`,
forced), so fields removed from the rendered object are removed from the
cluster too; an unchanged object (same spec-hash annotation) is not written
at all. Drift is judged against the object as the API server stores it
(`server_view`, a dry-run apply), never against the rendered one. Deletion
is explicit: owner references make a real cluster's garbage collector remove
children, but the operator does not rely on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import (
    ApiException as ApiException,  # re-exported: handlers catch it
)

from mailpipe.contracts.topics import pool_prefix

from .models import GROUP, VERSION
from .pool import SPEC_HASH_ANNOTATION, PoolRef

FIELD_MANAGER = "mailpipe-operator"
SPEC_HASH_CHARS = 16  # 64 bits of SHA-256: a collision would only skip one write
# Connections kept open to the API server: one for each handler thread that may
# call it at once (handlers.BLOCKING_CALL_THREADS). The client's default is five
# per CPU, ten here: with 32 threads calling, 22 connections were dropped after
# each answer and the next call made a new TLS session ("Connection pool is
# full, discarding connection" 190 times a minute while 1,000 pools were created).
API_CONNECTIONS = 32


def _hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:SPEC_HASH_CHARS]


_KINDS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        # kind -> (API class, method suffix)
        "ConfigMap": ("CoreV1Api", "namespaced_config_map"),
        "Service": ("CoreV1Api", "namespaced_service"),
        "Deployment": ("AppsV1Api", "namespaced_deployment"),
        "PodDisruptionBudget": ("PolicyV1Api", "namespaced_pod_disruption_budget"),
    }
)


def spec_digest(obj: dict[str, Any]) -> str:
    """The spec-hash annotation `apply` puts on `obj`: what it was rendered from."""
    return _hash(json.loads(json.dumps(obj)))


def _annotated(obj: dict[str, Any]) -> dict[str, Any]:
    desired: dict[str, Any] = json.loads(json.dumps(obj))
    digest = _hash(desired)  # of the rendered object, before the annotation is added
    desired["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = digest
    return desired


@dataclass
class ChildrenDeleted:
    """What `Kube.delete_children` did: deleted objects, and kinds it may not delete."""

    deleted: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)


class Kube:
    """The operator's Kubernetes API: one client (in-cluster ServiceAccount, else
    KUBECONFIG), made on first use and shared by every handler thread (its
    urllib3 connection pool is thread-safe). One per operator (`OperatorState.kube`),
    passed in, so two operators in one process each have their own."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self._api = api

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            cfg = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            cfg.connection_pool_maxsize = API_CONNECTIONS
            self._api = client.ApiClient(cfg)
        return self._api

    def _call(self, kind: str, verb: str, *args: Any, **kwargs: Any) -> Any:
        cls_name, suffix = _KINDS[kind]
        target = getattr(client, cls_name)(self.api)
        return getattr(target, f"{verb}_{suffix}")(*args, **kwargs)

    def _patch_applied(self, obj: dict[str, Any], **options: Any) -> dict[str, Any]:
        kind, name, ns = obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]
        answer = self._call(
            kind,
            "patch",
            name,
            ns,
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
            **options,
        )
        out: dict[str, Any] = self.api.sanitize_for_serialization(answer)  # type: ignore[no-untyped-call]
        return out

    def apply(
        self, obj: dict[str, Any], force: bool = False, absent: bool = False
    ) -> dict[str, Any] | None:
        """Server-side apply `obj` unless the live one has the same spec hash.

        Returns the object as the API server stored it (with its defaults: what a
        later read of it is compared with, `server_view`), or None when nothing
        was written. `force`: apply even then (the live object drifted: a manual
        scale or edit). `absent`: the caller knows there is no live one (a new
        pool's children), so it is written without reading it first; were
        there one, applying it again would change nothing but its managedFields.
        """
        desired = _annotated(obj)
        digest = desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        kind, name, ns = obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]
        if absent:
            return self._patch_applied(desired)
        try:
            live = self._call(kind, "read", name, ns)
            annotations = live.metadata.annotations or {}
            if annotations.get(SPEC_HASH_ANNOTATION) == digest and not force:
                return None
        except ApiException as exc:
            if exc.status != 404:
                raise
        return self._patch_applied(desired)

    def server_view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` as the API server would store it if applied now: defaulted, with
        fields its encoding omits (a `false` it never writes out) left out and
        quantities canonical. A dry run: nothing is written.

        Drift is judged against this, not against the rendered object, which the
        API server never returns as rendered: comparing with that saw a change on
        every Deployment event and re-applied (and announced) it each time."""
        return self._patch_applied(_annotated(obj), dry_run="All")

    def delete_children(self, ref: PoolRef) -> ChildrenDeleted:
        """Delete the pool's children; a kind the operator may not delete in the
        pool's namespace (403: the namespace is not onboarded, or no longer) is
        reported, not raised: the operator cannot have made children there, or
        their ownerReferences hand them to the garbage collector with the pool."""
        out = ChildrenDeleted()
        relay = [(k, ref.child_name) for k in ("Deployment", "Service", "PodDisruptionBudget")]
        # the endpoints before the ConfigMap they mount
        for kind, name in [*relay, *ref.endpoint_children(), ("ConfigMap", ref.child_name)]:
            try:
                if self.delete_child(kind, name, ref.namespace):
                    out.deleted.append(f"{kind}/{name}")
            except ApiException as exc:
                if exc.status != 403:
                    raise
                if kind not in out.forbidden:
                    out.forbidden.append(kind)
        return out

    def delete_child(self, kind: str, name: str, namespace: str) -> bool:
        """Delete one child by name; False when it was not there."""
        try:
            self._call(kind, "delete", name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name
            )
            result: dict[str, Any] = dict(obj)  # type: ignore[call-overload]
            return result
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> None:
        """Merge `status` in; with `resource_version`, only if the object is still at
        that version (else ApiException 409: someone wrote in between)."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, body
        )

    def json_patch_status(
        self, plural: str, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> None:
        """A JSON patch (RFC 6902) of a custom object's status: its `test` ops make a
        write conditional, which a merge patch cannot. Blocking; raises ApiException."""
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            ops,
            _content_type="application/json-patch+json",
        )

    def read_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.read_configmap_versioned(namespace, name)[0]

    def read_configmap_versioned(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str] | None, str]:
        """A ConfigMap's data (as `read_configmap`) and its resourceVersion, from one
        read: what was checked is known to be that version. (None, "") when absent."""
        try:
            cm = client.CoreV1Api(self.api).read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None, ""
            raise
        data = dict(cm.data or {})
        # binaryData arrives base64-encoded; large audiences live there gzipped
        # because a ConfigMap holds at most 1 MiB.
        for key, b64 in (cm.binary_data or {}).items():
            data[key] = base64.b64decode(b64).decode("latin-1")
        return data, str(cm.metadata.resource_version) if cm.metadata else ""

    def configmap_version(self, namespace: str, name: str) -> str:
        """The ConfigMap's resourceVersion, "" when it does not exist (changes on every edit)."""
        try:
            cm = client.CoreV1Api(self.api).read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return ""
            raise
        return str(cm.metadata.resource_version) if cm.metadata else ""

    def read_deployment(self, ref: PoolRef) -> dict[str, Any] | None:
        """The pool's relay Deployment as JSON, or None."""
        try:
            dep = self._call("Deployment", "read", ref.child_name, ref.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        out: dict[str, Any] = self.api.sanitize_for_serialization(dep)  # type: ignore[no-untyped-call]
        return out

    def list_relay_pods(self, ref: PoolRef) -> list[dict[str, Any]]:
        """The pool's relay pods (those its Deployment selects), as JSON.

        Read as raw JSON, not as the client's models: only their status is
        wanted, and a model per container status is slow to build. Raises
        ApiException (403 where the chart grants no `list pods`)."""
        selector = ",".join(
            f"{k}={v}"
            for k, v in ref.labels().items()
            if k in ("mailpipe.io/pool", "app.kubernetes.io/component")
        )
        # _preload_content=False: the urllib3 response, not a V1PodList
        answer: Any = client.CoreV1Api(self.api).list_namespaced_pod(
            ref.namespace, label_selector=selector, _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(answer.data)["items"]
        return items

    def scale_deployment(self, ref: PoolRef, replicas: int) -> None:
        """Set the relay Deployment's spec.replicas, leaving the rest of it as it is.

        A merge patch of that one field, not an apply: applying a partial object
        would drop every field the operator applied before (server-side apply
        removes what a manager stops applying). The next full apply takes the
        field back (forced)."""
        self._call(
            "Deployment",
            "patch",
            ref.child_name,
            ref.namespace,
            {"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )

    def list_pools(self, namespace: str) -> list[dict[str, Any]]:
        """Every SendingPool of `namespace`, as JSON."""
        listed: Any = client.CustomObjectsApi(self.api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, "sendingpools"
        )
        return list(listed["items"])

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data (base64 values, as stored), or None when it does not exist."""
        try:
            secret = client.CoreV1Api(self.api).read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: str(v) for k, v in (secret.data or {}).items()}

    def pools_with_prefix(
        self, bootstrap: str, prefix: str, namespace: str, except_uid: str
    ) -> list[str]:
        """'namespace/name' of the other SendingPools whose topics are `prefix`.* on
        `bootstrap`: a deleted pool's topics are theirs too and must stay. Listed
        cluster-wide, or in the namespaces the operator may read (namespaced RBAC
        answers 403 to a cluster-wide list: then `namespace`, the deleted pool's)."""
        api_ = client.CustomObjectsApi(self.api)
        listed: Any
        try:
            listed = api_.list_cluster_custom_object(GROUP, VERSION, "sendingpools")
        except ApiException as exc:
            if exc.status != 403:
                raise
            listed = api_.list_namespaced_custom_object(GROUP, VERSION, namespace, "sendingpools")
        out = []
        for obj in listed["items"]:
            meta, kafka = obj["metadata"], obj.get("spec", {}).get("kafka", {})
            theirs = kafka.get("topicPrefix") or pool_prefix(meta["namespace"], meta["name"])
            same = theirs == prefix and kafka.get("bootstrapServers") == bootstrap
            if same and meta["uid"] != except_uid:
                out.append(f"{meta['namespace']}/{meta['name']}")
        return out

    def read_child(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """A child (ConfigMap, Service, PDB, Deployment) as JSON, or None. Read by name:
        the operator may `get` its children but never list a namespace's ConfigMaps.

        Raw JSON, not the client's models: the child guard reads every pool's
        children on a timer, and building a model then serialising it back cost
        more CPU than the read itself."""
        try:
            # _preload_content=False: the urllib3 response, not a V1ConfigMap
            answer: Any = self._call(kind, "read", name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        out: dict[str, Any] = json.loads(answer.data)
        return out

    def remove_data_keys(self, name: str, namespace: str, keys: list[str]) -> None:
        """Remove `keys` from a ConfigMap's data and binaryData (a merge patch).

        Server-side apply removes only fields its own manager stops applying: a key
        someone else added stays through any apply of ours, so it is removed here."""
        body = {"data": dict.fromkeys(keys), "binaryData": dict.fromkeys(keys)}
        self._call(
            "ConfigMap",
            "patch",
            name,
            namespace,
            body,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )
