"""One stack shared by the processes of one test run (pytest-xdist workers).

Starting a stack is the one costly step of a test session (a cold Kafka JVM,
etcd and the API server: about a minute on a loaded 2-core machine), and the
tests isolate themselves by namespace and unique topics, so the workers of a
parallel run share one. The first process to ask starts it, under a file lock
(the others wait on that lock, then find its state file and attach); each
process records itself as a user while it holds the stack.

The components die with the process that started them (the kernel's
parent-death signal, `procs.die_with_this_process`), so that process stops
the stack last: at its own end it waits until every other user has detached
or died, then stops it. A run that is interrupted therefore still stops
everything (tests/devstack/test_interrupt.py), and a run that is killed takes
the stack down with the starting process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import dns, harness, procs
from .stack import Stack

LOCK_FILE = "lock"
USERS_FILE = "users"
STACK_DIR = "stack"
# The starter waits for the other workers' last tests; pytest-timeout bounds each.
LAST_USER_WAIT_SECONDS = 3600.0
USERS_POLL_SECONDS = 0.2


class SharedStackChanged(RuntimeError):
    """A process sharing the stack tried to change it for everyone."""


class SharedStack(Stack):
    """The stack as its sharers see it: they may use it, not change it.

    Replacing the DNS records or stopping a component changes what every
    other worker's tests see; such a test runs alone (the `exclusive` marker,
    scripts/run-tests.sh), on a stack of its own."""

    def set_dns(self, zones: Iterable[dns.Zone]) -> None:
        raise SharedStackChanged(
            "set_dns replaces every worker's DNS records: run the test alone (mark it exclusive)"
        )

    def stop_component(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        raise SharedStackChanged(
            f"stopping {name} stops it for every worker: run the test alone (mark it exclusive)"
        )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _users(directory: Path) -> set[int]:
    try:
        text = (directory / USERS_FILE).read_text()
    except FileNotFoundError:
        return set()
    return {int(word) for word in text.split()}


def _write_users(directory: Path, users: set[int]) -> None:
    tmp = directory / f"{USERS_FILE}.tmp"
    tmp.write_text(" ".join(str(u) for u in sorted(users)))
    tmp.replace(directory / USERS_FILE)


def live_users(directory: Path, but: int) -> set[int]:
    """Users other than `but` that are still running (a crashed worker never detaches)."""
    return {pid for pid in _users(directory) if pid != but and procs.alive(pid)}


@contextlib.contextmanager
def shared_stack(directory: Path) -> Iterator[SharedStack]:
    """The run's stack in `directory`: started here if no one has, else attached to."""
    directory.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    stack = SharedStack(directory / STACK_DIR)
    starter = False
    try:
        with _locked(directory):
            _write_users(directory, _users(directory) | {me})
            state = stack.state
            if state is None or not all(procs.alive(p.pid) for p in state.processes.values()):
                starter = True
                stack.up()
        yield stack
    finally:
        with _locked(directory):
            _write_users(directory, _users(directory) - {me})
        if starter:
            harness.wait_for(
                lambda: not live_users(directory, me),
                LAST_USER_WAIT_SECONDS,
                "the other workers to finish with the shared stack",
                interval_seconds=USERS_POLL_SECONDS,
            )
            stack.down()
