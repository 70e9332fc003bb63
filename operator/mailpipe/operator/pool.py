"""Pure builders: a SendingPool spec -> the relay config and its Kubernetes objects.

Each `build_*` takes the typed spec and returns a plain dict; no API calls, no
clock, so every object is table-tested. The ConfigMap carries the relay config
(`mailpipe.contracts.config.RelayConfig`, dumped canonically) and its hash; the
Deployment's pod template carries the same hash, so editing the pool rolls the
relays exactly when their config changed. It also carries a hash of the data
of the Secrets the relays mount (`SECRETS_HASH_ANNOTATION`), so rotating a
DKIM key or the Kafka credentials in their Secret rolls the relays too.

The relays' Kafka login (`spec.kafka.credentialsSecretRef`) flows as
Secret -> read-only volume at `CREDENTIALS_DIR` -> file paths in the relay
config (`relay_kafka_security`) -> `kafkakit.client_options` in the relay,
which reads the files: the ConfigMap never holds a credential.

`drifted` compares a rendered object with the live one, so a manual
`kubectl scale` or edit of a child is noticed and applied back.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mailpipe.contracts import config as relay_config
from mailpipe.contracts.egress import egress_label
from mailpipe.contracts.policy import RetrySettings
from mailpipe.contracts.submission_users import USERS_KEY
from mailpipe.contracts.topics import Topics, pool_group

from .models import API_VERSION, KafkaSpec, SendingPoolSpec
from .validation import TLS_CERT_KEY, TLS_KEY_KEY, submission_secrets

CONFIG_KEY = "relay.yaml"
CONFIG_DIR = "/etc/mailpipe"
DKIM_DIR = "/etc/mailpipe/dkim"
FEEDBACK_KEYS_DIR = "/etc/mailpipe/feedback-keys"  # the pool's token key Secret, read-only
UNSUBSCRIBE_KEYS_DIR = "/etc/mailpipe/unsubscribe-keys"  # the unsubscribe URLs' signing keys
TLS_CA_DIR = "/etc/mailpipe/tls-ca"  # the pool's CA bundle (Secret or ConfigMap), read-only
CREDENTIALS_DIR = "/etc/mailpipe/kafka"  # the pool's Kafka credentials Secret, read-only
# Keys of that Secret (documented in the CRD and README): SASL login, the
# broker's CA, a client certificate and its key.
USERNAME_KEY, PASSWORD_KEY = "username", "password"
CA_KEY, CERT_KEY, KEY_KEY = "ca.crt", "tls.crt", "tls.key"
HASH_ANNOTATION = "mailpipe.io/config-hash"
SPEC_HASH_ANNOTATION = "mailpipe.io/spec-hash"
MANAGED_BY = "mailpipe-operator"
SECRETS_HASH_ANNOTATION = "mailpipe.io/secrets-hash"


# Pod Security "restricted" for the relay: binding an egress IP that is on the
# pod's interfaces (or the node's, under hostNetwork) is an ordinary bind() of
# a local address to an ephemeral port, which needs no capability at all; only
# hostNetwork itself (allowed per namespace by the cluster policy) departs
# from the profile. Writes go nowhere but sockets, so the root can be read-only.
RELAY_UID = 10001  # the image's non-root user (Dockerfile: USER 10001)


def pod_security() -> dict[str, Any]:
    """The relay pod's securityContext; a new dict per Deployment built, so no
    two built objects share one (a caller may edit what it was given)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RELAY_UID,
        "runAsGroup": RELAY_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    """The relay container's securityContext (restricted profile); a new dict each call."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@dataclass(frozen=True)
class PoolRef:
    name: str
    namespace: str
    uid: str

    @property
    def child_name(self) -> str:
        return f"mailpipe-relay-{self.name}"

    @property
    def feedback_name(self) -> str:
        """The feedback receiver's Deployment and Service."""
        return f"mailpipe-feedback-{self.name}"

    @property
    def unsubscribe_name(self) -> str:
        """The one-click endpoint's ConfigMap, Deployment and Service."""
        return f"mailpipe-unsubscribe-{self.name}"

    @property
    def submission_name(self) -> str:
        """The submission endpoint's ConfigMap, Deployment and Service."""
        return f"mailpipe-submission-{self.name}"

    def labels(self, component: str = "relay") -> dict[str, str]:
        return {
            "app.kubernetes.io/name": f"mailpipe-{component}",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "mailpipe.io/pool": self.name,
        }

    def endpoint_children(self) -> list[tuple[str, str]]:
        """(kind, name) of every child an optional spec field may render: what a
        reconcile deletes when the field is gone, and the pool's deletion too."""
        return [
            ("Deployment", self.feedback_name),
            ("Service", self.feedback_name),
            ("Deployment", self.unsubscribe_name),
            ("Service", self.unsubscribe_name),
            ("ConfigMap", self.unsubscribe_name),
            ("Deployment", self.submission_name),
            ("Service", self.submission_name),
            ("ConfigMap", self.submission_name),
        ]

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "SendingPool",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(
        self,
        annotations: dict[str, str] | None = None,
        *,
        name: str | None = None,
        component: str = "relay",
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name or self.child_name,
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [self.owner_reference()],
        }
        if annotations:
            meta["annotations"] = annotations
        return meta


