"""Why a pool's relays are not available, read from their pods' status: pure.

A relay Deployment's status says only how many relays are available. The
reason one is not lives in its pod: the kubelet cannot pull its image, its
container keeps exiting (or is killed for its memory), the scheduler finds no
node for it, it runs but its readiness probe does not pass. `diagnose` turns
the pods' status (as the API server returns it, JSON) into one `PodTrouble`, a
condition reason and a one-line message naming the pod, which the pool shows
in its Ready condition and a Warning Event (`handlers.pool`), so `kubectl get
sp` says what `kubectl describe pod` would have.

Messages are built only from what stays the same while the trouble does (no
restart counts, back-off delays or ages), so a pod in the same trouble does
not rewrite the pool's status or repeat its Event at every restart.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailpipe.contracts.egress import EGRESS_LABEL_PREFIX, egress_reason, labelled_addresses

from .validation import one_line


class PodReason(enum.StrEnum):
    """The pool's Ready reason for relay pods in trouble, most pressing first."""

    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONTAINER_NOT_CREATED = "ContainerNotCreated"
    OOM_KILLED = "OOMKilled"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    NO_NODE_HOLDS_EGRESS_IPS = "NoNodeHoldsEgressIPs"
    UNSCHEDULABLE = "Unschedulable"
    EGRESS_IPS_NOT_BOUND = "EgressIPsNotBound"
    RELAYS_NOT_READY = "RelaysNotReady"


# The kubelet's waiting reasons (kubelet/images, kubelet/container): an image
# it cannot get (with pullPolicy Never it says ErrImageNeverPull and does not
# back off), and a container it cannot create or start from its spec.
IMAGE_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "ImageInspectError",
        "RegistryUnavailable",
        "SignatureValidationFailed",
    }
)
CREATE_WAITING_REASONS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "PreCreateHookError",
        "PreStartHookError",
        "PostStartHookError",
        "RunContainerError",
    }
)
# A relay takes this long from its process start to Ready on a loaded node
# (Kafka start-up: replaying suppressions and the warm-up ledger, joining the
# group); past it, a running relay that is not Ready says so. Its readiness
# probe waits 5 s and runs every 10 s, its liveness probe restarts it after 90 s.
NOT_READY_GRACE_SECONDS = 60.0
LOG_TAIL_CHARS = 160  # of a crash's last log line or a pull error: their ends are shown
# What the kubelet puts in front of the pull error it backs off from; the
# error itself is the same one ErrImagePull showed, so both read alike.
_BACK_OFF_PREFIX = re.compile(r'^Back-off pulling image "[^"]*":\s*')
_KUBELET_REASON_PREFIX = re.compile(r"^(ErrImagePull|ImagePullBackOff):\s*")
_RPC_PREFIX = re.compile(r"rpc error: code = \w+ desc = ")
# containerd's words before its chain of causes; the message names the image already
_UNPACK_PREFIX = re.compile(r'^failed to pull and unpack image "[^"]*":\s*')


@dataclass(frozen=True)
class PodTrouble:
    """Why relay pods are not available: the condition reason and its message."""

    reason: PodReason
    message: str


@dataclass(frozen=True)
class _Finding:
    reason: PodReason
    pod: str
    text: str  # what is wrong with the pod, without its name


def diagnose(
    pods: Iterable[Mapping[str, Any]],
    now: dt.datetime,
    readiness: Mapping[str, str] | None = None,
) -> PodTrouble | None:
    """The most pressing trouble of the relay pods, or None (all fine or starting).

    `pods`: the pool's relay pods as JSON (a pod list's items); terminating and
    finished pods are left out (they are on their way out). `now`: aware UTC,
    for how long a running relay has not been Ready. `readiness`: pod name ->
    what its `/readyz` answered while it was not Ready (`readiness_to_ask`),
    where the relay says itself why (its egress IPs)."""
    answers = readiness or {}
    findings = [
        f
        for pod in pods
        if (f := _pod_finding(pod, now, answers.get(str((pod.get("metadata") or {}).get("name")))))
        is not None
    ]
    if not findings:
        return None
    order = list(PodReason)
    worst = min(findings, key=lambda f: (order.index(f.reason), f.pod))
    alike = sorted(f.pod for f in findings if f.reason is worst.reason)
    more = f" (and {len(alike) - 1} more relay pods)" if len(alike) > 1 else ""
    return PodTrouble(worst.reason, one_line(f"relay pod {worst.pod}{more}: {worst.text}"))


def readiness_to_ask(pods: Iterable[Mapping[str, Any]], limit: int) -> list[tuple[str, str]]:
    """(pod name, `/readyz` URL) of at most `limit` relay pods that run but are not
    Ready: a relay says there why, and the kubelet keeps no probe's answer.
    The URL is the pod IP and its container's `metrics` port."""
    out: list[tuple[str, str]] = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not ip:
            continue
        statuses = status.get("containerStatuses") or []
        if not any(not c.get("ready") and (c.get("state") or {}).get("running") for c in statuses):
            continue
        ports = [
            p.get("containerPort")
            for c in (pod.get("spec") or {}).get("containers") or []
            for p in c.get("ports") or []
            if p.get("name") == "metrics"
        ]
        if ports:
            host = f"[{ip}]" if ":" in str(ip) else ip
            out.append((str(meta.get("name")), f"http://{host}:{ports[0]}/readyz"))
        if len(out) >= limit:
            break
    return out


def _egress_addresses(spec: Mapping[str, Any]) -> list[str]:
    """The egress IPs a pod's required node affinity asks a node to advertise."""
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    keys = [
        e.get("key", "")
        for term in required.get("nodeSelectorTerms") or []
        for e in term.get("matchExpressions") or []
    ]
    return labelled_addresses(keys)


