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

Why one module of ~300 lines: it is a script read top to bottom, one step per
method in run order; what the steps compute is in `demo_plan`.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import string
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kafka import KafkaProducer

from mailpipe.contracts.signing import PUBLIC_KEY_ENV

from . import harness, kube, sockets
from .demo_plan import DOMAINS, Check, Plan, summarize
from .dns import Zone
from .procs import free_port
from .smtp_receiver import SMTPReceiver
from .stack import Stack, StackState

__all__ = ["Demo", "Plan", "run_demo"]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "demo"
CHART = ROOT / "helm" / "mailpipe"
NAMESPACE = "demo"
SYSTEM_NAMESPACE = "mailpipe-system"
RELEASE = "mailpipe"
POOL, CAMPAIGN, AUDIENCE = "demo", "demo-newsletter", "demo-audience"
RELAY = f"mailpipe-relay-{POOL}"  # the operator's name for the pool's Deployment and ConfigMap
TIMEOUT_SECONDS = 240  # the whole campaign; 1000 recipients take about a minute
POOL_READY_TIMEOUT_SECONDS = 60  # topics created, children written: seconds on an idle stack
WAIT_POLL_SECONDS = 0.5
WATCH_POLL_SECONDS = 3  # `kubectl get` once every 3 s reads like someone watching
OPERATOR_TOKEN_DURATION = "1h"  # longer than the demo ever runs
DKIM_SECRET = "demo-dkim"
CR_DELETE_TIMEOUT_SECONDS = 60  # finalizers: delete relays and topics, tell relays
DKIM_KEY_BITS = 2048  # what mailbox providers expect of an RSA DKIM key
LOCAL_POD_IP = "127.0.0.1"  # a local relay's "pod IP": where its metrics endpoint binds
DEFAULT_RECIPIENTS = 1000
FINAL_PHASES = ("Completed", "Failed")


