"""The audience check, run in a process of its own: the one place a runaway template can be stopped.

Why a process: Python threads cannot be cancelled, so a template looping
without calling anything (nested `for` over a list) once held a fan-out thread
for good, and eight of them stopped fan-out for every namespace. Here every
render gets a SIGPROF after its CPU second (`Renderer(alarm=True)` in this
process's main thread), memory is capped with RLIMIT_AS, and the whole check
has a CPU budget (checked after every row, and RLIMIT_CPU behind it). The
fan-out thread that waits for the check polls its `stopped` flag and the
check's progress (rows done of all, for the campaign's status). What comes
back is the prepared audience (normalised, de-duplicated, every record
rendered once within the limits), so the fan-out renders the same records
again knowing each one is bounded.

Every limit is CPU time, never wall time: a wall-clock limit failed a slow
but valid campaign after 300 s on a quiet node and in 7 s on a busy one. A
check that waits for a CPU keeps waiting (its status says how far it got);
one that needs more CPU than its budget fails the same way on any node of
the same speed.

Protocol: the request is JSON on stdin, the answer JSON on stdout
(`{"audience": ...}` or `{"error": ..., "reason": ...}`); progress comes as
"done rows" lines on the pipe whose descriptor the request names.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from pydantic import ValidationError

from .audience import PreparedAudience, prepare_audience
from .campaign import RENDER_SECONDS, CampaignError, FailReason, Renderer
from .models import CampaignSpec

# Address space of the check: the audience text (a ConfigMap holds 1 MiB, a
# gzipped one a few times that), the prepared recipients and one rendered
# message are far below; a template that builds gigabytes fails instead of
# taking the operator's memory.
CHECK_MEMORY_BYTES = 1024 * 1024 * 1024
# CPU seconds for the whole audience: 100k recipients of an ordinary template
# render in seconds; five CPU minutes is a template slow for every recipient
# (0.24 s each over 5,000 fails here, after about 1,250, on any node).
CHECK_CPU_SECONDS = 300.0
# RLIMIT_CPU behind the per-row check: the interpreter's start, one row's
# render (at most RENDER_SECONDS) and writing the answer fit in this slack.
CPU_LIMIT_SLACK_SECONDS = 10 * RENDER_SECONDS
FEED_JOIN_SECONDS = 5.0  # the feeder ends once the check has read or died
POLL_SECONDS = 0.2  # how often the waiting fan-out thread looks at its stop flag and progress
PROGRESS_EVERY_SECONDS = 0.5  # how often the check reports its progress

Progress = Callable[[int, int], None]  # (rows done, rows)


def check_audience(
    spec_raw: dict[str, Any],
    configmap_data: dict[str, str] | None,
    campaign: str,
    uid: str,
    now: float,
    stopped: Any = False,
    cpu_seconds: float = CHECK_CPU_SECONDS,
    on_progress: Progress | None = None,
) -> PreparedAudience | None:
    """The prepared audience, or None when `stopped` became true; raises CampaignError.

    `on_progress(done, rows)` is called from this thread as the check moves."""
    # Pipes, not temporary files: the operator's root filesystem is read-only
    # and the chart mounts no /tmp. The answer comes on stdout, progress on a
    # pipe of its own (its write end passed to the child), read without
    # blocking between the polls of communicate(), which keeps reading stdout
    # and stderr so a large answer never blocks the child on a full pipe.
    progress_r, progress_w = os.pipe()
    os.set_blocking(progress_r, False)
    request = json.dumps(
        {
            "spec": spec_raw,
            "configmap": configmap_data,
            "campaign": campaign,
            "uid": uid,
            "now": now,
            "cpuSeconds": cpu_seconds,
            "progressFd": progress_w,
        }
    ).encode()
    reader = _ProgressReader(progress_r, on_progress)
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "mailpipe.operator.render_check"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(progress_w,),
        ) as proc:
            os.close(progress_w)
            progress_w = -1
            # The request is written by a thread of its own, not by communicate():
            # after a timeout, communicate() keeps reading but never writes the rest
            # of its input (CPython registers stdin only when `input` is passed, and
            # refuses input on a retry), so a request over the pipe's 64 KiB (an
            # audience of some thousand rows) left the check waiting for it forever.
            feeder = threading.Thread(
                target=_feed, args=(proc.stdin, request), name="render-check-feed", daemon=True
            )
            proc.stdin = None  # communicate() must not close it under the feeder
            feeder.start()
            try:
                while True:
                    if stopped:
                        return None
                    reader.read()
                    try:
                        out, err = proc.communicate(timeout=POLL_SECONDS)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                feeder.join(FEED_JOIN_SECONDS)
        reader.read()
    finally:
        os.close(progress_r)
        if progress_w >= 0:
            os.close(progress_w)
    try:
        answer = json.loads(out)
    except ValueError:
        raise CampaignError(
            _died(proc.returncode, err, cpu_seconds), FailReason.RENDER_LIMIT
        ) from None
    if "error" in answer:
        raise CampaignError(answer["error"], FailReason(answer["reason"]))
    return PreparedAudience.from_json(answer["audience"])


def _feed(stdin: IO[bytes] | None, request: bytes) -> None:
    """Write the whole request to the check and close its stdin (EOF ends its read)."""
    if stdin is None:
        return
    try:
        stdin.write(request)
    except (BrokenPipeError, ValueError):
        pass  # the check ended (killed, or stopped early): nothing to hand over
    finally:
        with contextlib.suppress(OSError, ValueError):
            stdin.close()


class _ProgressReader:
    """The parent's end of the progress pipe: "done rows" lines, the last one wins."""

    def __init__(self, fd: int, on_progress: Progress | None) -> None:
        self._fd = fd
        self._on_progress = on_progress
        self._partial = b""

    def read(self) -> None:
        chunks = [self._partial]
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        *lines, self._partial = b"".join(chunks).split(b"\n")
        if lines and self._on_progress is not None:
            done, rows = (int(n) for n in lines[-1].split())
            self._on_progress(done, rows)


