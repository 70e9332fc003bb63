"""The one harness the demo, the tests and the benchmarks drive mailpipe with.

Start a `mailpipe` subcommand (or any program) as a child, stop it by pid,
wait until a condition holds — failing fast, with the log tail, when a child
the wait depends on has died — and call kubectl and helm against the stack.
Children are started through `procs` (their own process group each), so
stopping one signals exactly what it started and nothing else on the machine.
Before this module, the demo, both integration conftests and both benchmarks
each carried their own copy of these (ARCHITECTURE.md, components).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from . import paths, procs
from .interrupt import stop_on_signal as stop_on_signal  # runs that stop cleanly on a signal

# The `mailpipe` console script of the interpreter running this code, so a
# child runs the same checkout and virtualenv as its parent.
MAILPIPE = Path(sys.executable).parent / "mailpipe"
CRD_APPLY_ATTEMPTS = 3  # a lost create race, at most once per CRD file
POLL_INTERVAL_SECONDS = 0.2  # what we wait on (Kafka, the apiserver) takes 100s of ms anyway
CHILD_STOP_GRACE_SECONDS = 30.0  # a relay finishes its SMTP sessions and final commit in this
KUBECTL_TIMEOUT_SECONDS = 300.0  # the benchmark applies 200 SendingPools in one call
HELM_TIMEOUT_SECONDS = 120.0
HTTP_OK = 200
KUBE_READ_TIMEOUT_SECONDS = 30.0  # one GET on loopback; an apiserver away fails fast
CRD_ESTABLISHED_TIMEOUT = "30s"  # kubectl wait's syntax; a new CRD is served within seconds
READY = "Ready"

Env = Mapping[str, str]


class HarnessError(RuntimeError):
    """Something the harness waited for or ran did not happen; the message says why."""


class ChildExited(HarnessError):
    """A child died while something depended on it; the message carries its log tail."""

    def __init__(self, child: Child, what: str) -> None:
        super().__init__(
            f"{child.describe()} exited with status {child.exit_code()} "
            f"while waiting for {what}\n{child.log_section()}"
        )
        self.child = child


class TimedOut(HarnessError):
    """A condition did not hold in time; the message carries the watched children's logs."""


class CommandFailed(HarnessError):
    """kubectl or helm exited non-zero; the message carries its stderr."""


@dataclass(eq=False)
class Child:
    """One process this harness started, in its own process group, output in `log`."""

    name: str
    pid: int
    log: Path
    stop_sent: bool = False  # the shutdown signal went out; stop() only waits
    stopped: bool = False  # stopped on purpose: not alive, and no longer watched
    returncode: int | None = None  # its exit status once stopped, if it was our child

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid})"

    def alive(self) -> bool:
        return not self.stopped and procs.alive(self.pid)

    def exit_code(self) -> int | None:
        return self.returncode if self.stopped else procs.exit_code(self.pid)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the process itself (SIGUSR1: a relay logs its state)."""
        os.kill(self.pid, sig)

    def request_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send the shutdown signal once and return: stop several children in parallel.

        Once only, because kopf treats a second SIGTERM as an error."""
        if not self.stop_sent and not self.stopped:
            procs.signal_group(self.pid, sig)
            self.stop_sent = True

    def stop(
        self, grace_seconds: float = CHILD_STOP_GRACE_SECONDS, sig: signal.Signals = signal.SIGTERM
    ) -> None:
        """`sig` (a clean shutdown), then SIGKILL after the grace period; idempotent."""
        if not self.stopped:
            self.returncode = procs.stop(self.pid, grace_seconds, sig, signalled=self.stop_sent)
            self.stop_sent = self.stopped = True

    def kill(self) -> None:
        """SIGKILL now: no shutdown, no final commit (what a crash looks like)."""
        self.stop(grace_seconds=0, sig=signal.SIGKILL)

    def log_tail(self, lines: int = procs.LOG_TAIL_LINES) -> str:
        return procs.log_tail(self.log, lines)

    def log_section(self) -> str:
        return f"--- last lines of {self.log} ---\n{self.log_tail()}"


def start(
    name: str, command: Sequence[str], log: Path, env: Env | None = None, cwd: Path | None = None
) -> Child:
    """Start `command` as a child with stdout and stderr appended to `log`.

    `env` is added to this process's environment."""
    return Child(name, procs.spawn(command, log, dict(env or {}), cwd), log)


