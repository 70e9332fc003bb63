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
from pathlib import Path

import pytest

from mailpipe.devstack import procs
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
STARTED_SECONDS = 30.0  # three sleeping children start at once
EXIT_SECONDS = 60.0  # the run's clean-up, with its deliberate pause
BENCH_STARTED_SECONDS = 300.0  # Kafka's JVM, etcd and kube-apiserver on a loaded machine
BENCH_EXIT_SECONDS = 180.0  # operator (60 s grace at worst) then four components (10 s each)
REAPED_SECONDS = 10.0  # the kernel reaps a killed process at once; this is a loaded machine
OPERATOR_FIRST_LINE = "Kafka login:"  # mailpipe.operator.main, just before kopf.run
KOPF_STOPPING = "Operator is stopping"  # kopf, on the signal it was sent

RUN = """
import signal, sys, time
from pathlib import Path
from mailpipe.devstack import harness

out = Path(sys.argv[1])
with harness.stop_on_signal():
    sleep = [sys.executable, "-c", "import signal; signal.pause()"]
    kids = [harness.start(f"k{i}", sleep, out / f"k{i}.log") for i in range(3)]
    (out / "pids").write_text(" ".join(str(k.pid) for k in kids))
    try:
        while True:  # until the run is signalled: the point of the test
            time.sleep(0.1)  # not signal.pause(): it sleeps on if the signal lands just before it
    finally:
        (out / "cleaning").write_text("")
        time.sleep(2)  # a slow clean-up: the second signal arrives meanwhile
        kids[0].stop()
"""


def _workdir(bench_log: Path) -> Path:
    """The bench's work directory, from its first line ("logs in DIR")."""
    wait_for(lambda: "logs in " in bench_log.read_text(), BENCH_STARTED_SECONDS, "the bench's log")
    return Path(bench_log.read_text().split("logs in ", 1)[1].splitlines()[0].strip())


