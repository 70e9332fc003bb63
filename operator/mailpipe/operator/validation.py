"""What is wrong with a SendingPool (or a Campaign edit), as one-line problems, before rollout.

The apiserver refuses what the CRD schema can say (patterns, CEL rules); this
module says the rest, and says it again for objects that reached the cluster
under an older schema. Each `Problem` has a stable CamelCase reason (the
`Ready`/`Stalled` condition's reason and the Warning Event's) and a one-line
message naming the field, so `kubectl get sp` and `kubectl describe` show the
cause instead of an operator log line.

Pure: the spec is a mapping, the referenced Secrets are passed in as a lookup
result, the Kafka error as an exception value. The handlers do the IO
(`handlers.pool.reconcile`) and nothing is applied while a problem stands.
Other checks (cluster policy, tenancy) add their own `Problem`s the same way.

The last section decides which Campaign edits apply once its fan-out started.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from mailpipe.contracts.submission_users import USERS_KEY, UsersFileError, parse_users

from . import defaults
from .models import SendingPoolSpec

MAX_MESSAGE_CHARS = 300  # a condition message is read in `kubectl get`; details go to the log


class Reason(enum.StrEnum):
    """Why a pool is not Ready (condition reason and Warning Event reason)."""

    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_TIME_ZONE = "UnknownTimeZone"
    INVALID_DELAY_STEP = "InvalidDelayStep"
    # spec.bounces: a rule's pattern or action; the whole rule file is refused
    # (nothing of it reaches the relays) until it is fixed
    INVALID_BOUNCE_RULES = "InvalidBounceRules"
    UNKNOWN_DOMAIN_GROUP = "UnknownDomainGroup"
    RETRY_LONGER_THAN_MAX_AGE = "RetryLongerThanMaxAge"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    FEEDBACK_KEY_SECRET_NOT_FOUND = "FeedbackKeySecretNotFound"
    FEEDBACK_KEY_INVALID = "FeedbackKeyInvalid"
    SUBMISSION_TLS_SECRET_NOT_FOUND = "SubmissionTLSSecretNotFound"
    SUBMISSION_TLS_SECRET_INVALID = "SubmissionTLSSecretInvalid"
    SUBMISSION_USERS_SECRET_NOT_FOUND = "SubmissionUsersSecretNotFound"
    SUBMISSION_USERS_INVALID = "SubmissionUsersInvalid"
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
    CONFIG_MAP_KEY_NOT_FOUND = "ConfigMapKeyNotFound"
    FORBIDDEN = "Forbidden"
    KAFKA_UNAVAILABLE = "KafkaUnavailable"


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", one_line(self.message))


@dataclass(frozen=True)
class SecretRef:
    """A Secret the pool's relays mount: name, key, and the spec field that names it."""

    name: str
    key: str
    field: str


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line, cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- the spec ------------------------------------------------------------------------


