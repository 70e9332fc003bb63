"""`mailpipe dev up | down | status | env`: the local stack from a shell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    stack = Stack(args.state_dir)
    if args.action == "up":
        try:
            state = stack.up()
        except ComponentFailed as exc:
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
