"""The API calls of a pool's reconcile (`handlers.pool._reconcile_blocking`), counted
against an in-memory API server: when 1,000 pools are created together, each call
of their first reconcile waits behind every other pool's on the API server."""

from __future__ import annotations

import copy
from typing import Any, cast

from mailpipe.operator import kube_io
from mailpipe.operator.cluster_policy import ClusterPolicy
from mailpipe.operator.handlers import pool
from mailpipe.operator.kafka_io import Admins
from mailpipe.operator.kube_io import ApiException

KAFKA = "kafka.test:9092"
POLICY = ClusterPolicy(allowed_bootstrap_servers=[KAFKA])
SPEC = {
    "replicas": 0,
    "kafka": {"bootstrapServers": KAFKA},
    "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
}


class _Served:
    """What the client returns for a read: attribute access to metadata, like its models."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.metadata = type("Meta", (), {"annotations": obj["metadata"].get("annotations")})


class _Api:
    @staticmethod
    def sanitize_for_serialization(answer: Any) -> Any:
        return copy.deepcopy(answer.obj if isinstance(answer, _Served) else answer)


class MemoryKube(kube_io.Kube):
    """Children kept in a dict, every child call and status write counted."""

    def __init__(self, pool_obj: dict[str, Any]) -> None:
        super().__init__(api=_Api())  # type: ignore[arg-type]
        self.pool = pool_obj
        self.children: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []

    def _call(self, kind: str, verb: str, *args: Any, **kwargs: Any) -> Any:
        name = args[0]
        self.calls.append(("dry-run" if kwargs.get("dry_run") else verb, kind, name))
        key = (kind, name)
        if verb == "read":
            if key not in self.children:
                raise ApiException(status=404)
            return _Served(self.children[key])
        if verb == "delete":
            if self.children.pop(key, None) is None:
                raise ApiException(status=404)
            return None
        if verb == "patch":
            if kwargs.get("dry_run"):
                return _Served(args[2])
            self.children[key] = copy.deepcopy(args[2])
            return _Served(args[2])
        raise AssertionError(verb)

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", "SendingPool", name))
        return copy.deepcopy(self.pool)

    def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> None:
        self.calls.append(("patch-status", "SendingPool", name))
        self.pool.setdefault("status", {}).update(copy.deepcopy(status))


class Topics:
    def ensure_topics(self, bootstrap: str, names: Any, *_: Any) -> list[str]:
        return list(names)


def _reconcile(kube: MemoryKube) -> pool._Seen | None:
    return pool._reconcile_blocking(kube, "ns", "news", True, POLICY, cast(Admins, Topics()), {})


def _new_pool() -> dict[str, Any]:
    return {
        "metadata": {"name": "news", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": copy.deepcopy(SPEC),
    }


def test_a_new_pools_children_are_written_without_reads_or_deletes_first() -> None:
    kube = MemoryKube(_new_pool())
    seen = _reconcile(kube)
    assert seen is not None and seen.outcome.kafka is None
    verbs = [verb for verb, kind, _ in kube.calls if kind != "SendingPool"]
    # the relay Deployment looked for once; then ConfigMap, Deployment, Service, PDB
    assert verbs == ["read", "patch", "patch", "patch", "patch"]
    assert {k for k, _ in kube.children} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    ready = next(c for c in kube.pool["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"  # replicas 0: Ready once reconciled, as before


def test_a_reconciled_pool_still_deletes_the_endpoint_children_its_spec_dropped() -> None:
    kube = MemoryKube(_new_pool())
    _reconcile(kube)
    ref = pool.PoolRef("news", "ns", "u1")
    # an endpoint child a former spec made (its field was removed since)
    kube.children[("Service", ref.feedback_name)] = {"metadata": {"name": ref.feedback_name}}
    kube.pool["metadata"]["generation"] = 2
    kube.calls.clear()
    _reconcile(kube)
    assert ("delete", "Service", ref.feedback_name) in kube.calls
    assert ("Service", ref.feedback_name) not in kube.children
    # unchanged children are read and left as they are, not written again
    assert not [c for c in kube.calls if c[0] == "patch"]


def test_a_pool_whose_relay_deployment_went_reads_its_other_children_first() -> None:
    kube = MemoryKube(_new_pool())
    _reconcile(kube)
    ref = pool.PoolRef("news", "ns", "u1")
    del kube.children[("Deployment", ref.child_name)]  # deleted by hand
    kube.calls.clear()
    _reconcile(kube)
    patched = [kind for verb, kind, _ in kube.calls if verb == "patch"]
    assert patched == ["Deployment"]  # only what is missing is written
