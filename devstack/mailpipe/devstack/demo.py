"""`mailpipe demo`: the whole pipeline end to end on the local stack.

    helm install the chart -> run the operator with the chart's ServiceAccount
    token -> apply examples/demo (a pool with a warm and a warming IP, a
    campaign to an audience across four .test domains) -> run the relays from
    exactly the Deployment and ConfigMap the operator wrote -> watch
    `kubectl get sp,camp` until Completed -> check the numbers add up.

There is no kubelet, so the chart's operator Deployment and the pool's relay
Deployment never get pods; their commands run here as local processes instead,
with the same arguments and environment (the only changes: the ConfigMap
mounted as a local file, and a free metrics port for each local relay since
they share one network namespace). The end-to-end test runs the same code with
a smaller audience. Exit code 0 only if every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaProducer

from .dns import Zone
from .paths import binary
from .procs import free_port
from .smtp_receiver import SMTPReceiver
from .stack import Stack, StackState

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "demo"
CHART = ROOT / "helm" / "mailpipe"
MAILPIPE = str(Path(sys.executable).parent / "mailpipe")
NAMESPACE = "demo"
SYSTEM_NAMESPACE = "mailpipe-system"
RELEASE = "mailpipe"
DOMAINS = {
    "alpha.test": "127.0.0.21",
    "beta.test": "127.0.0.22",
    "gamma.test": "127.0.0.23",
    "delta.test": "127.0.0.24",
}
TIMEOUT_SECONDS = 240


@dataclass
class Plan:
    """Who gets what answer: derived from the audience size, so checks are exact."""

    size: int
    recipients: list[str] = field(default_factory=list)
    bounce: set[str] = field(default_factory=set)  # 550 5.1.1
    defer: set[str] = field(default_factory=set)  # 451 first, then 250
    suppressed: set[str] = field(default_factory=set)  # on the suppression topic beforehand

    @classmethod
    def make(cls, size: int) -> Plan:
        plan = cls(size)
        domains = list(DOMAINS)
        for i in range(size):
            addr = f"user{i}@{domains[i % len(domains)]}"
            plan.recipients.append(addr)
            if addr.endswith("@beta.test") and i % 20 == 1:
                plan.bounce.add(addr)
            if addr.endswith("@gamma.test") and i % 10 == 2:
                plan.defer.add(addr)
            if addr.endswith("@delta.test") and i % 50 == 3:
                plan.suppressed.add(addr)
        return plan

    @property
    def warmup_cap(self) -> int:
        return max(1, self.size // 10)

    def audience_csv(self) -> str:
        rows = [f"{a},User{a.split('@')[0][4:]}" for a in self.recipients]
        return "address,first\n" + "\n".join(rows) + "\n"


class Demo:
    def __init__(self, stack: Stack, workdir: Path, plan: Plan, say: Callable[[str], None]) -> None:
        state = stack.state
        assert state is not None
        self.stack = stack
        self.state: StackState = state
        self.workdir = workdir
        self.plan = plan
        self.say = say
        self.env = {**os.environ, **state.env()}
        self.helm = str(binary("helm"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.receivers: dict[str, SMTPReceiver] = {}
        self.checks: list[tuple[bool, str]] = []

    # -- helpers ---------------------------------------------------------------------

    def kubectl(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        out = subprocess.run(
            ["kubectl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env or self.env,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def get_json(self, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json"))
        return data

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.processes.append(proc)
        return proc

    def stop_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def check(self, ok: bool, what: str) -> None:
        self.checks.append((ok, what))

    # -- steps -------------------------------------------------------------------------

    def start_receivers(self) -> int:
        port = free_port("127.0.0.21")
        for domain, ip in DOMAINS.items():
            self.receivers[domain] = SMTPReceiver(ip, port).start()
        for addr in self.plan.bounce:
            self.receivers["beta.test"].answer(addr, "550 5.1.1 no such user")
        for addr in self.plan.defer:
            self.receivers["gamma.test"].answer(
                addr, "450 4.2.0 greylisted, try again later", "250 2.0.0 OK"
            )
        self.stack.set_dns(
            [Zone(d, mx=((f"mx.{d}", 10),), a={f"mx.{d}": ip}) for d, ip in DOMAINS.items()]
        )
        self.say(f"receivers: {', '.join(f'{d} -> {ip}:{port}' for d, ip in DOMAINS.items())}")
        return port

    def install_chart(self) -> tuple[str, list[str]]:
        self.say("helm install the chart")
        out = subprocess.run(
            [
                self.helm,
                "install",
                RELEASE,
                str(CHART),
                "-n",
                SYSTEM_NAMESPACE,
                "--create-namespace",
            ],
            capture_output=True,
            text=True,
            env=self.env,
        )
        if out.returncode != 0:
            raise RuntimeError(f"helm install failed: {out.stderr}")
        manifest = subprocess.run(
            [self.helm, "get", "manifest", RELEASE, "-n", SYSTEM_NAMESPACE],
            capture_output=True,
            text=True,
            env=self.env,
        ).stdout
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
        dep = next(d for d in docs if d["kind"] == "Deployment")
        args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        return sa, args

    def operator_kubeconfig(self, service_account: str) -> Path:
        token = self.kubectl(
            "create", "token", service_account, "-n", SYSTEM_NAMESPACE, "--duration=1h"
        ).strip()
        admin = yaml.safe_load(Path(self.state.kubeconfig).read_text())
        cluster = admin["clusters"][0]["cluster"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "operator",
            "clusters": [{"name": "devstack", "cluster": cluster}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [
                {"name": "operator", "context": {"cluster": "devstack", "user": service_account}}
            ],
        }
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_operator(self, args: list[str], kubeconfig: Path) -> None:
        port = free_port()
        args = [
            a if not a.startswith("--liveness-port=") else f"--liveness-port={port}" for a in args
        ]
        self.say(f"operator: mailpipe {' '.join(args)}  (as the chart's ServiceAccount)")
        self.spawn("operator", [MAILPIPE, *args], {**self.env, "KUBECONFIG": str(kubeconfig)})

    def apply_template(self, name: str, values: dict[str, str]) -> None:
        text = string.Template((EXAMPLES / name).read_text()).substitute(values)
        self.kubectl("apply", "-f", "-", stdin=text)

    def wait(self, what: str, predicate: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"a demo process exited ({proc.args!r}); logs in {self.workdir}"
                    )
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.workdir}")

    def pool_ready(self) -> bool:
        try:
            pool = self.get_json("sp", "demo", "-n", NAMESPACE)
        except RuntimeError:
            return False
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pool.get("status", {}).get("conditions", [])
        )

    def seed_suppressions(self) -> None:
        from mailpipe.contracts.wire import Suppression, SuppressionReason, encode

        producer = KafkaProducer(bootstrap_servers=self.state.kafka_bootstrap, acks="all")
        for addr in sorted(self.plan.suppressed):
            value = Suppression(
                address=addr, reason=SuppressionReason.UNSUBSCRIBE, time=time.time(), source="demo"
            )
            producer.send("mailpipe.suppressions", key=addr.encode(), value=encode(value))
        producer.flush()
        producer.close()
        self.say(f"suppression list: {len(self.plan.suppressed)} unsubscribed addresses")

    def start_relays(self) -> None:
        cm = self.get_json("configmap", "mailpipe-relay-demo", "-n", NAMESPACE)
        dep = self.get_json("deployment", "mailpipe-relay-demo", "-n", NAMESPACE)
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
        replicas = dep["spec"]["replicas"]
        for i in range(replicas):
            config = yaml.safe_load(cm["data"]["relay.yaml"])
            # Local processes share the host's network namespace: the pod's fixed
            # metrics port may be taken by anything else on this machine.
            config["metrics_port"] = free_port()
            local = self.workdir / f"relay-{i}" / "relay.yaml"
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(yaml.safe_dump(config))
            args = [a.replace(mount, str(local.parent)) for a in container["args"]]
            env = dict(self.env)
            for var in container.get("env", []):
                if "value" in var:
                    env[var["name"]] = var["value"]
                elif (
                    var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"
                ):
                    env[var["name"]] = f"mailpipe-relay-demo-{i}"
            self.say(f"relay {i}: mailpipe {' '.join(args)}")
            self.spawn(
                f"relay-{i}", [MAILPIPE, *args, "--relay-id", f"mailpipe-relay-demo-{i}"], env
            )

    def campaign(self) -> dict[str, Any]:
        return self.get_json("camp", "demo-newsletter", "-n", NAMESPACE)

    def watch(self) -> None:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        last = ""
        while time.monotonic() < deadline:
            table = self.kubectl("get", "sp,camp", "-n", NAMESPACE)
            # print when something other than the AGE column changed
            shown = "\n".join(
                line.rsplit(None, 1)[0] for line in table.splitlines() if line.strip()
            )
            if shown != last:
                self.say(table.rstrip() + "\n")
                last = shown
            if self.campaign().get("status", {}).get("phase") in ("Completed", "Failed"):
                return
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"a demo process exited ({proc.args!r}); logs in {self.workdir}"
                    )
            time.sleep(3)
        raise RuntimeError(
            f"campaign not Completed within {TIMEOUT_SECONDS}s; logs in {self.workdir}"
        )

    # -- the summary -----------------------------------------------------------------------

    def summarize(self) -> None:
        status = self.campaign()["status"]
        counts = status["counts"]
        plan = self.plan
        accepted: Counter[str] = Counter()
        per_ip: Counter[tuple[str, str]] = Counter()
        replies: dict[str, list[str]] = {}
        for domain, rx in self.receivers.items():
            for m in rx.messages():
                for r in m.rcpt_tos:
                    accepted[r] += 1
                    per_ip[(domain, m.peer)] += 1
            for rcpt, reply in rx.handler.rcpt_replies:
                replies.setdefault(rcpt, []).append(reply.split()[0])
        delivered_expected = set(plan.recipients) - plan.bounce - plan.suppressed
        duplicates = sum(n - 1 for n in accepted.values())

        self.say("\n== summary ==")
        self.say(f"campaign phase {status['phase']}, counts {json.dumps(counts)}")
        self.say("delivered per domain and egress IP (as the receivers saw them):")
        for (domain, ip), n in sorted(per_ip.items()):
            self.say(f"  {domain:<12} {ip:<10} {n}")
        deferred_then_delivered = {
            a for a in plan.defer if replies.get(a, [])[:2] == ["450", "250"]
        }
        self.say(
            f"bounced {counts['bounced']}, deferred-then-delivered {len(deferred_then_delivered)}, "
            f"suppressed {counts['suppressed']}, duplicates {duplicates}"
        )

        self.check(status["phase"] == "Completed", "campaign Completed")
        self.check(counts["total"] == plan.size, f"total {counts['total']} == audience {plan.size}")
        self.check(
            counts["delivered"] == len(delivered_expected),
            f"delivered {counts['delivered']} == {len(delivered_expected)}",
        )
        self.check(
            counts["bounced"] == len(plan.bounce),
            f"bounced {counts['bounced']} == {len(plan.bounce)}",
        )
        self.check(
            counts["suppressed"] == len(plan.suppressed),
            f"suppressed {counts['suppressed']} == {len(plan.suppressed)}",
        )
        self.check(
            counts["deferred"] == 0 and counts["expired"] == 0, "nothing left deferred or expired"
        )
        self.check(
            set(accepted) == delivered_expected,
            "receivers accepted exactly the deliverable recipients",
        )
        self.check(
            deferred_then_delivered == plan.defer,
            f"all {len(plan.defer)} greylisted recipients delivered on retry",
        )
        self.check(
            not any(a in replies for a in plan.suppressed), "no suppressed address was ever sent to"
        )
        cold = sum(n for (_, ip), n in per_ip.items() if ip == "127.0.0.3")
        self.check(
            0 < cold <= plan.warmup_cap,
            f"warming IP 127.0.0.3 sent {cold} <= cap {plan.warmup_cap}",
        )
        helos = {m.peer: m.helo for rx in self.receivers.values() for m in rx.messages()}
        self.check(
            helos.get("127.0.0.3") == "new.demo-sender.test"
            and helos.get("127.0.0.2") == "warm.demo-sender.test",
            "each IP greets with its own HELO name",
        )
        for ok, what in self.checks:
            self.say(f"  [{'ok' if ok else 'FAIL'}] {what}")

    def run(self) -> bool:
        smtp_port = self.start_receivers()
        try:
            sa, operator_args = self.install_chart()
            self.start_operator(operator_args, self.operator_kubeconfig(sa))
            self.kubectl("create", "namespace", NAMESPACE)
            values = {
                "NAMESPACE": NAMESPACE,
                "KAFKA_BOOTSTRAP": self.state.kafka_bootstrap,
                "MAILPIPE_DNS": f"127.0.0.1:{self.state.dns_port}",
                "SMTP_PORT": str(smtp_port),
                "METRICS_PORT": str(free_port()),
                "WARMUP_CAP": str(self.plan.warmup_cap),
                "WARMUP_CAP_DAY2": str(2 * self.plan.warmup_cap),
            }
            self.say("kubectl apply -f examples/demo/pool.yaml")
            self.apply_template("pool.yaml", values)
            self.wait("pool Ready", self.pool_ready)
            self.seed_suppressions()
            audience = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "demo-audience", "namespace": NAMESPACE},
                "data": {"audience.csv": self.plan.audience_csv()},
            }
            self.kubectl("apply", "-f", "-", stdin=json.dumps(audience))
            self.say(f"kubectl apply -f examples/demo/campaign.yaml  ({self.plan.size} recipients)")
            self.apply_template("campaign.yaml", values)
            self.start_relays()
            self.watch()
            self.summarize()
            self.say("\nkubectl describe camp demo-newsletter (events):")
            described = self.kubectl("describe", "camp", "demo-newsletter", "-n", NAMESPACE)
            self.say(described[described.find("Events:") :].rstrip())
        finally:
            self.stop_processes()
            for rx in self.receivers.values():
                rx.stop()
            subprocess.run(
                [self.helm, "uninstall", RELEASE, "-n", SYSTEM_NAMESPACE],
                capture_output=True,
                env=self.env,
            )
        return bool(self.checks) and all(ok for ok, _ in self.checks)


def run_demo(stack: Stack, workdir: Path, size: int, say: Callable[[str], None] = print) -> bool:
    return Demo(stack, workdir, Plan.make(size), say).run()


@contextmanager
def _own_stack(state_dir: Path) -> Iterator[Stack]:
    stack = Stack(state_dir)
    stack.down()
    shutil.rmtree(state_dir, ignore_errors=True)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipients", type=int, default=1000, help="audience size (default 1000)")
    parser.add_argument("--state-dir", type=Path, default=Path(".devstack-demo"))


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-demo-"))
    print(f"mailpipe demo: {args.recipients} recipients; logs in {workdir}")
    try:
        with ExitStack() as stack_ctx:
            print("starting the local stack (Kafka, etcd + kube-apiserver, dnsmasq)...")
            stack = stack_ctx.enter_context(_own_stack(args.state_dir))
            ok = run_demo(stack, workdir, args.recipients)
    except KeyboardInterrupt:
        print("interrupted: everything the demo started is stopped")
        return 130
    except Exception as exc:  # the demo's contract is an exit code and a readable reason
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"\ndemo {'PASSED' if ok else 'FAILED'} in {elapsed:.0f}s")
    return 0 if ok else 1