def topics(ref: PoolRef, spec: SendingPoolSpec) -> Topics:
    """The pool's topics, all in its namespace's space; `TopicOwnershipError` if
    its `kafka.topicPrefix` names another's (a pool with routes keeps its
    suppressions to itself: `Topics.for_prefix`)."""
    return Topics.for_pool(
        ref.namespace,
        ref.name,
        spec.kafka.delay_steps,
        prefix=spec.kafka.topic_prefix,
        routed=bool(spec.routes),
    )


def relay_kafka_security(
    kafka: KafkaSpec, keys: Collection[str] = ()
) -> relay_config.KafkaSecurity:
    """The relays' Kafka login: paths into the mounted credentials Secret, whose
    data `keys` say which optional files (CA, client certificate) exist."""
    p = kafka.security_protocol
    if kafka.credentials_secret_ref is None:
        return relay_config.KafkaSecurity(protocol=p)  # TLS with the image's trust store

    def path(key: str) -> str:
        return f"{CREDENTIALS_DIR}/{key}"

    client_cert = p.tls and CERT_KEY in keys and KEY_KEY in keys
    return relay_config.KafkaSecurity(
        protocol=p,
        sasl_mechanism=kafka.sasl_mechanism if p.sasl else None,
        username_file=path(USERNAME_KEY) if p.sasl else None,
        password_file=path(PASSWORD_KEY) if p.sasl else None,
        ca_file=path(CA_KEY) if p.tls and CA_KEY in keys else None,
        cert_file=path(CERT_KEY) if client_cert else None,
        key_file=path(KEY_KEY) if client_cert else None,
    )


def build_relay_config(
    ref: PoolRef, spec: SendingPoolSpec, credential_keys: Collection[str] = ()
) -> relay_config.RelayConfig:
    """The relay config of a pool. The policy objects are the spec's own (shared types);
    `credential_keys`: the data keys of its Kafka credentials Secret."""
    return relay_config.RelayConfig(
        pool=f"{ref.namespace}/{ref.name}",
        kafka=relay_config.KafkaSettings.for_topics(
            topics(ref, spec),
            bootstrap_servers=spec.kafka.bootstrap_servers,
            group_id=pool_group(ref.namespace, ref.name),
            client_id=f"mailpipe-relay-{ref.name}",
            security=relay_kafka_security(spec.kafka, credential_keys),
        ),
        egress=spec.egress_ips,
        domain_groups=spec.domain_groups,
        throttle_default=spec.throttles.default,
        throttles=spec.throttles.overrides,
        warmup=relay_config.WarmupSettings(
            schedule=spec.warmup.schedule,
            bounce_rate_pause=spec.warmup.bounce_rate_pause,
            complaint_rate_pause=spec.warmup.complaint_rate_pause,
            min_sample=spec.warmup.min_sample,
            timezone=spec.warmup.time_zone,  # the relay's name for it since config v1
        ),
        # the relay's own type: the spec's subclass only adds the CRD's CEL rule
        retry=RetrySettings.model_validate(spec.retry.model_dump()),
        tls=relay_config.RelayTLSSettings(
            mode=spec.tls.mode,
            verify=spec.tls.verify,
            sites=spec.tls.sites,
            ca_file=f"{TLS_CA_DIR}/{spec.tls.ca_bundle.key}" if spec.tls.ca_bundle else None,
        ),
        dkim=(
            relay_config.DKIMSettings(
                domain=spec.dkim.domain,
                selector=spec.dkim.selector,
                private_key_path=f"{DKIM_DIR}/{spec.dkim.secret_ref.key}",
            )
            if spec.dkim
            else None
        ),
        feedback=(
            relay_config.FeedbackSettings(
                bounce_domain=spec.feedback.bounce_domain,
                keys_path=FEEDBACK_KEYS_DIR,
                fbl_local_part=spec.feedback.fbl_local_part,
                validity_days=spec.feedback.validity_days,
            )
            if spec.feedback
            else None
        ),
        unsubscribe=(
            relay_config.UnsubscribeSettings(
                base_url=spec.unsubscribe.base_url, keys_dir=UNSUBSCRIBE_KEYS_DIR
            )
            if spec.unsubscribe
            else None
        ),
        routes=spec.routes,
        smtp_port=spec.smtp_port,
        dns_nameserver=spec.dns_nameserver,
        metrics_port=spec.metrics_port,
        delivery=spec.delivery,
        bounces=spec.bounces,
    )


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_configmap(ref: PoolRef, config_text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ref.metadata({HASH_ANNOTATION: config_hash(config_text)}),
        "data": {CONFIG_KEY: config_text},
    }


