"""`mailpipe dev` from a real shell: what a reader types, in the order the README says.

`eval "$(mailpipe dev env)"` must point the shell's own kubectl and helm at the
stack (issue 18: the lines had no `export`, so kubectl went to its default
cluster), and `up` after `down` in the same directory must start again (issue
18: Kafka's storage was formatted with a new cluster id over the last run's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailpipe.devstack import kafka, paths
from mailpipe.devstack.cli import shell_exports
from mailpipe.devstack.stack import Stack

MAILPIPE = str(Path(sys.executable).parent / "mailpipe")
UP_TIMEOUT_SECONDS = 300  # Kafka's JVM and the apiserver, cold, on a loaded 2-core machine
SHELL_TIMEOUT_SECONDS = 60


def bare_env(home: Path) -> dict[str, str]:
    """A shell that knows nothing of the stack: no KUBECONFIG, no ~/.kube/config,
    no helm on PATH. Whatever reaches the stack must come from `dev env`."""
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TERM", "USER")}
    return {
        **keep,
        "HOME": str(home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "MAILPIPE_CACHE": str(paths.cache_dir()),
    }


def sh(script: str, env: dict[str, str], timeout: float = SHELL_TIMEOUT_SECONDS) -> str:
    out = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{script}\n{out.stdout}{out.stderr}"
    return out.stdout


def test_shell_exports_reach_the_shells_children(tmp_path: Path) -> None:
    """Each value arrives exactly, quotes and spaces included, in a child of the shell."""
    env = {"KUBECONFIG": "/tmp/a b/kube'config", "KAFKA_BOOTSTRAP": "127.0.0.1:1,$HOME"}
    text = shell_exports(env, ["/opt/x y/bin"])
    script = f"eval \"$(cat <<'EOF'\n{text}EOF\n)\"\n" + (
        'bash -c \'printf "%s\\n" "$KUBECONFIG" "$KAFKA_BOOTSTRAP" "${PATH%%:*}"\''
    )
    shown = sh(script, bare_env(tmp_path)).splitlines()
    assert shown == [env["KUBECONFIG"], env["KAFKA_BOOTSTRAP"], "/opt/x y/bin"]


def test_eval_dev_env_points_kubectl_and_helm_at_the_stack(devstack: Stack, tmp_path: Path) -> None:
    state = devstack.state
    assert state is not None
    env = bare_env(tmp_path)
    script = (
        f'eval "$({MAILPIPE} dev env --state-dir {devstack.state_dir})"\n'
        "kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}'; echo\n"
        "kubectl get namespace default -o name\n"
        "helm list -A -o json\n"
        'echo "$KAFKA_BOOTSTRAP"\n'
        "command -v kubectl-mailpipe\n"
    )
    lines = sh(script, env).splitlines()
    assert lines[0] == state.kube_server
    assert lines[1] == "namespace/default"
    assert lines[2].startswith("[")  # helm reached the stack's apiserver
    assert lines[3] == state.kafka_bootstrap
    assert lines[4] == str(Path(MAILPIPE).parent / "kubectl-mailpipe")


@pytest.mark.e2e
def test_up_after_down_in_the_same_directory(tmp_path: Path) -> None:
    """`mailpipe dev up && mailpipe dev down && mailpipe dev up` in one checkout."""
    env = bare_env(tmp_path)
    state_dir = tmp_path / "devstack"
    dev = f"{MAILPIPE} dev"
    try:
        sh(f"cd {tmp_path} && {dev} up --state-dir {state_dir}", env, UP_TIMEOUT_SECONDS)
        stopped = sh(f"{dev} down --state-dir {state_dir}", env)
        assert "kafka" in stopped and "kube-apiserver" in stopped, stopped
        sh(f"{dev} up --state-dir {state_dir}", env, UP_TIMEOUT_SECONDS)
        status = sh(f"{dev} status --state-dir {state_dir}", env)
        assert "DEAD" not in status and "kafka: running" in status, status
        # the second stack serves: the apiserver answers, the broker has a controller
        script = (
            f'eval "$({dev} env --state-dir {state_dir})"\n'
            "kubectl get namespace default -o name\n"
            'echo "$KAFKA_BOOTSTRAP"\n'
        )
        namespace, bootstrap = sh(script, env).split()
        assert namespace == "namespace/default"
        assert kafka.is_ready(bootstrap)
    finally:
        Stack(state_dir).down()
