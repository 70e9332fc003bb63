"""Relay pods' status -> the pool's reason and message (`relay_pods.diagnose`).

The pods are shaped as a 1.34 API server returns them (`kubectl get pod -o
json`): a relay pod of the operator's Deployment, its status as the kubelet and
the scheduler write it in each trouble.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from mailpipe.operator.handlers.status import Relays, pool_conditions
from mailpipe.operator.relay_pods import NOT_READY_GRACE_SECONDS, PodReason, PodTrouble, diagnose

NOW = dt.datetime(2026, 12, 4, 18, 0, 0, tzinfo=dt.UTC)
IMAGE = "mailpipe.local/mailpipe:absent"


def _ago(seconds: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod(name: str = "mailpipe-relay-news-6d5f8b7c9d-x2k4q", **container: Any) -> dict[str, Any]:
    """A scheduled relay pod whose one container has `container` as its status fields."""
    status = {
        "name": "relay",
        "image": IMAGE,
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {"waiting": {"reason": "ContainerCreating"}},
        **container,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "tenant-a",
            "labels": {
                "app.kubernetes.io/component": "relay",
                "mailpipe.io/pool": "news",
                "pod-template-hash": "6d5f8b7c9d",
            },
            "ownerReferences": [{"kind": "ReplicaSet", "name": "mailpipe-relay-news-6d5f8b7c9d"}],
        },
        "spec": {
            "nodeName": "mailpipe-node",
            "containers": [
                {
                    "name": "relay",
                    "image": IMAGE,
                    "resources": {"limits": {"memory": "24Mi"}, "requests": {"memory": "24Mi"}},
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
        "status": {
            "phase": "Pending",
            "hostIP": "10.88.0.2",
            "podIP": "10.244.0.17",
            "qosClass": "Burstable",
            "startTime": _ago(300),
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "message": "containers with unready status: [relay]",
                },
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "message": "containers with unready status: [relay]",
                },
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [status],
        },
    }


def _running(pod: dict[str, Any]) -> dict[str, Any]:
    pod["status"]["phase"] = "Running"
    return pod


NEVER_PULL = _pod(
    state={
        "waiting": {
            "reason": "ErrImageNeverPull",
            "message": f'Container image "{IMAGE}" is not present with pull policy of Never',
        }
    }
)
PULL_ERROR = (
    f'failed to pull and unpack image "{IMAGE}": failed to resolve reference "{IMAGE}": '
    f'failed to do request: Head "https://mailpipe.local/v2/mailpipe/manifests/absent": '
    "dial tcp: lookup mailpipe.local on 10.88.0.1:53: no such host"
)
ERR_IMAGE_PULL = _pod(
    state={
        "waiting": {
            "reason": "ErrImagePull",
            "message": f"rpc error: code = NotFound desc = {PULL_ERROR}",
        }
    }
)
IMAGE_PULL_BACK_OFF = _pod(
    state={
        "waiting": {
            "reason": "ImagePullBackOff",
            "message": f'Back-off pulling image "{IMAGE}": ErrImagePull: '
            f"rpc error: code = NotFound desc = {PULL_ERROR}",
        }
    }
)
RELAY_LOG_LINE = (
    '{"time": "2026-12-04T17:59:41+0000", "level": "error", "logger": "mailpipe.relay", '
    '"msg": "cannot start: /etc/mailpipe/relay.yaml: no such file"}'
)
CRASH_LOOP = _running(
    _pod(
        restartCount=3,
        state={
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": "back-off 40s restarting failed container=relay "
                "pod=mailpipe-relay-news-6d5f8b7c9d-x2k4q_tenant-a(0b1c)",
            }
        },
        lastState={
            "terminated": {
                "exitCode": 2,
                "reason": "Error",
                "message": f"starting\n{RELAY_LOG_LINE}\n",
                "startedAt": _ago(45),
                "finishedAt": _ago(44),
                "containerID": "containerd://4f1e",
            }
        },
    )
)
OOM_KILLED = _running(
    _pod(
        restartCount=1,
        state={
            "terminated": {
                "exitCode": 137,
                "reason": "OOMKilled",
                "startedAt": _ago(3),
                "finishedAt": _ago(1),
                "containerID": "containerd://9a0c",
            }
        },
    )
)
UNSCHEDULABLE = {
    **_pod(),
    "status": {
        "phase": "Pending",
        "qosClass": "Burstable",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes "
                "are available: 1 No preemption victims found for incoming pod.",
                "lastTransitionTime": _ago(20),
            }
        ],
    },
}
NOT_READY = _running(
    _pod(started=True, state={"running": {"startedAt": _ago(NOT_READY_GRACE_SECONDS + 30)}})
)
CREATE_CONFIG_ERROR = _pod(
    state={
        "waiting": {
            "reason": "CreateContainerConfigError",
            "message": 'secret "dkim-news" not found',
        }
    }
)


@pytest.mark.parametrize(
    ("pod", "reason", "says"),
    [
        (NEVER_PULL, PodReason.IMAGE_PULL_FAILED, "is not present with pull policy of Never"),
        (ERR_IMAGE_PULL, PodReason.IMAGE_PULL_FAILED, "no such host"),
        (IMAGE_PULL_BACK_OFF, PodReason.IMAGE_PULL_FAILED, "no such host"),
        (CRASH_LOOP, PodReason.CRASH_LOOP_BACK_OFF, "exit code 2"),
        (OOM_KILLED, PodReason.OOM_KILLED, "memory limit of 24Mi"),
        (UNSCHEDULABLE, PodReason.UNSCHEDULABLE, "1 Insufficient cpu"),
        (NOT_READY, PodReason.RELAYS_NOT_READY, "readiness probe does not pass"),
        (CREATE_CONFIG_ERROR, PodReason.CONTAINER_NOT_CREATED, 'secret "dkim-news" not found'),
    ],
    ids=[
        "never-pull",
        "err-image-pull",
        "image-pull-back-off",
        "crash-loop",
        "oom-killed",
        "unschedulable",
        "probe-failing",
        "config-error",
    ],
)
def test_each_trouble_has_its_reason_and_names_the_pod(
    pod: dict[str, Any], reason: PodReason, says: str
) -> None:
    trouble = diagnose([pod], NOW)
    assert trouble is not None
    assert trouble.reason is reason
    assert says in trouble.message, trouble.message
    assert trouble.message.startswith(f"relay pod {pod['metadata']['name']}: ")
    assert "\n" not in trouble.message and len(trouble.message) <= 300


def test_a_crash_quotes_the_relay_log_message_not_its_time() -> None:
    trouble = diagnose([CRASH_LOOP], NOW)
    assert trouble is not None
    assert trouble.message.endswith(
        "keeps exiting (exit code 2): cannot start: /etc/mailpipe/relay.yaml: no such file"
    ), trouble.message
    assert "2026" not in trouble.message


def test_the_pull_error_reads_the_same_before_and_during_back_off() -> None:
    """ErrImagePull and the ImagePullBackOff after it alternate: one message for
    both, or each alternation would rewrite the pool's status and its Event."""
    assert diagnose([ERR_IMAGE_PULL], NOW) == diagnose([IMAGE_PULL_BACK_OFF], NOW)


