"""Stopping a run on a signal, leaving no process behind.

The benchmarks and the demo start Kafka, etcd, kube-apiserver, dnsmasq and the
operator as children in their own process groups (so stopping one signals
exactly what it started). A signal to the run itself therefore reaches none of
them: the run must stop them, and an interrupted clean-up strands them. An
interrupted `make bench-operator` used to leave the operator, etcd and
kube-apiserver running (issue 10, point 10).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

from . import procs

# What a user or a supervisor sends to stop a run: Ctrl-C, `kill`, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signal() -> Iterator[None]:
    """Run a block that starts processes so that a signal never strands them.

    The first SIGINT, SIGTERM or SIGHUP becomes `SystemExit(128 + signal)`, so
    the block's `finally` clauses stop what they started. Signals after that
    are ignored: a second Ctrl-C, or a supervisor repeating its SIGTERM while
    the operator takes its time to stop, used to abort that clean-up half way
    and leave the operator, etcd and kube-apiserver running. On the way out,
    whatever this process started and did not stop (a clean-up cut short, a
    component spawned but not yet recorded in the stack's state) is stopped by
    process group.
    """
    stopping = False

    def on_signal(signum: int, _: object) -> None:
        nonlocal stopping
        if stopping:
            print(f"{signal.Signals(signum).name}: already stopping", file=sys.stderr)
            return
        stopping = True
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        stopping = True  # from here on a signal is ignored: the sweep must finish
        left = procs.started()
        for pid in left:
            procs.signal_group(pid, signal.SIGTERM)
        for pid in left:
            procs.stop(pid, signalled=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