def secrets_hash(secrets: Mapping[str, Mapping[str, str] | None]) -> str:
    """A digest of the referenced Secrets' data (name -> data), for the pod template."""
    # a missing Secret (None) differs from an empty one
    canonical = json.dumps(
        {k: None if v is None else dict(v) for k, v in secrets.items()}, sort_keys=True
    )
    return config_hash(canonical)


def secrets_digests(
    spec: SendingPoolSpec, secrets: Mapping[str, Mapping[str, str] | None]
) -> tuple[str | None, str | None]:
    """(relays', submission endpoint's) digest of the Secrets each mounts, from
    the referenced ones' data (`secrets`): a new submission user or a renewed
    certificate rolls the endpoint, not the relays. A pool without the
    endpoint hashes what it always did."""
    if not secrets:
        return None, None
    own = submission_secrets(spec)
    relay = secrets_hash({k: v for k, v in secrets.items() if k not in own})
    if spec.submission is None:
        return relay, None
    names = [spec.submission.tls_secret, spec.submission.users_secret]
    if spec.kafka.credentials_secret_ref is not None:
        names.append(spec.kafka.credentials_secret_ref.name)
    return relay, secrets_hash({n: secrets.get(n) for n in names})


def build_deployment(
    ref: PoolRef, spec: SendingPoolSpec, config_text: str, secrets_digest: str | None = None
) -> dict[str, Any]:
    digest = config_hash(config_text)
    template_annotations = {HASH_ANNOTATION: digest}
    if secrets_digest is not None:
        template_annotations[SECRETS_HASH_ANNOTATION] = secrets_digest
    resources = {
        kind: {k: v for k, v in getattr(spec.resources, kind).model_dump().items() if v}
        for kind in ("requests", "limits")
    }
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": ref.child_name}}]
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if spec.dkim:
        volumes.append({"name": "dkim", "secret": {"secretName": spec.dkim.secret_ref.name}})
        mounts.append({"name": "dkim", "mountPath": DKIM_DIR, "readOnly": True})
    if spec.feedback:
        secret = spec.feedback.key_secret_ref.name
        volumes.append({"name": "feedback-keys", "secret": {"secretName": secret}})
        mounts.append({"name": "feedback-keys", "mountPath": FEEDBACK_KEYS_DIR, "readOnly": True})
    if spec.unsubscribe:
        secret = spec.unsubscribe.key_secret
        volumes.append({"name": "unsubscribe-keys", "secret": {"secretName": secret}})
        mounts.append(
            {"name": "unsubscribe-keys", "mountPath": UNSUBSCRIBE_KEYS_DIR, "readOnly": True}
        )
    bundle = spec.tls.ca_bundle
    if bundle is not None:
        source = (
            {"secret": {"secretName": bundle.secret}}
            if bundle.secret is not None
            else {"configMap": {"name": bundle.config_map}}
        )
        volumes.append({"name": "tls-ca", **source})
        mounts.append({"name": "tls-ca", "mountPath": TLS_CA_DIR, "readOnly": True})
    if spec.kafka.credentials_secret_ref is not None:
        secret = spec.kafka.credentials_secret_ref.name
        volumes.append({"name": "kafka-credentials", "secret": {"secretName": secret}})
        mounts.append({"name": "kafka-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})

    # The relay's own verdicts (relay/health.py): /readyz while it cannot read
    # its topics, /healthz only for a dead consumer thread or follower.
    def probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": 10, **timing}

    container = {
        "name": "relay",
        "image": spec.image,
        "args": ["relay", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "env": [
            {"name": "MAILPIPE_POOL", "value": f"{ref.namespace}/{ref.name}"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            # The metrics endpoint binds the pod IP, never 0.0.0.0 (= every node address).
            {
                "name": "MAILPIPE_METRICS_ADDRESS",
                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
            },
        ],
        "ports": [{"name": "metrics", "containerPort": spec.metrics_port, "protocol": "TCP"}],
        "readinessProbe": probe("/readyz", initialDelaySeconds=5),
        "livenessProbe": probe("/healthz", initialDelaySeconds=30, failureThreshold=6),
        "resources": {k: v for k, v in resources.items() if v},
        "volumeMounts": mounts,
        "securityContext": container_security(),
        # A relay that exits leaves the end of its log as its termination
        # message: the pool's condition quotes it (`relay_pods`), so `kubectl
        # get sp` says why without `kubectl logs --previous`.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        # SMTP egress binds the pool's IPs; with hostNetwork they are
        # the node's (the one exception to the restricted profile).
        "hostNetwork": spec.host_network,
        "dnsPolicy": "ClusterFirstWithHostNet" if spec.host_network else "ClusterFirst",
        # relays never call the Kubernetes API: no token to steal
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": 60,  # lets in-flight transactions finish
        "containers": [container],
        "volumes": volumes,
    }
    deployment_spec: dict[str, Any] = {}
    if spec.host_network:
        pod["affinity"] = egress_affinity(spec)
        # A hostNetwork relay holds node ports (its metrics port), so a surge pod
        # never fits a node that runs the old one: with the default surge of one,
        # a config change on a pool with one egress node would never roll. The
        # old relay drains and goes first; its records wait on Kafka meanwhile.
        deployment_spec["strategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
        }
    if spec.image_pull_secrets:  # the pool's, or the chart's imagePullSecrets (`defaults`)
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ref.metadata({HASH_ANNOTATION: digest}),
        "spec": {
            **deployment_spec,
            "replicas": spec.replicas,
            "selector": {
                "matchLabels": {
                    "mailpipe.io/pool": ref.name,
                    "app.kubernetes.io/component": "relay",
                }
            },
            "template": {
                "metadata": {"labels": ref.labels(), "annotations": template_annotations},
                "spec": pod,
            },
        },
    }


def egress_affinity(spec: SendingPoolSpec) -> dict[str, Any]:
    """A hostNetwork relay goes only to a node that advertises every egress IP
    of its pool (`contracts.egress`: label `egress.mailpipe.io/<address>`, any
    value): one term, so the expressions must all hold on the same node."""
    expressions = [
        {"key": egress_label(ip.address), "operator": "Exists"} for ip in spec.egress_ips
    ]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def build_service(ref: PoolRef, spec: SendingPoolSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(),
        "spec": {
            "selector": {"mailpipe.io/pool": ref.name, "app.kubernetes.io/component": "relay"},
            "ports": [{"name": "metrics", "port": spec.metrics_port, "targetPort": "metrics"}],
        },
    }


def build_pdb(ref: PoolRef, spec: SendingPoolSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": ref.metadata(),
        "spec": {
            # keep at least one relay per pool during node drains when there are several
            "maxUnavailable": 1,
            "selector": {
                "matchLabels": {
                    "mailpipe.io/pool": ref.name,
                    "app.kubernetes.io/component": "relay",
                }
            },
        },
    }


FEEDBACK = "feedback"  # the receiver's component label and container name


def _endpoint_deployment(
    ref: PoolRef,
    spec: SendingPoolSpec,
    component: str,
    name: str,
    args: list[str],
    config_map: str,
    secrets: list[tuple[str, str, str]],
    ports: list[dict[str, Any]],
    probes: dict[str, Any],
    template_annotations: dict[str, str],
    replicas: int,
) -> dict[str, Any]:
    """An endpoint's Deployment: the relay's restricted pod security without
    hostNetwork (it is reached through its Service), its config and `secrets`
    ((volume, Secret, mount path)) mounted read-only, no API token."""
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": config_map}}]
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    for volume, secret, path in secrets:
        volumes.append({"name": volume, "secret": {"secretName": secret}})
        mounts.append({"name": volume, "mountPath": path, "readOnly": True})
    container = {
        "name": component,
        "image": spec.image,
        "args": args,
        "env": [
            {"name": "MAILPIPE_POOL", "value": f"{ref.namespace}/{ref.name}"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": ports,
        **probes,
        "volumeMounts": mounts,
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # endpoints never call the API
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": 30,  # a report or a POST in flight is small
        "containers": [container],
        "volumes": volumes,
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    selector = {"mailpipe.io/pool": ref.name, "app.kubernetes.io/component": component}
    digest = template_annotations[HASH_ANNOTATION]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ref.metadata({HASH_ANNOTATION: digest}, name=name, component=component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": ref.labels(component), "annotations": template_annotations},
                "spec": pod,
            },
        },
    }


def _kafka_secret(spec: SendingPoolSpec) -> list[tuple[str, str, str]]:
    ref = spec.kafka.credentials_secret_ref
    return [] if ref is None else [("kafka-credentials", ref.name, CREDENTIALS_DIR)]


def _http_probes(ready: str, port: int) -> dict[str, Any]:
    if not port:
        return {}
    probe = {"httpGet": {"path": ready, "port": "metrics"}, "periodSeconds": 10}
    live = {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 10}
    return {
        "readinessProbe": {**probe, "initialDelaySeconds": 5},
        "livenessProbe": {**live, "initialDelaySeconds": 30, "failureThreshold": 6},
    }


def _annotations(config_text: str, secrets_digest: str | None) -> dict[str, str]:
    out = {HASH_ANNOTATION: config_hash(config_text)}
    if secrets_digest is not None:
        out[SECRETS_HASH_ANNOTATION] = secrets_digest
    return out


def build_feedback_deployment(
    ref: PoolRef,
    spec: SendingPoolSpec,
    config_text: str,
    settings: relay_config.FeedbackSettings,
    secrets_digest: str | None = None,
) -> dict[str, Any]:
    """The pool's feedback receiver (`mailpipe feedback`): the bounce domain's MX.

    It reads the pool's own relay config (the ConfigMap the relays mount: one
    config, so the receiver verifies exactly the tokens the relays sign), the
    token keys and the Kafka login, all read-only; nothing else of the relay's
    (DKIM key, CA bundle) is mounted. Reports come in through the Service,
    whose port 25 maps to the unprivileged port the receiver binds as non-root.
    The pod template carries the config and Secrets hashes, so a new config
    or a rotated key rolls the receivers as it rolls the relays.
    """
    assert spec.feedback is not None  # only rendered for a pool with spec.feedback
    ports = [{"name": "smtp", "containerPort": settings.listen_port, "protocol": "TCP"}]
    if settings.metrics_port:
        ports.append({"name": "metrics", "containerPort": settings.metrics_port, "protocol": "TCP"})
    return _endpoint_deployment(
        ref,
        spec,
        FEEDBACK,
        ref.feedback_name,
        [FEEDBACK, "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        ref.child_name,
        [
            ("feedback-keys", spec.feedback.key_secret_ref.name, FEEDBACK_KEYS_DIR),
            *_kafka_secret(spec),
        ],
        ports,
        # The receiver's scrape endpoint serves only /metrics: an answer there
        # means its event loop runs. Not a TCP probe on the SMTP port: each
        # would be a session that counts against the receiver's session limit.
        _http_probes("/metrics", settings.metrics_port),
        _annotations(config_text, secrets_digest),
        spec.feedback.replicas,
    )


SMTP_PORT = 25  # what other MTAs connect to: the bounce domain's MX port


def _metrics_port(port: int) -> list[dict[str, Any]]:
    """An endpoint Service's metrics port: what the chart's ServiceMonitor scrapes
    (by its `metrics` name), so each endpoint's counters reach the dashboard."""
    return [{"name": "metrics", "port": port, "targetPort": "metrics"}] if port else []


def build_feedback_service(
    ref: PoolRef, settings: relay_config.FeedbackSettings | None = None
) -> dict[str, Any]:
    """Port 25 -> the receiver's SMTP port (and its metrics). ClusterIP: how it is
    reached from outside (LoadBalancer, a node port, a MX host's forward) is the
    cluster's, and such a Service should carry port 25 only."""
    metrics = settings.metrics_port if settings is not None else 0
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(name=ref.feedback_name, component=FEEDBACK),
        "spec": {
            "selector": {"mailpipe.io/pool": ref.name, "app.kubernetes.io/component": FEEDBACK},
            "ports": [
                {"name": "smtp", "port": SMTP_PORT, "targetPort": "smtp"},
                *_metrics_port(metrics),
            ],
        },
    }


UNSUBSCRIBE = "unsubscribe"
UNSUBSCRIBE_KEY = "unsubscribe.yaml"
UNSUBSCRIBE_PORT = 8080  # EndpointSettings.port's default: unprivileged, as non-root
UNSUBSCRIBE_METRICS_PORT = 9090
HTTP_PORT = 80  # the Service's: an Ingress terminates https in front of it


def build_unsubscribe_config(
    ref: PoolRef, config: relay_config.RelayConfig, settings: relay_config.UnsubscribeSettings
) -> str:
    """The endpoint's settings (`mailpipe.inbound.unsubscribe.EndpointSettings`) as
    YAML: this pool's namespace, its keys (the relays' signing keys, mounted at
    the same path), the Kafka login of the relays and the topics they use."""
    security = config.kafka.security.model_dump(mode="json", exclude_none=True)
    data = {
        "namespace": ref.namespace,
        "keys_dir": settings.keys_dir,
        "kafka": {"bootstrap_servers": config.kafka.bootstrap_servers, "security": security},
        "suppressions_topic": config.kafka.suppressions_topic,
        "events_topics": {ref.name: config.kafka.events_topic},
        "port": UNSUBSCRIBE_PORT,
        "metrics_port": UNSUBSCRIBE_METRICS_PORT,
    }
    return yaml.safe_dump(data, sort_keys=True)


def build_unsubscribe_children(
    ref: PoolRef, spec: SendingPoolSpec, text: str, secrets_digest: str | None = None
) -> list[dict[str, Any]]:
    """The one-click endpoint's ConfigMap, Deployment and Service."""
    assert spec.unsubscribe is not None  # only rendered for a pool with spec.unsubscribe
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ref.metadata(
            {HASH_ANNOTATION: config_hash(text)}, name=ref.unsubscribe_name, component=UNSUBSCRIBE
        ),
        "data": {UNSUBSCRIBE_KEY: text},
    }
    ports = [
        {"name": "http", "containerPort": UNSUBSCRIBE_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": UNSUBSCRIBE_METRICS_PORT, "protocol": "TCP"},
    ]
    deployment = _endpoint_deployment(
        ref,
        spec,
        UNSUBSCRIBE,
        ref.unsubscribe_name,
        [UNSUBSCRIBE, "--config", f"{CONFIG_DIR}/{UNSUBSCRIBE_KEY}"],
        ref.unsubscribe_name,
        [
            ("unsubscribe-keys", spec.unsubscribe.key_secret, UNSUBSCRIBE_KEYS_DIR),
            *_kafka_secret(spec),
        ],
        ports,
        # /readyz: its Kafka producer exists (until then every POST is a 503)
        _http_probes("/readyz", UNSUBSCRIBE_METRICS_PORT),
        _annotations(text, secrets_digest),
        spec.unsubscribe.replicas,
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(name=ref.unsubscribe_name, component=UNSUBSCRIBE),
        "spec": {
            "selector": {"mailpipe.io/pool": ref.name, "app.kubernetes.io/component": UNSUBSCRIBE},
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                *_metrics_port(UNSUBSCRIBE_METRICS_PORT),
            ],
        },
    }
    return [configmap, deployment, service]


SUBMISSION = "submission"
SUBMISSION_KEY = "submission.yaml"
SUBMISSION_TLS_DIR = "/etc/mailpipe/submission-tls"  # the pool's kubernetes.io/tls Secret
SUBMISSION_USERS_DIR = "/etc/mailpipe/submission-users"  # the users Secret (hashed passwords)
# The container's ports: unprivileged, as it runs as non-root; the Service maps
# the spec's 587 and 465 onto them.
SUBMISSION_STARTTLS_PORT = 2587
SUBMISSION_IMPLICIT_PORT = 2465
SUBMISSION_METRICS_PORT = 9091  # SubmissionConfig.metrics_port's default
LISTEN_ALL = "0.0.0.0"  # the pod's own addresses: no hostNetwork, reached through the Service
# RFC 8314's service names (also the Service's port names: at most 15 characters)
STARTTLS_PORT_NAME, IMPLICIT_PORT_NAME = "submission", "submissions"


def submission_ledger(ref: PoolRef, spec: SendingPoolSpec) -> str:
    """The endpoint's compacted ledger of accepted submission ids: created with
    the pool's topics when it has the endpoint, deleted with them."""
    return topics(ref, spec).submitted


def build_submission_config(
    ref: PoolRef, spec: SendingPoolSpec, config: relay_config.RelayConfig
) -> str:
    """The endpoint's settings (`mailpipe.inbound.submission_policy.SubmissionConfig`)
    as YAML: the relays' Kafka settings and login (it writes their outbound
    topic and reads their suppression lists), the mounted certificate and users,
    and what the spec says. The transactional id here is a fallback: each pod
    passes its own (`--transactional-id`)."""
    sub = spec.submission
    assert sub is not None  # only rendered for a pool with spec.submission
    ledger = submission_ledger(ref, spec)

    def listener(enabled: int, port: int) -> dict[str, Any] | None:
        return {"address": LISTEN_ALL, "port": port} if enabled else None

    data = {
        "pool": f"{ref.namespace}/{ref.name}",
        "kafka": config.kafka.model_dump(mode="json", exclude_none=True),
        "ledger_topic": ledger,
        "transactional_id": f"{ledger}.0",
        "hostname": sub.hostname,
        "starttls": listener(sub.starttls_port, SUBMISSION_STARTTLS_PORT),
        "implicit_tls": listener(sub.implicit_tls_port, SUBMISSION_IMPLICIT_PORT),
        "tls_cert_file": f"{SUBMISSION_TLS_DIR}/{TLS_CERT_KEY}",
        "tls_key_file": f"{SUBMISSION_TLS_DIR}/{TLS_KEY_KEY}",
        "users_file": f"{SUBMISSION_USERS_DIR}/{USERS_KEY}",
        "max_message_bytes": sub.max_message_bytes,
        "suppressed_recipients": sub.suppressed_recipients.value.lower(),
        "metrics_address": LISTEN_ALL,
        "metrics_port": SUBMISSION_METRICS_PORT,
    }
    return yaml.safe_dump(data, sort_keys=True)


def build_submission_children(
    ref: PoolRef, spec: SendingPoolSpec, text: str, secrets_digest: str | None = None
) -> list[dict[str, Any]]:
    """The submission endpoint's ConfigMap, Deployment and Service.

    Each pod's Kafka transactional id is the ledger's name and its pod name:
    two replicas sharing one would fence each other's transactions, and the
    namespace's prefix ACL covers it. `secrets_digest` is of the Secrets it
    mounts (certificate, users, Kafka login), so a new user or a renewed
    certificate rolls the endpoint and not the relays."""
    sub = spec.submission
    assert sub is not None  # only rendered for a pool with spec.submission
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ref.metadata(
            {HASH_ANNOTATION: config_hash(text)}, name=ref.submission_name, component=SUBMISSION
        ),
        "data": {SUBMISSION_KEY: text},
    }
    listeners = [
        (STARTTLS_PORT_NAME, sub.starttls_port, SUBMISSION_STARTTLS_PORT),
        (IMPLICIT_PORT_NAME, sub.implicit_tls_port, SUBMISSION_IMPLICIT_PORT),
    ]
    ports = [
        {"name": name, "containerPort": port, "protocol": "TCP"}
        for name, enabled, port in listeners
        if enabled
    ]
    ports.append({"name": "metrics", "containerPort": SUBMISSION_METRICS_PORT, "protocol": "TCP"})
    args = [SUBMISSION, "serve", "--config", f"{CONFIG_DIR}/{SUBMISSION_KEY}"]
    # $(POD_NAME): the kubelet expands the container's env var in args
    args += ["--transactional-id", f"{submission_ledger(ref, spec)}.$(POD_NAME)"]
    deployment = _endpoint_deployment(
        ref,
        spec,
        SUBMISSION,
        ref.submission_name,
        args,
        ref.submission_name,
        [
            ("submission-tls", sub.tls_secret, SUBMISSION_TLS_DIR),
            ("submission-users", sub.users_secret, SUBMISSION_USERS_DIR),
            *_kafka_secret(spec),
        ],
        ports,
        # /readyz: listening, i.e. Kafka transactions ready and the lists read
        _http_probes("/readyz", SUBMISSION_METRICS_PORT),
        _annotations(text, secrets_digest),
        sub.replicas,
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(name=ref.submission_name, component=SUBMISSION),
        "spec": {
            "selector": {"mailpipe.io/pool": ref.name, "app.kubernetes.io/component": SUBMISSION},
            "ports": [
                *(
                    {"name": name, "port": enabled, "targetPort": name}
                    for name, enabled, _ in listeners
                    if enabled
                ),
                *_metrics_port(SUBMISSION_METRICS_PORT),
            ],
        },
    }
    return [configmap, deployment, service]


def build_children(
    ref: PoolRef,
    spec: SendingPoolSpec,
    secrets_digest: str | None = None,
    credential_keys: Collection[str] = (),
    submission_digest: str | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """The relay config text and every child object, in apply order (the relay
    Deployment is the first Deployment); a pool with `spec.feedback` also gets
    its feedback receiver's Deployment and Service, one with `spec.unsubscribe`
    the one-click endpoint's ConfigMap, Deployment and Service, one with
    `spec.submission` the submission endpoint's (`submission_digest`: of the
    Secrets it mounts)."""
    config = build_relay_config(ref, spec, credential_keys)
    text = relay_config.dump_config(config)
    children = [
        build_configmap(ref, text),
        build_deployment(ref, spec, text, secrets_digest),
        build_service(ref, spec),
        build_pdb(ref, spec),
    ]
    if config.feedback is not None:
        children += [
            build_feedback_deployment(ref, spec, text, config.feedback, secrets_digest),
            build_feedback_service(ref, config.feedback),
        ]
    if config.unsubscribe is not None:
        endpoint = build_unsubscribe_config(ref, config, config.unsubscribe)
        children += build_unsubscribe_children(ref, spec, endpoint, secrets_digest)
    if spec.submission is not None:
        endpoint = build_submission_config(ref, spec, config)
        children += build_submission_children(ref, spec, endpoint, submission_digest)
    return text, children


def stale_children(ref: PoolRef, children: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(kind, name) of the endpoint children `children` no longer has: their spec
    field was removed, so they go."""
    rendered = {(c["kind"], c["metadata"]["name"]) for c in children}
    return [k for k in ref.endpoint_children() if k not in rendered]


class _Expected(enum.Enum):
    AS_RENDERED = "as rendered"  # `drifted` without the server's view


def drifted(
    desired: Any, live: Any, path: str = "", expected: Any = _Expected.AS_RENDERED
) -> list[str]:
    """Paths where `live` differs from what the operator applied.

    `desired` (the rendered object) says which fields are the operator's:
    fields others add (defaults, status, managedFields, another manager's) are
    not drift. `expected` is the API server's view of `desired`
    (`kube_io.server_view`): the values compared, because the server never
    returns an object as rendered (a `false` it omits, `0.5` CPU as `500m`).
    Without it, `desired` is compared as rendered. Lists are compared item by
    item, over the server's length (it keeps items other managers added).
    """
    if expected is _Expected.AS_RENDERED:
        expected = desired
    if isinstance(desired, Mapping):
        if not desired:
            return []
        if not isinstance(live, Mapping):
            return [] if live is None and expected is None else [path or "."]
        view = expected if isinstance(expected, Mapping) else {}
        out: list[str] = []
        for key, value in desired.items():
            out += drifted(value, live.get(key), f"{path}.{key}", view.get(key))
        return out
    if isinstance(desired, list) and isinstance(expected, list):
        if not isinstance(live, list) or len(live) != len(expected) or len(expected) < len(desired):
            return [path]
        pairs = enumerate(zip(desired, expected[: len(desired)], live[: len(desired)], strict=True))
        return [p for i, (d, e, v) in pairs for p in drifted(d, v, f"{path}[{i}]", e)]
    return [] if expected == live else [path]
