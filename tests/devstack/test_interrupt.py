"""A run interrupted by a signal leaves no process behind (issue 10, point 10).

An interrupted `make bench-operator` used to leave the operator, etcd and
kube-apiserver running: the children live in process groups of their own, so
a signal to the run reaches none of them, and a second signal during the
clean-up (a second Ctrl-C, a supervisor repeating SIGTERM while the operator
took a minute to stop) aborted it half way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailpipe.devstack import procs
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
STARTED_SECONDS = 30.0  # three sleeping children start at once
EXIT_SECONDS = 60.0  # the run's clean-up, with its deliberate pause
BENCH_STARTED_SECONDS = 300.0  # Kafka's JVM, etcd and kube-apiserver on a loaded machine
BENCH_EXIT_SECONDS = 180.0  # operator (60 s grace at worst) then four components (10 s each)

RUN = """
import sys, time
from pathlib import Path
from mailpipe.devstack import harness

out = Path(sys.argv[1])
with harness.stop_on_signal():
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    kids = [harness.start(f"k{i}", sleep, out / f"k{i}.log") for i in range(3)]
    (out / "pids").write_text(" ".join(str(k.pid) for k in kids))
    try:
        time.sleep(600)
    finally:
        (out / "cleaning").write_text("")
        time.sleep(2)  # a slow clean-up: the second signal arrives meanwhile
        kids[0].stop()
"""


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody waits for any more (it holds nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def descendants(root: int) -> set[int]:
    """Every process below `root`, from /proc (children run in sessions of their own)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_second_signal_during_the_clean_up_still_leaves_no_child(tmp_path: Path) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", RUN, str(tmp_path)], cwd=ROOT, start_new_session=True
    )
    try:
        wait_for(lambda: (tmp_path / "pids").exists(), STARTED_SECONDS, "children started")
        kids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        run.send_signal(signal.SIGTERM)
        wait_for(lambda: (tmp_path / "cleaning").exists(), EXIT_SECONDS, "the clean-up")
        run.send_signal(signal.SIGTERM)
        run.send_signal(signal.SIGINT)
        assert run.wait(EXIT_SECONDS) == 128 + signal.SIGTERM
        assert [pid for pid in kids if not gone(pid)] == []
    finally:
        procs.signal_group(run.pid, signal.SIGKILL)
        run.wait()


@pytest.mark.operator
@pytest.mark.faults
def test_an_interrupted_bench_operator_leaves_no_process_behind(tmp_path: Path) -> None:
    log = (tmp_path / "bench.log").open("wb")
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench.operator", "--recipients", "0", "--pools", "3"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen: set[int] = set()
    try:

        def operator_running() -> bool:
            seen.update(descendants(bench.pid))
            assert bench.poll() is None, (tmp_path / "bench.log").read_text()[-3000:]
            return any(" operator " in command_line(pid) for pid in seen)

        wait_for(operator_running, BENCH_STARTED_SECONDS, "the bench's operator to start")
        time.sleep(2)  # the operator is starting up: the worst moment to be interrupted
        seen.update(descendants(bench.pid))
        names = {pid: command_line(pid)[:80] for pid in seen}
        assert any("etcd" in c for c in names.values()), names
        assert any("kube-apiserver" in c for c in names.values()), names
        os.kill(bench.pid, signal.SIGTERM)
        time.sleep(1)  # it is stopping the operator now; an impatient user presses Ctrl-C
        with contextlib.suppress(ProcessLookupError):
            os.kill(bench.pid, signal.SIGINT)
        status = bench.wait(BENCH_EXIT_SECONDS)
        time.sleep(1)  # what the run stopped has been reaped
        left = {pid: names[pid] for pid in seen if not gone(pid)}
        assert left == {}, left
        assert status == 128 + signal.SIGTERM
    finally:
        for pid in seen | {bench.pid}:  # whatever the outcome, this test strands nothing
            if not gone(pid):
                procs.signal_group(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        bench.wait()
        log.close()