def _path(loc: Sequence[int | str]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _reason(path: str, msg: str) -> Reason:
    if "unknown time zone" in msg:
        return Reason.UNKNOWN_TIME_ZONE
    if ".delaySteps" in path:
        return Reason.INVALID_DELAY_STEP
    if path.startswith("spec.bounces"):
        return Reason.INVALID_BOUNCE_RULES
    if "unknown group" in msg:
        return Reason.UNKNOWN_DOMAIN_GROUP
    return Reason.INVALID_SPEC


def _problems_of(exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors():
        path = _path(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        out.append(Problem(_reason(path, msg), f"{path}: {msg}"))
    return out


def check_spec(raw: Mapping[str, Any]) -> tuple[SendingPoolSpec | None, list[Problem]]:
    """The parsed spec (None if it does not parse) and every problem found in it."""
    try:
        # unset image, pull secrets and Kafka take the chart's values (`defaults`)
        spec = SendingPoolSpec.model_validate(
            dict(raw), context=defaults.from_process_env().context()
        )
    except ValidationError as exc:
        return None, _problems_of(exc)
    return spec, semantic_problems(spec)


def semantic_problems(spec: SendingPoolSpec) -> list[Problem]:
    """Rules across fields that parse one by one (the CRD carries them as CEL rules too)."""
    out = []
    retry = spec.retry
    total = sum(retry.schedule_seconds)
    if total > retry.max_age_seconds:
        out.append(
            Problem(
                Reason.RETRY_LONGER_THAN_MAX_AGE,
                f"spec.retry: scheduleSeconds add up to {total}s, longer than maxAgeSeconds "
                f"{retry.max_age_seconds}s: the last retries would never run",
            )
        )
    return out


# --- what the spec references ------------------------------------------------------------


def secret_refs(spec: SendingPoolSpec) -> list[SecretRef]:
    """Every Secret the relays of this pool mount, with the keys they need
    (key "": the Secret must exist, its keys are optional)."""
    out = []
    if spec.dkim is not None:
        ref = spec.dkim.secret_ref
        out.append(SecretRef(ref.name, ref.key, "spec.dkim.secretRef"))
    if spec.feedback is not None:
        out.append(SecretRef(spec.feedback.key_secret_ref.name, "", FEEDBACK_KEY_FIELD))
    creds = spec.kafka.credentials_secret_ref
    if creds is not None:
        field = "spec.kafka.credentialsSecretRef"
        keys = ("username", "password") if spec.kafka.security_protocol.sasl else ("",)
        out += [SecretRef(creds.name, key, field) for key in keys]
    bundle = spec.tls.ca_bundle
    if bundle is not None and bundle.secret is not None:
        out.append(SecretRef(bundle.secret, bundle.key, "spec.tls.caBundle.secret"))
    if spec.unsubscribe is not None:
        out.append(SecretRef(spec.unsubscribe.key_secret, "", UNSUBSCRIBE_KEY_FIELD))
    if spec.submission is not None:
        out.append(SecretRef(spec.submission.tls_secret, "", SUBMISSION_TLS_FIELD))
        out.append(SecretRef(spec.submission.users_secret, "", SUBMISSION_USERS_FIELD))
    return out


def submission_secrets(spec: SendingPoolSpec) -> list[str]:
    """The Secrets only the submission endpoint mounts (its certificate and users):
    their changes roll the endpoint, never the relays."""
    if spec.submission is None:
        return []
    others = {r.name for r in secret_refs(spec) if r.field not in _SUBMISSION_FIELDS}
    mine = [spec.submission.tls_secret, spec.submission.users_secret]
    return [n for n in dict.fromkeys(mine) if n not in others]


def secret_names(raw: Mapping[str, Any]) -> list[str]:
    """The Secret names a raw spec references, even when the spec does not parse (for watches)."""
    dkim = raw.get("dkim") or {}
    feedback = raw.get("feedback") or {}
    kafka = raw.get("kafka") or {}
    tls = raw.get("tls") or {}
    bundle = (tls.get("caBundle") or {}) if isinstance(tls, Mapping) else {}
    unsubscribe = raw.get("unsubscribe") or {}
    submission = raw.get("submission") or {}
    if not isinstance(submission, Mapping):
        submission = {}
    names = [
        (dkim.get("secretRef") or {}).get("name") if isinstance(dkim, Mapping) else None,
        (kafka.get("credentialsSecretRef") or {}).get("name")
        if isinstance(kafka, Mapping)
        else None,
        bundle.get("secret") if isinstance(bundle, Mapping) else None,
        (feedback.get("keySecretRef") or {}).get("name") if isinstance(feedback, Mapping) else None,
        unsubscribe.get("keySecret") if isinstance(unsubscribe, Mapping) else None,
        submission.get("tlsSecret"),
        submission.get("usersSecret"),
    ]
    return list(dict.fromkeys(n for n in names if isinstance(n, str) and n))


def reference_problems(
    refs: Sequence[SecretRef], found: Mapping[str, Mapping[str, str] | None]
) -> list[Problem]:
    """Missing Secrets or keys; `found` maps a Secret name to its data (None: not found)."""
    out = []
    for i, ref in enumerate(refs):
        data = found.get(ref.name)
        if ref.field in (FEEDBACK_KEY_FIELD, UNSUBSCRIBE_KEY_FIELD, *_SUBMISSION_FIELDS):
            check = _CONTENT_CHECKS.get(ref.field, feedback_key_problem)
            problem = check(ref.name, data)
            if problem is not None:
                out.append(problem)
            continue
        if data is None:
            if any(r.name == ref.name for r in refs[:i]):
                continue  # one Secret, several keys: named once
            out.append(
                Problem(Reason.SECRET_NOT_FOUND, f"Secret {ref.name} not found ({ref.field})")
            )
        elif ref.key and ref.key not in data:
            where = ref.field + (".key" if ref.field.endswith(".secretRef") else "")
            out.append(
                Problem(
                    Reason.SECRET_KEY_NOT_FOUND,
                    f"Secret {ref.name} has no key {ref.key!r} ({where})",
                )
            )
    return out


FEEDBACK_KEY_FIELD = "spec.feedback.keySecretRef"
UNSUBSCRIBE_KEY_FIELD = "spec.unsubscribe.keySecret"
MIN_FEEDBACK_KEY_BYTES = 32  # feedback_token.TokenKeys' minimum: HMAC-SHA256 keys of full strength
_KEY_ID = re.compile(r"[a-z2-7]{1,8}")  # feedback_token.KEY_ID_ALPHABET, 1-8 characters


def feedback_key_problem(name: str, data: Mapping[str, str] | None) -> Problem | None:
    """Why the token key Secret cannot sign (`data`: its base64 values; None: missing),
    saying how to make a good one: without it the relays cannot write a return path."""
    make = f"kubectl create secret generic {name} --from-literal=ka=$(openssl rand -hex 32)"
    if data is None:
        return Problem(
            Reason.FEEDBACK_KEY_SECRET_NOT_FOUND,
            f"Secret {name} not found ({FEEDBACK_KEY_FIELD}): the relays cannot sign"
            f" return paths; create it: {make}",
        )
    good = []
    for kid, value in data.items():
        try:
            size = len(base64.b64decode(value).strip())
        except (ValueError, TypeError):
            size = 0
        if _KEY_ID.fullmatch(kid) and size >= MIN_FEEDBACK_KEY_BYTES:
            good.append(kid)
    if len(good) != len(data) or not good:
        bad = sorted(set(data) - set(good)) or ["(none)"]
        return Problem(
            Reason.FEEDBACK_KEY_INVALID,
            f"Secret {name} ({FEEDBACK_KEY_FIELD}): keys must be named 1-8 of a-z, 2-7 and"
            f" hold at least {MIN_FEEDBACK_KEY_BYTES} bytes; not so: {', '.join(bad)}; {make}",
        )
    return None


SUBMISSION_TLS_FIELD = "spec.submission.tlsSecret"
SUBMISSION_USERS_FIELD = "spec.submission.usersSecret"
_SUBMISSION_FIELDS = (SUBMISSION_TLS_FIELD, SUBMISSION_USERS_FIELD)
TLS_CERT_KEY, TLS_KEY_KEY = "tls.crt", "tls.key"  # a kubernetes.io/tls Secret's keys


def _decoded(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        return None


def submission_tls_problem(name: str, data: Mapping[str, str] | None) -> Problem | None:
    """Why the endpoint could not serve TLS with this Secret (`data`: base64 values;
    None: missing): it would exit at start, so the pool says it instead."""
    make = f"kubectl create secret tls {name} --cert=<chain.pem> --key=<key.pem>"
    if data is None:
        return Problem(
            Reason.SUBMISSION_TLS_SECRET_NOT_FOUND,
            f"Secret {name} not found ({SUBMISSION_TLS_FIELD}): the submission endpoint"
            f" has no certificate; create it: {make}",
        )
    cert, key = _decoded(data.get(TLS_CERT_KEY, "")), _decoded(data.get(TLS_KEY_KEY, ""))
    why = None
    if not cert or not key:
        why = f"needs keys {TLS_CERT_KEY} and {TLS_KEY_KEY}"
    else:
        try:
            public = x509.load_pem_x509_certificate(cert).public_key()
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            why = f"not a PEM certificate and unencrypted key ({type(exc).__name__})"
        else:
            raw = serialization.PublicFormat.SubjectPublicKeyInfo
            der = serialization.Encoding.DER
            if public.public_bytes(der, raw) != private.public_key().public_bytes(der, raw):
                why = f"{TLS_KEY_KEY} is not the key of the certificate in {TLS_CERT_KEY}"
    if why is None:
        return None
    return Problem(
        Reason.SUBMISSION_TLS_SECRET_INVALID,
        f"Secret {name} ({SUBMISSION_TLS_FIELD}): {why}; {make}",
    )


def submission_users_problem(name: str, data: Mapping[str, str] | None) -> Problem | None:
    """Why the endpoint would refuse this users Secret at start (the endpoint's own
    parser, `contracts.submission_users`), naming the user and the field."""
    make = (
        f"kubectl create secret generic {name} --from-file={USERS_KEY}"
        " (password_hash from `mailpipe submission hash-password`)"
    )
    if data is None:
        return Problem(
            Reason.SUBMISSION_USERS_SECRET_NOT_FOUND,
            f"Secret {name} not found ({SUBMISSION_USERS_FIELD}): nobody could log in to the"
            f" submission endpoint; create it: {make}",
        )
    raw = _decoded(data.get(USERS_KEY, ""))
    if not raw:
        why = f"has no key {USERS_KEY}"
    else:
        try:
            parse_users(raw.decode("utf-8"))
            return None
        except UnicodeDecodeError:
            why = f"{USERS_KEY} is not UTF-8"
        except UsersFileError as exc:
            why = f"{USERS_KEY}: {exc}"
    return Problem(
        Reason.SUBMISSION_USERS_INVALID, f"Secret {name} ({SUBMISSION_USERS_FIELD}): {why}"
    )


_CONTENT_CHECKS: Mapping[str, Callable[[str, Mapping[str, str] | None], Problem | None]] = (
    MappingProxyType(
        {
            SUBMISSION_TLS_FIELD: submission_tls_problem,
            SUBMISSION_USERS_FIELD: submission_users_problem,
        }
    )
)


# The key of a mounted ConfigMap among the Secrets whose data the relays' pod
# template hashes: "/" never occurs in a Secret name, so the two cannot collide.
CONFIG_MAP_PREFIX = "configmap/"


def config_map_names(raw: Mapping[str, Any]) -> list[str]:
    """The ConfigMaps a raw spec has mounted into the relays (the TLS CA bundle),
    even when the spec does not parse (for watches)."""
    tls = raw.get("tls") or {}
    bundle = (tls.get("caBundle") or {}) if isinstance(tls, Mapping) else {}
    name = bundle.get("configMap") if isinstance(bundle, Mapping) else None
    return [name] if isinstance(name, str) and name else []


def ca_config_map(spec: SendingPoolSpec) -> tuple[str, str] | None:
    """(name, key) of the ConfigMap holding the pool's TLS CA bundle, if it names one."""
    bundle = spec.tls.ca_bundle
    if bundle is None or bundle.config_map is None:
        return None
    return bundle.config_map, bundle.key


def config_map_problems(name: str, key: str, data: Mapping[str, str] | None) -> list[Problem]:
    """A missing CA bundle ConfigMap or key, said on the pool rather than left to a
    relay pod stuck mounting it."""
    field = "spec.tls.caBundle.configMap"
    if data is None:
        return [Problem(Reason.CONFIG_MAP_NOT_FOUND, f"ConfigMap {name} not found ({field})")]
    if key not in data:
        return [
            Problem(
                Reason.CONFIG_MAP_KEY_NOT_FOUND, f"ConfigMap {name} has no key {key!r} ({field})"
            )
        ]
    return []


def forbidden_problem(kind: str, names: Sequence[str]) -> Problem:
    """The operator may not read what the pool references (its namespace is not onboarded)."""
    return Problem(
        Reason.FORBIDDEN,
        f"the operator may not read {kind} {', '.join(names)}: is this namespace onboarded "
        "(chart value rbac.tenantNamespaces)?",
    )


def forbidden_write_problem(namespace: str, what: str) -> Problem:
    """The operator may not create the pool's relays here: the namespace is not onboarded."""
    return Problem(
        Reason.FORBIDDEN,
        f"the operator may not create {what} in namespace {namespace}: onboard the namespace"
        " (chart value rbac.tenantNamespaces, or a RoleBinding to the operator-workloads role)",
    )


# --- Kafka ---------------------------------------------------------------------------------


def kafka_problem(exc: BaseException, bootstrap: str) -> Problem:
    """A Kafka client error as one line: its class and what was tried, not its repr."""
    name = type(exc).__name__
    # kafka-python 2 says NoBrokersAvailable; 3 a KafkaTimeoutError "Unable to bootstrap"
    if name == "NoBrokersAvailable" or "bootstrap" in str(exc).lower():
        what = f"cannot reach bootstrap {bootstrap} ({name})"
    else:
        detail = one_line(str(exc), limit=160)
        what = f"cannot create topics on {bootstrap} ({name}{': ' + detail if detail else ''})"
    return Problem(Reason.KAFKA_UNAVAILABLE, f"KafkaUnavailable: {what}")


# --- Campaign edits after fan-out ------------------------------------------------------------
#
# Records on Kafka carry their rendered content, sender, recipient and due time,
# so once the fan-out has produced any, changing those fields could only reach
# part of the audience: such edits are refused (kept out of the fan-out, shown
# as SpecAccepted=False). `suspend` reaches records already on Kafka through the
# campaign control topic, so it is applied at any time. A Failed campaign takes
# any edit: that is how it is fixed and resumed.

APPLIED_AFTER_FANOUT = ("suspend", "complaints")
FROZEN_AFTER_FANOUT = (
    "poolRef",
    "from",
    "replyTo",
    "subject",
    "text",
    "html",
    "variants",
    "audience",
    "startAt",
    "sendWindows",
    "timeZone",
    "unsubscribe",
)
EDIT_REFUSED = "EditRefusedAfterFanout"
DIGEST_CHARS = 16


def frozen_digests(spec: Mapping[str, Any]) -> dict[str, str]:
    """A digest of each field frozen once fan-out started (status.acceptedSpec)."""
    return {
        f: hashlib.sha256(json.dumps(spec.get(f), sort_keys=True).encode()).hexdigest()[
            :DIGEST_CHARS
        ]
        for f in FROZEN_AFTER_FANOUT
    }


def refused_edits(accepted: Mapping[str, str] | None, spec: Mapping[str, Any]) -> list[str]:
    """The frozen fields of `spec` that differ from the accepted ones (none before a snapshot)."""
    if not accepted:
        return []
    now = frozen_digests(spec)
    return [f for f in FROZEN_AFTER_FANOUT if f in accepted and accepted[f] != now[f]]


def edit_refused_message(fields: Sequence[str]) -> str:
    return one_line(
        f"fan-out started: edits to {', '.join(fields)} are refused (records on Kafka carry "
        "them); revert them, or delete the Campaign and create a new one. Only "
        f"{', '.join(APPLIED_AFTER_FANOUT)} applies after fan-out"
    )