def _logged(log: Path, words: str) -> bool:
    try:
        return words in log.read_text(errors="replace")
    except OSError:
        return False


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
        # The operator is starting up (its first log line, kopf not yet running):
        # the worst moment to be interrupted.
        operator_log = _workdir(tmp_path / "bench.log") / "operator.log"
        wait_for(lambda: _logged(operator_log, OPERATOR_FIRST_LINE), BENCH_STARTED_SECONDS, "it")
        seen.update(descendants(bench.pid))
        names = {pid: command_line(pid)[:80] for pid in seen}
        operators = [pid for pid, c in names.items() if " operator " in c]
        assert any("etcd" in c for c in names.values()), names
        assert any("kube-apiserver" in c for c in names.values()), names
        os.kill(bench.pid, signal.SIGTERM)
        # It is stopping the operator now (kopf says so, or it is already gone):
        # an impatient user presses Ctrl-C.
        wait_for(
            lambda: _logged(operator_log, KOPF_STOPPING) or all(gone(p) for p in operators),
            BENCH_EXIT_SECONDS,
            "the run to stop its operator",
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(bench.pid, signal.SIGINT)
        status = bench.wait(BENCH_EXIT_SECONDS)
        # what the run stopped has been reaped (a zombie counts as gone)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: all(gone(p) for p in seen), REAPED_SECONDS, "the reaping")
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


# -- a pytest run stopped by a signal (issue 19) ------------------------------------------

SESSION_STARTED_SECONDS = 300.0  # the child run starts a whole stack on a loaded machine
# The operator's stop, then four components (grace 10 s each); CI's parallel phase
# runs this beside three workers, the exclusive phase and the image build.
SESSION_EXIT_SECONDS = 300.0
READY_FILE = "ready"

# A small suite run by the child pytest: the real session fixtures (tests/conftest.py,
# loaded with -p) start the stack, a session fixture an operator; its one test
# says so and waits to be interrupted.
STACK_SESSION = """
import signal
import time
from pathlib import Path

import pytest

from mailpipe.devstack import harness
from mailpipe.devstack.procs import free_port

OUT = Path(__file__).parent


@pytest.fixture(scope="session")
def operator(devstack, cli_env):
    with harness.Children(OUT / "operator") as children:
        args = ["operator", "--namespace", "default", "--liveness-port", str(free_port())]
        yield children.mailpipe("operator", args, cli_env)


def test_waits_to_be_interrupted(operator, kafka_bootstrap):
    (OUT / "ready").write_text(str(operator.pid))
    while True:  # until the run is signalled: the point of the test
        time.sleep(0.1)  # not signal.pause(): it sleeps on if the signal lands just before it
"""

# The same shape without the stack: two sleeping children of a session fixture.
CHILDREN_SESSION = """
import signal
import sys
import time
from pathlib import Path

import pytest

from mailpipe.devstack import harness

OUT = Path(__file__).parent


@pytest.fixture(scope="session")
def sleepers():
    with harness.Children(OUT / "kids") as children:
        sleep = [sys.executable, "-c", "import signal; signal.pause()"]
        yield [children.start(f"k{i}", sleep) for i in range(2)]


def test_waits_to_be_interrupted(sleepers):
    (OUT / "ready").write_text(" ".join(str(k.pid) for k in sleepers))
    while True:  # until the run is signalled: the point of the test
        time.sleep(0.1)  # not signal.pause(): it sleeps on if the signal lands just before it
"""


# The same under pytest-xdist (scripts/run-tests.sh's parallel phase): the test
# runs in a worker.
WORKER_SESSION = """
import signal
import sys
import time
from pathlib import Path

import pytest

from mailpipe.devstack import harness

OUT = Path(__file__).parent


@pytest.fixture(scope="session")
def sleepers():
    with harness.Children(OUT / "kids") as children:
        sleep = [sys.executable, "-c", "import signal; signal.pause()"]
        yield [children.start(f"k{i}", sleep) for i in range(2)]


def test_waits_to_be_interrupted(sleepers):
    (OUT / "ready").write_text(" ".join(str(k.pid) for k in sleepers))
    while True:  # until the run is signalled: the point of the test
        time.sleep(0.1)  # not signal.pause(): it sleeps on if the signal lands just before it
"""


def _start_session(
    tmp_path: Path, source: str, *options: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """A pytest run of `source`, with the suite's configuration and root fixtures."""
    (tmp_path / "test_held.py").write_text(source)
    log = tmp_path / "pytest.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [
                *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
                *("-c", str(ROOT / "pyproject.toml"), "-p", "tests.conftest", *options),
                str(tmp_path / "test_held.py"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return run, log


def _held(run: subprocess.Popen[bytes], tmp_path: Path, log: Path) -> bool:
    assert run.poll() is None, log.read_text()[-3000:]
    return (tmp_path / READY_FILE).exists()


def test_a_test_run_stopped_by_sigterm_stops_the_stack_and_the_operator(tmp_path: Path) -> None:
    """`timeout 20m make test` used to leave Kafka, etcd, the apiserver, dnsmasq and the
    operator running: pytest died on SIGTERM without running a fixture finalizer."""
    run, log = _start_session(tmp_path, STACK_SESSION)
    seen: set[int] = set()
    try:
        wait_for(lambda: _held(run, tmp_path, log), SESSION_STARTED_SECONDS, "the stack run")
        seen = descendants(run.pid)
        names = {pid: command_line(pid) for pid in seen}
        for component in ("etcd", "kube-apiserver", "kafka.Kafka", "dnsmasq", " operator "):
            assert any(component in c for c in names.values()), (component, names)
        names = {pid: c[:100] for pid, c in names.items()}
        run.send_signal(signal.SIGTERM)
        try:
            wait_for(lambda: "KeyboardInterrupt" in log.read_text(), SESSION_EXIT_SECONDS, "it")
        except AssertionError as exc:  # say where the clean-up stands
            alive = {pid: names[pid] for pid in seen if not gone(pid)}
            operator_log = tmp_path / "operator" / "operator.log"
            tail = operator_log.read_text()[-1500:] if operator_log.exists() else "(none)"
            raise AssertionError(f"{exc}; still running: {alive}; operator log: {tail}") from None
        run.send_signal(signal.SIGTERM)  # a supervisor repeating itself: the clean-up goes on
        status = run.wait(SESSION_EXIT_SECONDS)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: all(gone(p) for p in seen), REAPED_SECONDS, "the reaping")
        left = {pid: names[pid] for pid in seen if not gone(pid)}
        assert left == {}, left
        # 128+15 from the run's own exit; -15 when the repeated SIGTERM landed after
        # the clean-up had finished (the interpreter was exiting): nothing was cut short,
        # as `left` shows
        assert status in (128 + signal.SIGTERM, -signal.SIGTERM), log.read_text()[-3000:]
    finally:
        _strand_nothing(run, seen)


def test_a_parallel_run_stopped_by_sigterm_leaves_no_child_of_its_workers(
    tmp_path: Path,
) -> None:
    """The signal goes to pytest-xdist's controller alone (as `kill` sends it); the
    workers, which hold the fixtures and the children (and the shared stack,
    `mailpipe.devstack.shared`), stop them: xdist interrupts them as it stops,
    and tests/conftest.py turns that into a teardown."""
    run, log = _start_session(tmp_path, WORKER_SESSION, "-n", "2")
    kids: list[int] = []
    try:
        wait_for(lambda: _held(run, tmp_path, log), SESSION_STARTED_SECONDS, "the workers' run")
        kids = [int(p) for p in (tmp_path / READY_FILE).read_text().split()]
        assert kids and not any(gone(pid) for pid in kids)
        run.send_signal(signal.SIGTERM)
        status = run.wait(SESSION_EXIT_SECONDS)
        # torn down by the worker, or (a worker slower to stop than xdist waits)
        # by the kernel's parent-death signal when xdist kills it: gone either way
        wait_for(lambda: all(gone(pid) for pid in kids), REAPED_SECONDS, "the children's end")
        assert status == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        _strand_nothing(run, set(kids))


def test_a_killed_test_run_takes_its_children_with_it(tmp_path: Path) -> None:
    """SIGKILL runs no clean-up at all: the kernel's parent-death signal stops them."""
    run, log = _start_session(tmp_path, CHILDREN_SESSION)
    kids: list[int] = []
    try:
        wait_for(lambda: _held(run, tmp_path, log), STARTED_SECONDS, "the children's run")
        kids = [int(p) for p in (tmp_path / READY_FILE).read_text().split()]
        assert kids and not any(gone(pid) for pid in kids)
        run.kill()
        run.wait(EXIT_SECONDS)
        wait_for(lambda: all(gone(pid) for pid in kids), EXIT_SECONDS, "the children to die")
    finally:
        _strand_nothing(run, set(kids))


def _strand_nothing(run: subprocess.Popen[bytes], pids: set[int]) -> None:
    """Whatever the outcome, this test leaves no process of its own behind."""
    for pid in pids | {run.pid}:
        if not gone(pid):
            procs.signal_group(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    run.wait()