def _died(returncode: int, stderr: bytes, cpu_seconds: float) -> str:
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"rendering the audience needed over {cpu_seconds:g} s of CPU"
    tail = stderr[-300:].decode(errors="replace").strip()
    return f"the audience check ended with status {returncode}: {tail}"


def _progress_writer(fd: int, cpu_seconds: float) -> Progress:
    """The check's own progress hook: the CPU budget, and the progress pipe."""
    written = 0.0

    def progress(done: int, rows: int) -> None:
        nonlocal written
        if time.process_time() > cpu_seconds:
            raise CampaignError(
                f"rendering the audience needed over {cpu_seconds:g} s of CPU ({done} of "
                f"{rows} rows rendered): make the template cheaper or split the audience",
                FailReason.RENDER_LIMIT,
            )
        now = time.monotonic()
        if done < rows and now - written < PROGRESS_EVERY_SECONDS:
            return
        written = now
        os.write(fd, f"{done} {rows}\n".encode())  # one small write: never torn

    return progress


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    try:
        spec = CampaignSpec.model_validate(request["spec"])
    except ValidationError as exc:
        return {"error": str(exc), "reason": FailReason.INVALID_SPEC.value}
    cpu_seconds = float(request.get("cpuSeconds", CHECK_CPU_SECONDS))
    fd = request.get("progressFd")
    progress = _progress_writer(int(fd), cpu_seconds) if fd is not None else None
    try:
        prepared = prepare_audience(
            spec,
            request["configmap"],
            campaign=request["campaign"],
            uid=request["uid"],
            now=request["now"],
            renderer=Renderer(spec, request["campaign"], alarm=True),
            progress=progress,
        )
    except CampaignError as exc:
        return {"error": str(exc), "reason": exc.reason.value}
    except MemoryError:
        return {
            "error": f"the audience check needed over {CHECK_MEMORY_BYTES >> 20} MiB",
            "reason": FailReason.RENDER_LIMIT.value,
        }
    return {"audience": prepared.to_json()}


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHECK_MEMORY_BYTES, CHECK_MEMORY_BYTES))
    request = json.loads(sys.stdin.buffer.read())
    # SIGXCPU at the soft limit, SIGKILL at the hard one: a check that stopped
    # calling its progress hook still ends, whatever the node's load.
    soft = int(float(request.get("cpuSeconds", CHECK_CPU_SECONDS)) + CPU_LIMIT_SLACK_SECONDS)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    answer = _answer(request)
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
