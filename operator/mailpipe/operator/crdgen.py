"""Generate the CustomResourceDefinitions in `crds/` from the typed models.

The models are the operator's spec types (`models`) and the delivery policy
types they share with the relay config (`mailpipe.contracts.policy`), so a
constraint added there is published to the apiserver by the next generation.

Pydantic's JSON Schema is close to what Kubernetes wants but not the same: a
structural schema has no `$ref`, no `anyOf` for optional fields, no
`additionalProperties: false` (unknown fields are pruned instead), and
OpenAPI 3.0's boolean `exclusiveMinimum`. This module does that translation,
adds printer columns, short names and the category, and writes YAML.
`python -m mailpipe.operator.crdgen` rewrites `crds/`; a test fails when the
committed files differ from what the models generate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .models import GROUP, VERSION, CampaignSpec, SendingPoolSpec

_DROP = frozenset({"title"})


class _NoAliases(yaml.SafeDumper):
    """A schema shared by two fields (one $def) is written out twice, not as a
    YAML anchor and alias: readers of a CRD should not need to resolve them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(crd: dict[str, Any]) -> str:
    return yaml.dump(crd, Dumper=_NoAliases, sort_keys=False, width=120)


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Translate one pydantic JSON Schema node into a Kubernetes structural schema."""
    defs = defs if defs is not None else schema.get("$defs", {})
    node = dict(schema)
    node.pop("$defs", None)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[1]]
        merged = {**target, **node}  # local description/default win over the definition's
        return structural(merged, defs)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"unions are not structural: {branches}")
        return structural({**branches[0], **node}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {k: structural(v, defs) for k, v in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = structural(value, defs)
            # `false` is the default behaviour (pruning) and not allowed in CRDs
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def _spec_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = structural(model.model_json_schema(by_alias=True, mode="validation"))
    schema["description"] = " ".join((model.__doc__ or "").split())
    return schema


def _ready_column() -> dict[str, str | int]:
    return {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    }


def crd(
    *,
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    columns: list[dict[str, str | int]],
    status_doc: str,
    scale: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "mailpipe"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["mailpipe"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}, **({"scale": scale} if scale else {})},
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"{kind} of mailpipe.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                "metadata": {"type": "object"},
                                "spec": _spec_schema(spec),
                                "status": {
                                    "type": "object",
                                    "description": status_doc,
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def sendingpool_crd() -> dict[str, Any]:
    return crd(
        kind="SendingPool",
        plural="sendingpools",
        short="sp",
        spec=SendingPoolSpec,
        columns=[
            _ready_column(),
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            # what runs: 0 for a pool the cluster policy stopped, whatever spec.replicas says
            {"name": "Available", "type": "integer", "jsonPath": ".status.relays.available"},
            {"name": "IPs", "type": "integer", "jsonPath": ".status.ipCount"},
            {"name": "Warmup", "type": "string", "jsonPath": ".status.warmupSummary"},
            # sites a reply rule suspended or slowed for an IP (`-o wide`: usually empty)
            {
                "name": "Sites",
                "type": "string",
                "priority": 1,
                "jsonPath": ".status.siteActionsSummary",
            },
            # why not Ready (PolicyViolation, SecretNotFound, RelaysUnavailable, ...)
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            },
            # the endpoints apart from Ready (EndpointsAvailable, SubmissionUnavailable, ...)
            {
                "name": "Endpoints",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="EndpointsReady")].reason',
            },
        ],
        status_doc=(
            "Observed state: conditions (Ready, Reconciling, Stalled, RelaysAvailable, "
            "TopicsReady, EndpointsReady) with observedGeneration, relays (desired, available), "
            "endpoints (feedback, unsubscribe, submission: desired, available), secretsHash, "
            "topics, configHash, ipCount, warmupSummary and per-IP warm-up "
            "(day, capToday, sentToday); siteActions (sites a reply rule suspended or slowed "
            "for an egress IP: site, ip, action, until, after which reply) and "
            "siteActionsSummary; tls (recipients tried, verified, in clear, and the "
            "busiest sites with their MTA-STS policy, last protocol and last failure); "
            "replicas and selector of the relay pods (scale)."
        ),
        # `kubectl scale sp <pool> --replicas=N` (and an HPA): the operator
        # reports the relay Deployment's replicas and pod selector in status.
        scale={
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    )


def campaign_crd() -> dict[str, Any]:
    return crd(
        kind="Campaign",
        plural="campaigns",
        short="camp",
        spec=CampaignSpec,
        columns=[
            {"name": "Pool", "type": "string", "jsonPath": ".spec.poolRef"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Delivered", "type": "integer", "jsonPath": ".status.counts.delivered"},
            {"name": "Bounced", "type": "integer", "jsonPath": ".status.counts.bounced"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
        ],
        status_doc=(
            "Observed state: phase (Pending, Scheduled, Sending, Paused, Completed, Failed), "
            "counts (total, enqueued, delivered, deferred, bounced, complained, suppressed, "
            "failed), bouncedByClass and deferredByClass (recipients per bounce class, "
            "e.g. invalid_recipient, policy_related), "
            "progress, fan-out checkpoint, conditions, startedAt and completedAt."
        ),
    )


def render() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    header = (
        "# Generated by `python -m mailpipe.operator.crdgen` from the operator's models."
        " Do not edit.\n"
    )
    return {
        "sendingpools.yaml": header + _dump(sendingpool_crd()),
        "campaigns.yaml": header + _dump(campaign_crd()),
    }


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0] if argv else "crds")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