def test_a_crash_loop_reads_the_same_waiting_running_and_exited() -> None:
    """Between two back-offs the container runs again, not Ready yet, then exits:
    the same trouble all along, so the same message (no restart count either)."""
    waiting = diagnose([CRASH_LOOP], NOW)
    again = copy.deepcopy(CRASH_LOOP)
    again["status"]["containerStatuses"][0].update(
        restartCount=4, state={"running": {"startedAt": _ago(1)}}
    )
    exited = copy.deepcopy(CRASH_LOOP)
    last = exited["status"]["containerStatuses"][0]["lastState"]["terminated"]
    exited["status"]["containerStatuses"][0].update(restartCount=5, state={"terminated": last})
    assert diagnose([again], NOW) == waiting
    assert diagnose([exited], NOW) == waiting


@pytest.mark.parametrize(
    "pod",
    [
        _pod(),  # ContainerCreating
        _running(_pod(state={"running": {"startedAt": _ago(10)}})),  # starting up
        _running(_pod(ready=True, started=True, state={"running": {"startedAt": _ago(900)}})),
        {**copy.deepcopy(CRASH_LOOP), "metadata": {"name": "old", "deletionTimestamp": _ago(1)}},
        {**copy.deepcopy(NEVER_PULL), "status": {"phase": "Failed", "reason": "Evicted"}},
    ],
    ids=["creating", "starting", "ready", "terminating", "evicted"],
)
def test_starting_ready_and_departing_pods_are_no_trouble(pod: dict[str, Any]) -> None:
    assert diagnose([pod], NOW) is None


