"""`mailpipe dev up [--node] | down | status | env`: the local stack from a shell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import procs
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


def run(args: argparse.Namespace) -> int:
    stack = Stack(args.state_dir)
    if args.action == "up":
        try:
            state = stack.up()
            if args.node:
                node = Node(args.state_dir).up(state)
                print(f"node {node.link}: {node.pause_image} imported", file=sys.stderr)
        except (ComponentFailed, ComponentMissing, NodeError, PlanError) as exc:
            print(exc, file=sys.stderr)
            return 1
        for key, value in state.env().items():
            print(f"{key}={value}")
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
        print("not running", file=sys.stderr)
        return 1
    for key, value in current.env().items():
        print(f"{key}={value}")
    return 0
