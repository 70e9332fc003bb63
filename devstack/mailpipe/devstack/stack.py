"""The local stack: Kafka, etcd + kube-apiserver and dnsmasq, up and down by pid.

State (ports, pids, paths) lives in `state.json` inside the state directory, so
`down`, `status` and `env` work from any process: the CLI, a pytest session,
the demo. Kafka's JVM and etcd start in parallel because together they are
most of the start-up time.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import certs, dns, harness, kafka, kube, procs
from .node import Node
from .procs import ComponentFailed

STATE_FILE = "state.json"
# What a stack stores, relative to its state directory. Each `up` starts them
# empty: Kafka's storage is formatted with a new cluster id (the old data would
# refuse to start under it), and ports, certificates and tokens are new too.
DATA_DIRS = ("kafka/data", "kube/etcd-data")
KAFKA_START_TIMEOUT_SECONDS = 120  # a cold JVM on a loaded 2-core machine
KUBE_START_TIMEOUT_SECONDS = 90
ETCD_START_TIMEOUT_SECONDS = 30  # a Go binary on local disk with fsync off
DNS_START_TIMEOUT_SECONDS = 15
DNS_POLL_SECONDS = 0.05  # dnsmasq answers within milliseconds; restarted once per test
COMPONENT_STOP_GRACE_SECONDS = 30.0  # Kafka's controlled shutdown on a loaded machine


def _wait_ready(
    name: str,
    pid: int,
    probe: Callable[[], bool],
    log: Path,
    timeout_seconds: float,
    interval_seconds: float = harness.POLL_INTERVAL_SECONDS,
) -> None:
    """Poll a component's readiness probe; ComponentFailed (log tail) if it died or hung.

    A probe that raises means "not ready yet": the server is still starting."""
    try:
        harness.wait_for(
            probe,
            timeout_seconds,
            f"{name} to be ready",
            watch=[harness.Child(name, pid, log)],
            interval_seconds=interval_seconds,
            retry_on=(Exception,),
        )
    except harness.ChildExited as exc:
        raise ComponentFailed(name, f"process {pid} exited", log) from exc
    except harness.TimedOut as exc:
        raise ComponentFailed(name, f"not ready after {timeout_seconds:.0f}s", log) from exc


@dataclass
class Process:
    pid: int
    log: str
    # How it was started, so `start_component` brings it back after a fault
    # test's `stop_component`: same ports, same data, same log.
    command: list[str] = field(default_factory=list)


@dataclass
class StackState:
    state_dir: str
    kafka_bootstrap: str = ""
    kafka_pods_bootstrap: str = ""  # for pods on the node, see kafka.pods_listener_properties
    kube_server: str = ""
    kubeconfig: str = ""
    dns_port: int = 0
    processes: dict[str, Process] = field(default_factory=dict)
    started_at: float = 0.0

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        procs_ = {k: Process(**v) for k, v in data.pop("processes").items()}
        return cls(processes=procs_, **data)

    def env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": self.kubeconfig,
            "KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "MAILPIPE_DNS": f"127.0.0.1:{self.dns_port}",
            # kubectl caches discovery per host:port; ports are reused across
            # stacks, so a shared cache would answer with an old cluster's types.
            "KUBECACHEDIR": str(Path(self.state_dir) / "kubecache"),
        }


class Stack:
    """Handle on one stack's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()

    @property
    def state(self) -> StackState | None:
        return StackState.load(self.state_dir)

    def up(self, zones: Iterable[dns.Zone] = ()) -> StackState:
        """Start every component, with empty data; on any failure stop what
        started and re-raise. A stack already running here is returned as it is."""
        existing = self.state
        if existing is not None and all(procs.alive(p.pid) for p in existing.processes.values()):
            return existing
        if existing is not None:
            self.down()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for data in DATA_DIRS:  # a stack stopped by `down`: start afresh, not over its data
            shutil.rmtree(self.state_dir / data, ignore_errors=True)
        state = StackState(state_dir=str(self.state_dir), started_at=time.time())
        try:
            self._start(state, list(zones))
        except BaseException:
            state.save()
            self.down()
            raise
        state.save()
        return state

    def _start(self, state: StackState, zones: list[dns.Zone]) -> None:
        kube_dir = self.state_dir / "kube"
        kube_dir.mkdir(parents=True, exist_ok=True)
        ports = kube.allocate_ports()

        # etcd and the Kafka JVM first, concurrently; the apiserver needs etcd.
        etcd_log = kube_dir / "etcd.log"
        etcd_cmd = kube.etcd_command(ports, self.state_dir / DATA_DIRS[1])
        etcd_pid = procs.spawn(etcd_cmd, etcd_log)
        state.processes["etcd"] = Process(etcd_pid, str(etcd_log), etcd_cmd)
        state.save()

        kafka_ports, kafka_cmd, kafka_log = kafka.prepare(self.state_dir)
        kafka_pid = procs.spawn(kafka_cmd, kafka_log)
        state.processes["kafka"] = Process(kafka_pid, str(kafka_log), kafka_cmd)
        state.kafka_bootstrap = kafka_ports.bootstrap
        state.kafka_pods_bootstrap = kafka_ports.pods_bootstrap
        state.save()

        self._start_dns(state, zones)

        pki = certs.generate(kube_dir / "pki", kube.KUBERNETES_SERVICE_IP)
        _wait_ready(
            "etcd",
            etcd_pid,
            lambda: kube.etcd_is_ready(ports),
            etcd_log,
            ETCD_START_TIMEOUT_SECONDS,
        )
        api_log = kube_dir / "apiserver.log"
        api_cmd = kube.apiserver_command(ports, pki, kube_dir / "certs")
        api_pid = procs.spawn(api_cmd, api_log)
        state.processes["kube-apiserver"] = Process(api_pid, str(api_log), api_cmd)
        state.kube_server = ports.server
        state.kubeconfig = str(self.state_dir / "kubeconfig")
        kube.write_kubeconfig(Path(state.kubeconfig), ports.server, pki)
        state.save()

        _wait_ready(
            "kube-apiserver",
            api_pid,
            lambda: kube.is_ready(ports.server, pki),
            api_log,
            KUBE_START_TIMEOUT_SECONDS,
        )
        _wait_ready(
            "kafka",
            kafka_pid,
            lambda: kafka.is_ready(kafka_ports.bootstrap),
            kafka_log,
            KAFKA_START_TIMEOUT_SECONDS,
        )

    def _start_dns(self, state: StackState, zones: list[dns.Zone]) -> None:
        dns_dir = self.state_dir / "dns"
        dns_dir.mkdir(parents=True, exist_ok=True)
        if not state.dns_port:
            state.dns_port = procs.free_port()
        conf = dns_dir / "dnsmasq.conf"
        log = dns_dir / "dnsmasq.log"
        conf.write_text(dns.render_config(zones, state.dns_port, dns_dir / "pid", log))
        dns_cmd = dns.command(conf)
        pid = procs.spawn(dns_cmd, log)
        state.processes["dnsmasq"] = Process(pid, str(log), dns_cmd)
        state.save()
        _wait_ready(
            "dnsmasq",
            pid,
            lambda: dns.is_ready(state.dns_port),
            log,
            DNS_START_TIMEOUT_SECONDS,
            DNS_POLL_SECONDS,
        )

    def set_dns(self, zones: Iterable[dns.Zone]) -> None:
        """Replace every DNS record: restart dnsmasq on the same port with the new zones."""
        state = self._require()
        old = state.processes.pop("dnsmasq", None)
        if old is not None:
            procs.stop(old.pid)
        self._start_dns(state, list(zones))

    # -- faults: one component down and back, the rest untouched --------------------

    def stop_component(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one component (`sig`: SIGTERM a clean stop, SIGKILL a crash).

        It stays in the state with its command, so `start_component` brings it
        back on the same ports and data: what clients see of a restart."""
        state = self._require()
        proc = state.processes[name]
        procs.stop(proc.pid, COMPONENT_STOP_GRACE_SECONDS, sig)

    def start_component(self, name: str) -> None:
        """Start a component `stop_component` stopped, and wait until it serves again."""
        state = self._require()
        proc = state.processes[name]
        if procs.alive(proc.pid):
            return
        if not proc.command:
            raise RuntimeError(f"{name}: no command recorded (a stack started by an older version)")
        proc.pid = procs.spawn(proc.command, Path(proc.log))
        state.save()
        probes: dict[str, tuple[Callable[[], bool], float]] = {
            "kafka": (lambda: kafka.is_ready(state.kafka_bootstrap), KAFKA_START_TIMEOUT_SECONDS),
            "kube-apiserver": (
                lambda: kube.is_ready_for(Path(state.kubeconfig)),
                KUBE_START_TIMEOUT_SECONDS,
            ),
            "dnsmasq": (lambda: dns.is_ready(state.dns_port), DNS_START_TIMEOUT_SECONDS),
            "etcd": (lambda: procs.alive(proc.pid), ETCD_START_TIMEOUT_SECONDS),
        }
        probe, timeout = probes[name]
        _wait_ready(name, proc.pid, probe, Path(proc.log), timeout)

    def down(self) -> list[str]:
        """Stop exactly the processes `up` started; returns their names."""
        state = self.state
        if state is None:
            return []
        stopped: list[str] = []
        try:
            # The node first: its kubelet and controllers talk to the API server.
            # If removing it fails, the stack still stops, and the node's record
            # stays for the next `down`.
            if Node(self.state_dir).down():
                stopped.append("node")
        finally:
            # Reverse start order: the apiserver before etcd, so it doesn't log a storm.
            for name in ["kube-apiserver", "kafka", "dnsmasq", "etcd"]:
                proc = state.processes.get(name)
                if proc is not None:
                    procs.stop(proc.pid)
                    stopped.append(name)
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, bool]:
        state = self.state
        if state is None:
            return {}
        return {name: procs.alive(p.pid) for name, p in state.processes.items()}

    def _require(self) -> StackState:
        state = self.state
        if state is None:
            raise RuntimeError(f"no stack running in {self.state_dir}: run `mailpipe dev up`")
        return state