def test_a_relay_that_recovered_from_a_crash_is_no_trouble() -> None:
    recovered = copy.deepcopy(CRASH_LOOP)
    recovered["status"]["containerStatuses"][0].update(
        ready=True, started=True, state={"running": {"startedAt": _ago(30)}}
    )
    assert diagnose([recovered], NOW) is None


def test_the_most_pressing_trouble_wins_and_the_others_like_it_are_counted() -> None:
    second = copy.deepcopy(CRASH_LOOP)
    second["metadata"]["name"] = "mailpipe-relay-news-6d5f8b7c9d-a1b2c"
    trouble = diagnose([NOT_READY, CRASH_LOOP, UNSCHEDULABLE, second], NOW)
    assert trouble is not None
    assert trouble.reason is PodReason.CRASH_LOOP_BACK_OFF
    # the first by name, so the message does not depend on the list's order
    assert trouble.message.startswith(
        "relay pod mailpipe-relay-news-6d5f8b7c9d-a1b2c (and 1 more relay pods): "
    ), trouble.message
    assert diagnose([second, UNSCHEDULABLE, CRASH_LOOP, NOT_READY], NOW) == trouble


def _by_type(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conditions}


TROUBLE = PodTrouble(PodReason.IMAGE_PULL_FAILED, 'relay pod p: cannot get image "x": absent')


def test_missing_relays_give_the_pods_reason_to_ready() -> None:
    got = _by_type(pool_conditions(3, [], None, Relays(1, 0, 1, observed=True), TROUBLE))
    assert got["Ready"] == (
        "False",
        "ImagePullFailed",
        f"0/1 relays available: {TROUBLE.message}",
    )
    assert got["Reconciling"][:2] == ("True", "ImagePullFailed")
    assert got["RelaysAvailable"][:2] == ("False", "ImagePullFailed")
    assert got["Stalled"][0] == "False"


def test_a_new_relay_that_cannot_start_holds_the_rollout_not_ready() -> None:
    """Relays available (the old ones), a surge pod in trouble: still Ready, and
    Reconciling says what holds the rollout."""
    relays = Relays(1, 1, 1, observed=True, unavailable=1)
    got = _by_type(pool_conditions(3, [], None, relays, TROUBLE))
    assert got["Ready"][:2] == ("True", "RelaysAvailable")
    assert got["Reconciling"][:2] == ("True", "ImagePullFailed")
    assert TROUBLE.message in got["Reconciling"][2]


def test_a_deployment_with_unavailable_pods_has_pods_to_explain() -> None:
    dep = {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "availableReplicas": 1,
            "updatedReplicas": 1,
            "unavailableReplicas": 1,
        },
    }
    assert Relays.of(dep, 1).pods_to_explain
    assert not Relays.of(
        {**dep, "status": {**dep["status"], "unavailableReplicas": 0}}, 1
    ).pods_to_explain
    assert not Relays.of(None, 0).pods_to_explain


def _restarted_cleanly(state: dict[str, Any]) -> dict[str, Any]:
    """A relay stopped by its liveness probe (SIGTERM, exit 0) and restarted."""
    return _running(
        _pod(
            restartCount=2,
            state=state,
            lastState={"terminated": {"exitCode": 0, "reason": "Completed"}},
        )
    )


@pytest.mark.parametrize(
    "pod",
    [
        _restarted_cleanly({"running": {"startedAt": _ago(2)}}),
        _restarted_cleanly({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}),
        _restarted_cleanly({"terminated": {"exitCode": 0, "reason": "Completed"}}),
    ],
    ids=["running-again", "backing-off", "stopped"],
)
def test_a_relay_restarted_by_its_liveness_probe_is_not_ready_throughout(
    pod: dict[str, Any],
) -> None:
    """Its probe stops it (exit 0), it restarts, it backs off: one reason and one
    message all along, not "starting" for a minute after each restart."""
    trouble = diagnose([pod], NOW)
    assert trouble is not None
    assert trouble.reason is PodReason.RELAYS_NOT_READY
    assert "was restarted" in trouble.message
    assert trouble == diagnose([_restarted_cleanly({"running": {"startedAt": _ago(2)}})], NOW)
