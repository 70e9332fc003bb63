"""The harness: children by pid, fail-fast waits with the log tail, stop by process group."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from mailpipe.devstack import harness, procs

QUICK_SECONDS = 0.3  # a wait that is meant to time out
EXIT_WITHIN_SECONDS = 10.0  # a dying child is noticed long before this


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_wait_fails_fast_with_the_dead_childs_log_tail(tmp_path: Path) -> None:
    child = harness.start(
        "crasher", python("print('boom'); raise SystemExit(3)"), tmp_path / "c.log"
    )
    # ChildExited, not TimedOut: the death ended the wait, long before its deadline.
    with pytest.raises(harness.ChildExited) as failed:
        harness.wait_for(lambda: False, EXIT_WITHIN_SECONDS * 3, "never", watch=[child])
    message = str(failed.value)
    assert "crasher" in message and "status 3" in message and "boom" in message


def test_wait_times_out_naming_what_it_waited_for(tmp_path: Path) -> None:
    with pytest.raises(harness.TimedOut, match="waiting for the moon"):
        harness.wait_for(lambda: False, QUICK_SECONDS, "the moon", interval_seconds=0.05)


def test_a_condition_that_holds_passes_even_if_the_child_is_gone(tmp_path: Path) -> None:
    child = harness.start("done", python("pass"), tmp_path / "d.log")
    assert procs.wait_gone(child.pid, EXIT_WITHIN_SECONDS)
    harness.wait_for(lambda: True, QUICK_SECONDS, "at once", watch=[child])


def test_retry_on_treats_probe_errors_as_not_yet() -> None:
    calls = iter([OSError("refused"), OSError("refused"), True])

    def probe() -> bool:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    harness.wait_for(probe, EXIT_WITHIN_SECONDS, "probe", retry_on=(OSError,), interval_seconds=0)


def test_other_errors_propagate() -> None:
    def broken() -> bool:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        harness.wait_for(broken, EXIT_WITHIN_SECONDS, "broken", retry_on=(OSError,))


def test_children_stop_their_whole_process_group_and_nothing_else(tmp_path: Path) -> None:
    grandchild_pid = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(grandchild_pid)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    bystander = harness.start(
        "bystander", python("import time; time.sleep(600)"), tmp_path / "b.log"
    )
    try:
        with harness.Children(tmp_path) as children:
            parent = children.start("parent", python(code))
            harness.wait_for(grandchild_pid.exists, EXIT_WITHIN_SECONDS, "the grandchild")
        grandchild = int(grandchild_pid.read_text())
        assert not parent.alive() and parent.stopped
        assert procs.wait_gone(grandchild, EXIT_WITHIN_SECONDS), "grandchild left running"
        assert bystander.alive(), "stopped a process it did not start"
    finally:
        bystander.kill()


def test_stop_sends_the_shutdown_signal_once_and_records_the_exit(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = harness.start("polite", python(code), tmp_path / "p.log")
    harness.wait_for(lambda: "ready" in child.log.read_text(), EXIT_WITHIN_SECONDS, "ready")
    child.request_stop()
    child.stop()
    assert child.stopped and child.returncode == 0
    child.stop()  # idempotent
    assert not child.alive()


def test_kill_is_sigkill(tmp_path: Path) -> None:
    child = harness.start("victim", python("import time; time.sleep(600)"), tmp_path / "v.log")
    child.kill()
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)


def test_get_object_reads_what_kubectl_shows_without_a_process_per_poll(
    cli_env: dict[str, str], namespace: str, tmp_path: Path
) -> None:
    """Waits poll objects several times a second: through the API client, not a
    kubectl process each time, and with the same answer kubectl gives."""
    root = Path(__file__).resolve().parents[2]
    harness.apply_crds(cli_env, root / "crds")
    pool = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "news", "namespace": namespace},
        "spec": {
            "kafka": {"bootstrapServers": "127.0.0.1:9", "topicPrefix": "mailpipe.x.news"},
            "egressIPs": [{"address": "127.0.0.2", "helo": "egress-2.sender.test"}],
        },
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": namespace},
        "data": {"k": "v"},
    }
    harness.apply(cli_env, pool)
    harness.apply(cli_env, config_map)
    no_kubectl = {**cli_env, "PATH": str(tmp_path)}  # a kubectl process would not start
    for kind, name in [("sp", "news"), ("configmap", "cm")]:
        shown = harness.get_json(cli_env, kind, name, "-n", namespace)
        assert harness.get_object(no_kubectl, kind, name, namespace) == shown
    assert harness.get_object(cli_env, "camp", "none", namespace) is None
    assert harness.get_object(cli_env, "deployment", "none", namespace) is None
    assert (
        harness.get_object({**cli_env, "KUBECONFIG": str(tmp_path / "no")}, "sp", "news", namespace)
        is None
    )
