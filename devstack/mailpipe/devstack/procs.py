"""Starting, probing and stopping processes, by pid: the bottom of the harness.

Each process runs in its own process group (`start_new_session`), so stopping
it signals exactly what was started — its children included — and nothing
else. `harness` builds the demo's, tests' and benchmarks' children on this;
`stack` the components' (ARCHITECTURE.md, components).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mailpipe.contracts.errors import MailpipeError

# Popen handles of the processes this process started: kept so they are reaped
# (no zombies, no ResourceWarning) when stopped; other processes go by pid only.
_children: dict[int, subprocess.Popen[bytes]] = {}
# Whether children die with this process (`die_with_this_process`): on for a
# test session, off for `mailpipe dev up`, whose stack outlives the command.
_tied = threading.Event()
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ComponentFailed(MailpipeError, RuntimeError):
    """A component did not become ready; the message carries its log tail."""

    def __init__(self, name: str, reason: str, log: Path | None) -> None:
        tail = log_tail(log) if log else ""
        super().__init__(f"{name} failed to start: {reason}\n--- last lines of {log} ---\n{tail}")
        self.component = name


LOG_TAIL_LINES = 40  # enough for a Python traceback or a JVM's last error, short enough to read
STOP_GRACE_SECONDS = 10.0  # a relay's final commit and a JVM's shutdown hooks fit in this
KILL_WAIT_SECONDS = 5.0  # SIGKILL cannot be refused; this only waits for the kernel to reap
STOP_POLL_SECONDS = 0.1
PORT_PROBE_TIMEOUT_SECONDS = 1.0  # loopback: a listener answers at once or not at all


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
FREE_PORT_LOW = 10_000  # below: well-known and registered services a machine may run
FREE_PORT_TRIES = 200


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(p) for p in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` and on every address, outside the kernel's
    ephemeral range.

    The OS's own pick (bind to port 0) is an ephemeral port: between this call
    and the child's bind, an outgoing connection of any process may take it as
    its source port, and parallel test workers made that happen (a kopf probe
    port "already in use"). A random port below the ephemeral range is never
    handed out by the kernel, and workers picking at random rarely meet."""
    low, high = _ephemeral_range()
    start, stop = (FREE_PORT_LOW, low) if low - FREE_PORT_LOW >= 1000 else (high + 1, 65536)
    pick = random.SystemRandom()
    for _ in range(FREE_PORT_TRIES):
        port = pick.randrange(start, stop)
        if _bindable(host, port) and (host == "0.0.0.0" or _bindable("0.0.0.0", port)):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


def die_with_this_process() -> None:
    """From now on, a child started from the main thread gets SIGTERM when this
    process dies, however it dies (SIGKILL included), on Linux.

    A child runs in a session of its own, so a signal to this process never
    reaches it; a run that cannot clean up (killed, or crashed) used to leave
    Kafka, etcd, the apiserver, dnsmasq and the operator running. The kernel's
    parent-death signal follows the thread that forked, hence the main thread
    only: a child started from a short-lived worker thread would die with it."""
    _tied.set()


def _parent_death_signal() -> Callable[[], None] | None:
    """The pre-exec hook that asks the kernel for SIGTERM when this process dies."""
    if not _tied.is_set() or not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    parent = os.getpid()

    def tie() -> None:  # in the child, between fork and exec
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return tie


def spawn(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Start a process in its own session with output to `log`; returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_parent_death_signal(),  # one prctl call: takes no lock
        )
    _children[proc.pid] = proc
    return proc.pid


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=PORT_PROBE_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def exit_code(pid: int) -> int | None:
    """The exit status of a process this process started, once it has exited."""
    child = _children.get(pid)
    return None if child is None else child.poll()


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group `pid` leads; quiet if it is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def wait_gone(pid: int, seconds: float) -> bool:
    """Wait up to `seconds` for the process and its group to be gone."""
    deadline = time.monotonic() + seconds
    while True:
        if not alive(pid) and not _group_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(STOP_POLL_SECONDS)


def stop(
    pid: int,
    grace_seconds: float = STOP_GRACE_SECONDS,
    sig: signal.Signals = signal.SIGTERM,
    signalled: bool = False,
) -> int | None:
    """`sig` to the process group (unless `signalled` already), then SIGKILL what
    is left after the grace period. Returns the exit status when the process was
    one of ours (else None)."""
    if not signalled:
        signal_group(pid, sig)
    if not wait_gone(pid, grace_seconds):
        signal_group(pid, signal.SIGKILL)
        wait_gone(pid, KILL_WAIT_SECONDS)
    return _forget(pid)


def started() -> list[int]:
    """Pids of the processes this process started and has not stopped yet."""
    return [pid for pid, child in list(_children.items()) if child.poll() is None]


def _forget(pid: int) -> int | None:
    child = _children.pop(pid, None)
    return None if child is None else child.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