def start_mailpipe(name: str, args: Sequence[str], log: Path, env: Env | None = None) -> Child:
    """Start `mailpipe <args>` (a subcommand: relay, operator, ...) as a child."""
    return start(name, [str(MAILPIPE), *args], log, env)


class Children:
    """The children one owner (a test, the demo, a benchmark) started, logs in `workdir`.

    A context manager: leaving it stops every child still running, newest first."""

    def __init__(self, workdir: Path, stop_grace_seconds: float = CHILD_STOP_GRACE_SECONDS) -> None:
        self.workdir = workdir
        self.stop_grace_seconds = stop_grace_seconds
        self.started: list[Child] = []

    def start(self, name: str, command: Sequence[str], env: Env | None = None) -> Child:
        child = start(name, command, self.workdir / f"{name}.log", env)
        self.started.append(child)
        return child

    def mailpipe(self, name: str, args: Sequence[str], env: Env | None = None) -> Child:
        child = start_mailpipe(name, args, self.workdir / f"{name}.log", env)
        self.started.append(child)
        return child

    def running(self) -> list[Child]:
        """The children not stopped on purpose: each of them must still be alive."""
        return [c for c in self.started if not c.stopped]

    def stop_all(self) -> None:
        """Signal every child, then wait for each: their grace periods overlap."""
        for child in reversed(self.started):
            child.request_stop()
        for child in reversed(self.started):
            child.stop(self.stop_grace_seconds)

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def wait_for(
    condition: Callable[[], bool],
    timeout_seconds: float,
    what: str,
    *,
    watch: Iterable[Child] = (),
    interval_seconds: float = POLL_INTERVAL_SECONDS,
    retry_on: tuple[type[Exception], ...] = (),
) -> None:
    """Poll `condition` until it holds; `what` names it in the error.

    Fails fast with ChildExited when a watched child died (its log tail in the
    message), with TimedOut after `timeout_seconds`. An exception of a
    `retry_on` type from `condition` means "not yet" (a probe of a server that
    is still starting); any other propagates."""
    watched = list(watch)
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if condition():
                return
        except retry_on:
            pass
        for child in watched:
            if not child.alive():
                raise ChildExited(child, what)
        if time.monotonic() >= deadline:
            logs = "".join(f"\n{c.describe()}: {c.log_section()}" for c in watched)
            raise TimedOut(f"timed out after {timeout_seconds:.0f}s waiting for {what}{logs}")
        time.sleep(interval_seconds)


# -- kubectl and helm against the stack (env from StackState.env()) ----------------------


