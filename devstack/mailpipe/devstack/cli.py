"""`mailpipe dev up [--node] | down | status | env`: the local stack from a shell.

`up` and `env` print `export NAME=value` lines, quoted for a POSIX shell, so
`eval "$(mailpipe dev env)"` points the shell's `kubectl` and `helm` at the
stack. Without `export` the shell would set variables its children never see,
and `kubectl` would quietly talk to its default cluster (`~/.kube/config`).
They also put the stack's helm and this installation's commands (`mailpipe`,
`kubectl-mailpipe`) first on PATH: the README's lines then run as written.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import paths, procs
from .node import Node, NodeError
from .node_plan import PlanError
from .paths import ComponentMissing
from .procs import ComponentFailed
from .stack import Stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".devstack"),
        help="where pids, ports, logs and data live (default: ./.devstack)",
    )
    parser.add_argument(
        "--node",
        action="store_true",
        help="up: also a real Kubernetes node (containerd, kubelet, kube-proxy, scheduler, "
        "controller-manager in a network namespace; root, `make node-components`)",
    )


def shell_exports(env: Mapping[str, str], path_first: Sequence[str] = ()) -> str:
    """`export NAME=value` lines for `eval` in sh, bash or zsh; `path_first`
    directories go before the shell's own PATH (expanded by the shell)."""
    lines = [f"export {key}={shlex.quote(value)}\n" for key, value in env.items()]
    if path_first:
        dirs = ":".join(shlex.quote(d) for d in path_first)
        lines.append(f'export PATH={dirs}:"$PATH"\n')
    return "".join(lines)


def command_dirs() -> list[str]:
    """Where the stack's helm and this installation's console scripts live."""
    return [str(paths.cache_dir() / "bin"), sysconfig.get_path("scripts")]


def run(args: argparse.Namespace) -> int:
    stack = Stack(args.state_dir)
    if args.action == "up":
        try:
            state = stack.up()
        except (ComponentFailed, ComponentMissing) as exc:
            print(exc, file=sys.stderr)
            print(
                f"stopped the components that had started; logs stay in {stack.state_dir}",
                file=sys.stderr,
            )
            return 1
        try:
            if args.node:
                handle = Node(args.state_dir)
                node = handle.up(state)
                print(f"node {node.link}: {node.pause_image} imported", file=sys.stderr)
                kafka_for_pods = handle.expose_kafka(state)
                print(f"node: pods reach Kafka at {kafka_for_pods}", file=sys.stderr)
        except (ComponentMissing, NodeError, PlanError) as exc:
            print(exc, file=sys.stderr)
            stack.down()  # a failed node `up` removed what it made; the stack goes too
            print(
                f"stopped the components that had started; logs stay in {stack.state_dir}",
                file=sys.stderr,
            )
            return 1
        print(shell_exports(state.env(), command_dirs()), end="")
        return 0
    if args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    if args.action == "status":
        status = stack.status()
        node_state = Node(args.state_dir).state
        if node_state is not None:
            status.update(
                {f"node {name}": procs.alive(p.pid) for name, p in node_state.processes.items()}
            )
        if not status:
            print("not running")
            return 1
        for name, alive in status.items():
            print(f"{name}: {'running' if alive else 'DEAD'}")
        return 0 if all(status.values()) else 1
    current = stack.state
    if current is None:
        print(f"not running in {stack.state_dir}: run `mailpipe dev up`", file=sys.stderr)
        return 1
    print(shell_exports(current.env(), command_dirs()), end="")
    return 0