class Demo:
    def __init__(self, stack: Stack, workdir: Path, plan: Plan, say: Callable[[str], None]) -> None:
        state = stack.state
        assert state is not None
        self.stack = stack
        self.state: StackState = state
        self.workdir = workdir
        self.plan = plan
        self.say = say
        # this process's environment aimed at the stack, for kubectl, helm and mailpipe
        self.env = {**os.environ, **state.env()}
        self.children = harness.Children(workdir)
        self.receivers: dict[str, SMTPReceiver] = {}
        self.checks: list[Check] = []
        self.token = ""  # the operator's ServiceAccount token, once created
        self.dkim_pem = ""  # the pool's DKIM private key, once created

    # -- helpers ---------------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return harness.kubectl_ok(self.env, *args, stdin=stdin)

    def get_json(self, *args: str) -> dict[str, Any]:
        return harness.get_json(self.env, *args)

    def wait(
        self,
        what: str,
        predicate: Callable[[], bool],
        timeout_s: float = POOL_READY_TIMEOUT_SECONDS,
    ) -> None:
        """Wait for `predicate`; fail fast with its log tail if a demo process exited."""
        harness.wait_for(
            predicate,
            timeout_s,
            what,
            watch=self.children.running(),
            interval_seconds=WAIT_POLL_SECONDS,
        )

    # -- steps -------------------------------------------------------------------------

    def start_receivers(self) -> int:
        port = free_port(next(iter(DOMAINS.values())))
        for domain, ip in DOMAINS.items():
            self.receivers[domain] = SMTPReceiver(ip, port).start()
        self.plan.script(self.receivers)
        self.stack.set_dns(
            [Zone(d, mx=((f"mx.{d}", 10),), a={f"mx.{d}": ip}) for d, ip in DOMAINS.items()]
        )
        self.say(f"receivers: {', '.join(f'{d} -> {ip}:{port}' for d, ip in DOMAINS.items())}")
        return port

    def install_chart(self, smtp_port: int) -> tuple[str, list[str]]:
        # The platform team's cluster policy: the stack's Kafka and resolver and
        # the receivers' port are what the demo's pool may use, nothing else.
        policy = {
            "allowedBootstrapServers": self.state.kafka_bootstrap,
            "allowedDnsNameservers": f"127.0.0.1:{self.state.dns_port}",
            "allowedSmtpPorts": str(smtp_port),
            # its MX hosts are loopback addresses (the pool opts in; the platform allows it)
            "privateDestinationNamespaces": NAMESPACE,
        }
        sets = [a for k, v in policy.items() for a in ("--set", f"policy.{k}={{{v}}}")]
        self.say(
            f"helm install the chart (onboarding namespace {NAMESPACE}; "
            "policy: " + ", ".join(policy.values()) + ")"
        )
        harness.helm_ok(
            self.env,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            SYSTEM_NAMESPACE,
            "--create-namespace",
            *sets,
            # The operator may create relays only in onboarded namespaces (least privilege).
            "--set",
            f"rbac.tenantNamespaces={{{NAMESPACE}}}",
            # Its pod's own addresses are, for a local process, the machine's: the
            # local stack stays on loopback (checked in the summary).
            "--set",
            "operator.listenAddress=127.0.0.1",
        )
        manifest = harness.helm_ok(self.env, "get", "manifest", RELEASE, "-n", SYSTEM_NAMESPACE)
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
        dep = next(d for d in docs if d["kind"] == "Deployment")
        # The chart mounts its policy ConfigMap where `--policy` points; here it is a file.
        policy_cm = next(
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-policy")
        )
        policy_file = self.workdir / "policy.yaml"
        policy_file.write_text(policy_cm["data"]["policy.yaml"])
        # Likewise the Secret with the key the operator signs relay configs with.
        signing = next(
            d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-signing")
        )
        key_file = self.workdir / "config-signing.pem"
        key_file.touch(mode=0o600)
        key_file.write_bytes(base64.b64decode(signing["data"]["ed25519.pem"]))
        local = {"--policy": policy_file, "--config-signing-key": key_file}
        args: list[str] = [
            f"{a.split('=', 1)[0]}={local[a.split('=', 1)[0]]}"
            if a.split("=", 1)[0] in local
            else a
            for a in dep["spec"]["template"]["spec"]["containers"][0]["args"]
        ]
        return sa, args

    def operator_kubeconfig(self, service_account: str) -> Path:
        self.token = self.kubectl(
            "create",
            "token",
            service_account,
            "-n",
            SYSTEM_NAMESPACE,
            f"--duration={OPERATOR_TOKEN_DURATION}",
        ).strip()
        path = self.workdir / "operator.kubeconfig"
        kube.write_token_kubeconfig(path, Path(self.state.kubeconfig), service_account, self.token)
        return path

    def start_operator(self, args: list[str], kubeconfig: Path) -> None:
        # one network namespace for every local process: free ports instead of the pod's
        ports = {"--liveness-port": free_port(), "--metrics-port": free_port()}
        args = [
            f"{a.split('=', 1)[0]}={ports[a.split('=', 1)[0]]}"
            if a.split("=", 1)[0] in ports
            else a
            for a in args
        ]
        self.say(f"operator: mailpipe {' '.join(args)}  (as the chart's ServiceAccount)")
        self.children.mailpipe("operator", args, {**self.env, "KUBECONFIG": str(kubeconfig)})

    def create_dkim_secret(self) -> None:
        """The pool signs with a key from a Secret, as a real one would; the
        test of this run greps every log for it (and for the operator's token)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=DKIM_KEY_BITS)
        self.dkim_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": DKIM_SECRET, "namespace": NAMESPACE},
            "stringData": {"private.pem": self.dkim_pem},
        }
        harness.apply(self.env, secret)
        self.say(f"DKIM key in Secret {DKIM_SECRET}")

    def local_secret_dir(self, secret: str, relay_dir: Path) -> Path:
        """Where a local relay finds what its pod would have mounted from `secret`."""
        data = self.get_json("secret", secret, "-n", NAMESPACE)["data"]
        target = relay_dir / "secrets" / secret
        target.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (target / key).write_bytes(base64.b64decode(value))
            (target / key).chmod(0o600)
        return target

    def apply_template(self, name: str, values: dict[str, str]) -> None:
        text = string.Template((EXAMPLES / name).read_text()).substitute(values)
        harness.apply(self.env, text)

    def topics_ready(self) -> bool:
        pool = harness.get_object(self.env, "sp", POOL, NAMESPACE)
        return harness.condition_true(pool, "TopicsReady")

    def pool_ready(self) -> bool:
        return harness.condition_true(harness.get_object(self.env, "sp", POOL, NAMESPACE))

    def seed_suppressions(self) -> None:
        from mailpipe.contracts.topics import Topics
        from mailpipe.contracts.wire import Suppression, SuppressionReason, encode

        topic = Topics.for_pool(NAMESPACE, POOL).suppressions  # the namespace's list

        producer = KafkaProducer(bootstrap_servers=self.state.kafka_bootstrap, acks="all")
        for addr in sorted(self.plan.suppressed):
            value = Suppression(
                address=addr, reason=SuppressionReason.UNSUBSCRIBE, time=time.time(), source="demo"
            )
            producer.send(topic, key=addr.encode(), value=encode(value))
        producer.flush()
        producer.close()
        self.say(f"suppression list: {len(self.plan.suppressed)} unsubscribed addresses")

    def start_relays(self) -> None:
        cm = self.get_json("configmap", RELAY, "-n", NAMESPACE)
        dep = self.get_json("deployment", RELAY, "-n", NAMESPACE)
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
        replicas = dep["spec"]["replicas"]
        for i in range(replicas):
            relay_id = f"{RELAY}-{i}"
            config = yaml.safe_load(cm["data"]["relay.yaml"])
            # Local processes share the host's network namespace: the pod's fixed
            # metrics port may be taken by anything else on this machine.
            config["metrics_port"] = free_port()
            local = self.workdir / f"relay-{i}" / "relay.yaml"
            local.parent.mkdir(parents=True, exist_ok=True)
            secrets = {
                v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v
            }
            for m in container["volumeMounts"]:
                if m["name"] in secrets and config.get("dkim"):
                    here = self.local_secret_dir(secrets[m["name"]], local.parent)
                    key_path = config["dkim"]["private_key_path"]
                    config["dkim"]["private_key_path"] = key_path.replace(m["mountPath"], str(here))
            local.write_text(yaml.safe_dump(config))
            args = [a.replace(mount, str(local.parent)) for a in container["args"]]
            env = dict(self.env)
            for var in container.get("env", []):
                if var["name"] == PUBLIC_KEY_ENV:
                    # The config was rewritten above for a local process (ports, paths),
                    # so it is no longer the text the operator signed; the signature
                    # check is tests/relay/integration/test_config_signature.py's.
                    continue
                if "value" in var:
                    env[var["name"]] = var["value"]
                elif (
                    var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"
                ):
                    env[var["name"]] = relay_id
                elif (
                    var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP"
                ):
                    env[var["name"]] = LOCAL_POD_IP
            self.say(f"relay {i}: mailpipe {' '.join(args)}")
            self.children.mailpipe(f"relay-{i}", [*args, "--relay-id", relay_id], env)

    def campaign(self) -> dict[str, Any]:
        return self.get_json("camp", CAMPAIGN, "-n", NAMESPACE)

    def watch(self) -> None:
        """Print `kubectl get sp,camp` whenever it changes, until the campaign is done."""
        last = ""

        def finished() -> bool:
            nonlocal last
            table = self.kubectl("get", "sp,camp", "-n", NAMESPACE)
            # print when something other than the AGE column changed
            shown = "\n".join(
                line.rsplit(None, 1)[0] for line in table.splitlines() if line.strip()
            )
            if shown != last:
                self.say(table.rstrip() + "\n")
                last = shown
            return self.campaign().get("status", {}).get("phase") in FINAL_PHASES

        harness.wait_for(
            finished,
            TIMEOUT_SECONDS,
            "the campaign to finish",
            watch=self.children.running(),
            interval_seconds=WATCH_POLL_SECONDS,
        )

    # -- the summary -----------------------------------------------------------------------

    def summarize(self) -> None:
        self.checks.extend(
            summarize(self.plan, self.campaign()["status"], self.receivers, self.say)
        )
        self.checks.append(self.loopback_only())
        for ok, what in self.checks:
            self.say(f"  [{'ok' if ok else 'FAIL'}] {what}")

    def loopback_only(self) -> tuple[bool, str]:
        """The local stack promises loopback only: every socket the stack's
        components, the operator and the relays listen on, checked from /proc."""
        pids = [c.pid for c in self.children.running()]
        pids += [p.pid for p in self.state.processes.values()]
        listeners = sockets.listening(pids)
        wide = sorted({f"{a}:{p}" for a, p in listeners if not sockets.is_loopback(a)})
        if wide:
            return False, "listening beyond loopback: " + ", ".join(wide)
        return bool(listeners), "every process of the stack listens on loopback only"

    def run(self) -> bool:
        smtp_port = self.start_receivers()
        try:
            self.kubectl("create", "namespace", NAMESPACE)
            sa, operator_args = self.install_chart(smtp_port)
            self.start_operator(operator_args, self.operator_kubeconfig(sa))
            self.create_dkim_secret()
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
            # Relays start once their topics exist (a consumer that subscribes
            # before them rebalances when they appear, and re-reads records).
            self.wait("relay Deployment and topics", self.topics_ready)
            self.start_relays()
            # Ready needs available relays; the dev stack has no kubelet, and the
            # local relays stand in for the Deployment's pods: report them.
            harness.report_deployment(self.env, NAMESPACE, RELAY)
            self.wait("pool Ready", self.pool_ready)
            self.seed_suppressions()
            audience = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": AUDIENCE, "namespace": NAMESPACE},
                "data": {"audience.csv": self.plan.audience_csv()},
            }
            harness.apply(self.env, audience)
            self.say(f"kubectl apply -f examples/demo/campaign.yaml  ({self.plan.size} recipients)")
            self.apply_template("campaign.yaml", values)
            self.watch()
            self.summarize()
            self.say("\nkubectl describe camp demo-newsletter (events):")
            described = self.kubectl("describe", "camp", CAMPAIGN, "-n", NAMESPACE)
            self.say(described[described.find("Events:") :].rstrip())
        finally:
            # Uninstall as the README says: the CRs first, while the operator
            # still runs their finalizers (deleting the pool deletes its topics),
            # then the chart. The local relays go first, as the Deployment's pods
            # would: a relay still reading would have the broker re-create the
            # topics. The chart's pre-delete hook is a Job that deletes the CRs
            # too, which needs a kubelet this stack does not have: --no-hooks.
            for child in self.children.running():
                if child.name.startswith("relay-"):
                    child.stop()
            harness.kubectl(
                self.env,
                "delete",
                "campaigns,sendingpools",
                "--all",
                "-n",
                NAMESPACE,
                f"--timeout={CR_DELETE_TIMEOUT_SECONDS}s",
            )
            self.children.stop_all()
            for rx in self.receivers.values():
                rx.stop()
            harness.helm(self.env, "uninstall", RELEASE, "-n", SYSTEM_NAMESPACE, "--no-hooks")
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
    parser.add_argument(
        "--recipients",
        type=int,
        default=DEFAULT_RECIPIENTS,
        help=f"audience size (default {DEFAULT_RECIPIENTS})",
    )
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
