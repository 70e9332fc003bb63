"""Starting, probing and stopping the stack's processes, by pid.

Each component runs in its own process group (`start_new_session`), so `down`
can signal exactly what `up` started — children included — and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mailpipe.contracts.errors import MailpipeError

# Popen handles of the processes this process started: kept so they are reaped
# (no zombies, no ResourceWarning) when stopped; other processes go by pid only.
_children: dict[int, subprocess.Popen[bytes]] = {}


class ComponentFailed(MailpipeError, RuntimeError):
    """A component did not become ready; the message carries its log tail."""

    def __init__(self, name: str, reason: str, log: Path | None) -> None:
        tail = log_tail(log) if log else ""
        super().__init__(f"{name} failed to start: {reason}\n--- last lines of {log} ---\n{tail}")
        self.component = name


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host`; the OS picks it, so parallel runs don't collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


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
        )
    _children[proc.pid] = proc
    return proc.pid


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


def wait_ready(
    name: str,
    pid: int,
    probe: Callable[[], bool],
    log: Path,
    timeout_seconds: float,
    interval_seconds: float = 0.25,
) -> None:
    """Poll `probe` until it succeeds; fail early if the process died."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            raise ComponentFailed(name, f"process {pid} exited", log)
        try:
            if probe():
                return
        except Exception:  # any probe error means "not ready yet"
            pass
        time.sleep(interval_seconds)
    raise ComponentFailed(name, f"not ready after {timeout_seconds:.0f}s", log)


def stop(pid: int, grace_seconds: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid) and not _group_alive(pid):
                _children.pop(pid, None)
                return
            time.sleep(0.1)
    _children.pop(pid, None)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
