"""The audience check, run in a process of its own: the one place a runaway template can be stopped.

Why a process: Python threads cannot be cancelled, so a template looping
without calling anything (nested `for` over a list) once held a fan-out thread
for good, and eight of them stopped fan-out for every namespace. Here every
render gets a SIGALRM (`Renderer(alarm=True)` in this process's main thread),
memory is capped with RLIMIT_AS, and the fan-out thread that waits for the
check polls its `stopped` flag and kills the process when the whole check
exceeds its time. What comes back is the prepared audience (normalised,
de-duplicated, every record rendered once within the limits), so the fan-out
renders the same records again knowing each one is bounded.

Protocol: the request is JSON on stdin, the answer JSON on stdout
(`{"audience": ...}` or `{"error": ..., "reason": ...}`).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

from pydantic import ValidationError

from .audience import PreparedAudience, prepare_audience
from .campaign import CampaignError, FailReason, Renderer
from .models import CampaignSpec

# Address space of the check: the audience text (a ConfigMap holds 1 MiB, a
# gzipped one a few times that), the prepared recipients and one rendered
# message are far below; a template that builds gigabytes fails instead of
# taking the operator's memory.
CHECK_MEMORY_BYTES = 1024 * 1024 * 1024
# The whole audience: 100k recipients render in seconds; five minutes is a
# template slow for every recipient (each just under its one-second limit).
CHECK_SECONDS = 300.0
STARTUP_SECONDS = 30.0  # the interpreter and imports, on a loaded node
POLL_SECONDS = 0.2  # how often the waiting fan-out thread looks at its stop flag


def check_audience(
    spec_raw: dict[str, Any],
    configmap_data: dict[str, str] | None,
    campaign: str,
    uid: str,
    now: float,
    stopped: Any = False,
    seconds: float = CHECK_SECONDS,
) -> PreparedAudience | None:
    """The prepared audience, or None when `stopped` became true; raises CampaignError."""
    request = json.dumps(
        {
            "spec": spec_raw,
            "configmap": configmap_data,
            "campaign": campaign,
            "uid": uid,
            "now": now,
        }
    ).encode()
    # Pipes, not temporary files: the operator's root filesystem is read-only
    # and the chart mounts no /tmp, so a temporary file cannot be created there.
    # communicate() reads both pipes while it waits, so a large answer cannot
    # block the process on a full pipe; each call waits POLL_SECONDS, then the
    # stop flag and the deadline are looked at, and the next call goes on
    # where the last one stopped (input included).
    with subprocess.Popen(
        [sys.executable, "-m", "mailpipe.operator.render_check"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            deadline = time.monotonic() + seconds + STARTUP_SECONDS
            pending: bytes | None = request
            while True:
                if stopped:
                    return None
                if time.monotonic() > deadline:
                    raise CampaignError(
                        f"rendering the audience took over {seconds:g} s",
                        FailReason.RENDER_LIMIT,
                    )
                try:
                    out, err = proc.communicate(pending, timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    pending = None  # already handed over; communicate() keeps writing it
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    try:
        answer = json.loads(out)
    except ValueError:
        tail = err[-300:].decode(errors="replace").strip()
        raise CampaignError(
            f"the audience check ended with status {proc.returncode}: {tail}",
            FailReason.RENDER_LIMIT,
        ) from None
    if "error" in answer:
        raise CampaignError(answer["error"], FailReason(answer["reason"]))
    return PreparedAudience.from_json(answer["audience"])


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    try:
        spec = CampaignSpec.model_validate(request["spec"])
    except ValidationError as exc:
        return {"error": str(exc), "reason": FailReason.INVALID_SPEC.value}
    try:
        prepared = prepare_audience(
            spec,
            request["configmap"],
            campaign=request["campaign"],
            uid=request["uid"],
            now=request["now"],
            renderer=Renderer(spec, request["campaign"], alarm=True),
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
    answer = _answer(json.loads(sys.stdin.buffer.read()))
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