def _pod_finding(
    pod: Mapping[str, Any], now: dt.datetime, readyz: str | None = None
) -> _Finding | None:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    name = str(meta.get("name", "?"))
    spec = pod.get("spec") or {}
    limits = {
        c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
        for c in spec.get("containers") or []
    }
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    found = [
        f for c in statuses if (f := _container_finding(name, c, limits.get(c.get("name")), now))
    ]
    egress = egress_reason(readyz or "")
    if egress is not None:
        text = f"cannot send from its egress IPs: {egress}"
        found.append(_Finding(PodReason.EGRESS_IPS_NOT_BOUND, name, text))
    if found:
        order = list(PodReason)
        return min(found, key=lambda f: order.index(f.reason))
    scheduled = _condition(status, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        why = scheduled.get("message") or scheduled.get("reason") or "no node fits it"
        addresses = _egress_addresses(spec)
        if addresses and "affinity" in why:
            text = (
                f"no node holds all of its egress IPs {' '.join(addresses)}: a node that "
                f"holds them needs the label {EGRESS_LABEL_PREFIX}<address> for each "
                f"(scheduler: {why})"
            )
            return _Finding(PodReason.NO_NODE_HOLDS_EGRESS_IPS, name, text)
        return _Finding(PodReason.UNSCHEDULABLE, name, f"cannot be scheduled: {why}")
    return None


def _container_finding(
    pod: str, c: Mapping[str, Any], memory_limit: str | None, now: dt.datetime
) -> _Finding | None:
    if c.get("ready"):
        return None
    container = c.get("name", "?")
    state = c.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason") or ""
    if reason in IMAGE_WAITING_REASONS:
        image = c.get("image") or "?"
        cause = _pull_cause(waiting.get("message") or "") or reason
        return _Finding(PodReason.IMAGE_PULL_FAILED, pod, f'cannot get image "{image}": {cause}')
    if reason in CREATE_WAITING_REASONS:
        cause = waiting.get("message") or reason
        return _Finding(
            PodReason.CONTAINER_NOT_CREATED, pod, f"container {container} not started: {cause}"
        )
    # The exit that made it restart: the current one (between a crash and its
    # restart) or the last one (waiting in CrashLoopBackOff, or running again
    # but not Ready yet): the same trouble throughout, so the same message.
    ended = _failed_exit(state.get("terminated")) or _failed_exit(
        (c.get("lastState") or {}).get("terminated")
    )
    if ended is not None:
        if ended.get("reason") == "OOMKilled":
            limit = f" of {memory_limit}" if memory_limit else ""
            text = (
                f"container {container} was killed for exceeding its memory limit{limit} "
                "(OOMKilled): raise spec.resources.limits.memory"
            )
            return _Finding(PodReason.OOM_KILLED, pod, text)
        text = f"container {container} keeps exiting (exit code {ended.get('exitCode')})"
        tail = _last_line(ended.get("message") or "")
        return _Finding(PodReason.CRASH_LOOP_BACK_OFF, pod, f"{text}: {tail}" if tail else text)
    restarted = state.get("terminated") or (c.get("lastState") or {}).get("terminated")
    if restarted or reason == "CrashLoopBackOff":
        # Stopped cleanly (exit 0: its liveness probe, or its own exit) and
        # restarted, whether running, stopped or backing off now: not a crash,
        # and not a relay starting for the first time either.
        text = (
            f"container {container} is not Ready and was restarted after it stopped "
            f"(exit code 0: its liveness probe or its own exit); `kubectl logs pod/{pod} "
            "--previous` says why"
        )
        return _Finding(PodReason.RELAYS_NOT_READY, pod, text)
    started = _time((state.get("running") or {}).get("startedAt"))
    if started is not None and (now - started).total_seconds() > NOT_READY_GRACE_SECONDS:
        text = (
            f"container {container} runs but is not Ready: its readiness probe does not "
            f"pass (`kubectl logs pod/{pod}` says why)"
        )
        return _Finding(PodReason.RELAYS_NOT_READY, pod, text)
    return None  # starting: pulling, creating, or running for a short while


def _failed_exit(terminated: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not terminated:
        return None
    failed = terminated.get("exitCode") != 0 or terminated.get("reason") == "OOMKilled"
    return terminated if failed else None


def _pull_cause(message: str) -> str:
    """The pull error of ErrImagePull and of the ImagePullBackOff after it, alike."""
    cause = _BACK_OFF_PREFIX.sub("", message.strip())
    cause = _KUBELET_REASON_PREFIX.sub("", cause)
    cause = _UNPACK_PREFIX.sub("", _RPC_PREFIX.sub("", cause))
    return _tail(cause)


def _last_line(message: str) -> str:
    """What the termination message ends with (with `FallbackToLogsOnError`: the
    end of the log). A relay logs JSON lines: their `msg` (and the last line of
    `exc`), never their time, so each crash reads the same. Long: its end kept,
    where a traceback says what failed."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    try:
        record = json.loads(last)
    except ValueError:
        record = None
    if isinstance(record, dict) and isinstance(record.get("msg"), str):
        exc = str(record.get("exc") or "").strip().splitlines()
        last = record["msg"] + (f": {exc[-1].strip()}" if exc else "")
    return _tail(last)


def _tail(text: str) -> str:
    """`text`, or its end when long: errors are chains ("a: b: root cause")
    whose last link is the one to read."""
    return text if len(text) <= LOG_TAIL_CHARS else "…" + text[-(LOG_TAIL_CHARS - 1) :]


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    conditions: Sequence[Mapping[str, Any]] = status.get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