def kubectl(
    env: Env,
    *args: str,
    stdin: str | None = None,
    timeout_seconds: float = KUBECTL_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl; the caller reads returncode, stdout and stderr."""
    return subprocess.run(
        ["kubectl", *args],
        input=stdin,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
    )


def kubectl_ok(
    env: Env,
    *args: str,
    stdin: str | None = None,
    timeout_seconds: float = KUBECTL_TIMEOUT_SECONDS,
) -> str:
    """Run kubectl, return its stdout; CommandFailed if it failed."""
    out = kubectl(env, *args, stdin=stdin, timeout_seconds=timeout_seconds)
    if out.returncode != 0:
        raise CommandFailed(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def apply(env: Env, manifest: str | Mapping[str, Any], *extra: str) -> str:
    """`kubectl apply -f -` of a YAML/JSON text or an object."""
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return kubectl_ok(env, "apply", *extra, "-f", "-", stdin=text)


def get_json(env: Env, *args: str) -> dict[str, Any]:
    """`kubectl get <args> -o json`, parsed; CommandFailed if it failed."""
    data: dict[str, Any] = json.loads(kubectl_ok(env, "get", *args, "-o", "json"))
    return data


# kubectl's names of the kinds read in waits -> (API path prefix, plural). Reading
# them through the API client instead of a kubectl process per poll keeps a
# wait from taking a core of a two-core machine from what it waits for; other
# kinds go through kubectl.
_PATHS = {
    **dict.fromkeys(
        ("sp", "sendingpool", "sendingpools"), ("/apis/mailpipe.io/v1alpha1", "sendingpools")
    ),
    **dict.fromkeys(("camp", "campaign", "campaigns"), ("/apis/mailpipe.io/v1alpha1", "campaigns")),
    **dict.fromkeys(("deployment", "deployments", "deploy"), ("/apis/apps/v1", "deployments")),
    **dict.fromkeys(("configmap", "configmaps", "cm"), ("/api/v1", "configmaps")),
    **dict.fromkeys(("secret", "secrets"), ("/api/v1", "secrets")),
}
_PATHS["sendingpools.mailpipe.io"] = _PATHS["sp"]
_PATHS["campaigns.mailpipe.io"] = _PATHS["camp"]


@functools.lru_cache(maxsize=8)
def _api_client(kubeconfig: str, _modified_ns: int) -> Any:
    """One client (and its connection pool) per kubeconfig file and version of it
    (`_modified_ns` is only part of the cache key: a rewritten file gets a new client)."""
    from kubernetes import config  # the harness's only use of the Python client

    return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


def get_object(env: Env, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """One object, or None when it does not exist (or cannot be read), as
    `kubectl get -o json` shows it, with the credentials of env's KUBECONFIG."""
    path = _PATHS.get(kind)
    kubeconfig = env.get("KUBECONFIG", "")
    if path is None or not kubeconfig or os.pathsep in kubeconfig:
        got = kubectl(env, "get", kind, name, "-n", namespace, "-o", "json")
        if got.returncode != 0:
            return None
        obj: dict[str, Any] = json.loads(got.stdout)
        return obj
    prefix, plural = path
    try:
        api = _api_client(kubeconfig, os.stat(kubeconfig).st_mtime_ns)
        request = api.param_serialize(
            "GET",
            f"{prefix}/namespaces/{{namespace}}/{plural}/{{name}}",
            path_params={"namespace": namespace, "name": name},
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        method, url, headers = request[:3]
        response = api.call_api(
            method, url, header_params=headers, _request_timeout=KUBE_READ_TIMEOUT_SECONDS
        )
        response.read()
    except Exception:  # as kubectl exits non-zero: the apiserver away, a bad kubeconfig
        return None
    if response.status != HTTP_OK:  # not found, forbidden
        return None
    found: dict[str, Any] = json.loads(response.data)
    found.get("metadata", {}).pop("managedFields", None)  # kubectl leaves them out too
    return found


def condition_true(obj: Mapping[str, Any] | None, kind: str = READY) -> bool:
    """Whether an object's status lists condition `kind` with status True."""
    conditions = (obj or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def report_deployment(
    env: Env, namespace: str, name: str, available: int | None = None
) -> dict[str, Any]:
    """Play the kubelet and the Deployment controller, which the dev stack does not run.

    Writes the Deployment's status as its controller would once `available`
    replicas (default: all of spec.replicas) run its latest template; returns
    the Deployment as read before.
    """
    dep = get_json(env, "deployment", name, "-n", namespace)
    replicas = int(dep["spec"].get("replicas", 1))
    up = replicas if available is None else available
    status = {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": max(replicas, up),
        "updatedReplicas": max(replicas, up),
        "readyReplicas": up,
        "availableReplicas": up,
        "unavailableReplicas": max(replicas - up, 0),
    }
    patch = json.dumps({"status": status})
    kubectl_ok(
        env,
        "patch",
        "deployment",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    )
    return dep


def apply_crds(env: Env, crds_dir: Path) -> None:
    """Apply mailpipe's CRDs and wait until the apiserver serves them.

    Processes sharing a stack (pytest-xdist workers) apply them at the same
    time: kubectl's apply reads, then creates, and the one that loses the race
    to create is told AlreadyExists. Its next apply finds them and updates."""
    for _ in range(CRD_APPLY_ATTEMPTS - 1):
        out = kubectl(env, "apply", "-f", str(crds_dir))
        if out.returncode == 0:
            break
        if "AlreadyExists" not in out.stderr:
            raise CommandFailed(f"kubectl apply -f {crds_dir}: {out.stderr.strip()}")
    else:
        kubectl_ok(env, "apply", "-f", str(crds_dir))
    kubectl_ok(
        env,
        "wait",
        "--for=condition=Established",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=mailpipe",
        f"--timeout={CRD_ESTABLISHED_TIMEOUT}",
    )


def helm(
    env: Env | None, *args: str, timeout_seconds: float = HELM_TIMEOUT_SECONDS
) -> subprocess.CompletedProcess[str]:
    """Run the cached helm; `env` None for commands that need no cluster (template, lint)."""
    return subprocess.run(
        [str(paths.binary("helm")), *args],
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
    )


def helm_ok(env: Env | None, *args: str, timeout_seconds: float = HELM_TIMEOUT_SECONDS) -> str:
    """Run helm, return its stdout; CommandFailed if it failed."""
    out = helm(env, *args, timeout_seconds=timeout_seconds)
    if out.returncode != 0:
        raise CommandFailed(f"helm {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout
