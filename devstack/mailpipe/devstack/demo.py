"""`mailpipe demo`: the whole pipeline end to end on the local stack, and what comes back.

    helm install the chart -> run the operator with the chart's ServiceAccount
    token -> apply examples/demo (a pool with a warm and a warming IP, a
    feedback receiver and a one-click unsubscribe endpoint; a campaign to an
    audience across four .test domains) -> run the relays, the receiver and the
    endpoint from exactly the Deployments and ConfigMaps the operator wrote ->
    watch `kubectl get sp,camp` until Completed -> what comes back: DSNs for
    some recipients, a complaint, a one-click unsubscribe, an out-of-office
    reply -> a follow-up campaign to them -> check the numbers add up.

There is no kubelet, so the chart's operator Deployment and the pool's
Deployments never get pods; their commands run here as local processes
instead (`run_deployment`), with the same arguments and environment (the only
changes: the mounted ConfigMaps and Secrets as local files, and the pod's own
addresses and ports, since local processes share one network namespace: a
free metrics port each, the receiver and the endpoint on loopback addresses of
their own). What comes back reaches them only as mail systems and mail clients
would: reports by SMTP to the bounce domain's MX found in DNS, the POST to
the URL in the message through the https ingress's stand-in
(`demo_plan.behind_ingress`), so those steps do not depend on how the
processes run. The end-to-end test runs the
same code with a smaller audience. Exit code 0 only if every check holds.

Why one module of ~700 lines: it is a script read top to bottom, one step per
method in run order; what the steps compute is in `demo_plan`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import smtplib
import string
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.resolver
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kafka import KafkaProducer

from mailpipe.contracts.signing import PUBLIC_KEY_ENV

from . import harness, kube, sockets
from .demo_plan import (
    DOMAINS,
    FBL_ADDRESS,
    FEEDBACK_IP,
    FOLLOW_UP,
    ONE_CLICK_BODY,
    UNSUBSCRIBE_BASE_URL,
    UNSUBSCRIBE_IP,
    CameBack,
    Check,
    Plan,
    arf,
    behind_ingress,
    dkim_signed_headers,
    dsn,
    local_path,
    mailbox_copy,
    one_click_url,
    out_of_office,
    pod_env,
    return_path,
    summarize,
    summarize_loop,
    zones,
)
from .procs import free_port, listening
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
# The operator's names for the pool's Deployments (and the relays' ConfigMap).
RELAY = f"mailpipe-relay-{POOL}"
FEEDBACK = f"mailpipe-feedback-{POOL}"
UNSUBSCRIBE = f"mailpipe-unsubscribe-{POOL}"
TIMEOUT_SECONDS = 240  # the whole campaign; 1000 recipients take about a minute
POOL_READY_TIMEOUT_SECONDS = 60  # topics created, children written: seconds on an idle stack
# What came back in the campaign's status, and the follow-up's fan-out and one
# delivery: seconds on an idle machine, a minute when a loaded one starves the operator.
COUNTED_TIMEOUT_SECONDS = 120
WAIT_POLL_SECONDS = 0.5
WATCH_POLL_SECONDS = 3  # `kubectl get` once every 3 s reads like someone watching
OPERATOR_TOKEN_DURATION = "1h"  # longer than the demo ever runs
DKIM_SECRET = "demo-dkim"
FEEDBACK_SECRET = "demo-feedback-keys"  # examples/demo/pool.yaml names it twice
FEEDBACK_KEY_ID = "ka"  # a key id is a-z and 2-7; the newest signs (rotation adds "kb")
FEEDBACK_KEY_BYTES = 32  # the least spec.feedback.keySecretRef accepts
CR_DELETE_TIMEOUT_SECONDS = 60  # finalizers: delete relays and topics, tell relays
DKIM_KEY_BITS = 2048  # what mailbox providers expect of an RSA DKIM key
LOCAL_POD_IP = "127.0.0.1"  # a local relay's "pod IP": where its metrics endpoint binds
CLIENT_TIMEOUT_SECONDS = 30  # one SMTP or HTTP exchange with a local endpoint
DEFAULT_RECIPIENTS = 1000
FINAL_PHASES = ("Completed", "Failed")
HTTP_OK = 200


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
        self.feedback_key = b""  # the pool's token key, once created
        self.smtp_port = 0  # every MX's port here (the pool's smtpPort), once chosen
        # where the https ingress in front of the one-click endpoint forwards to,
        # and the endpoint's readiness probe, once it runs
        self.unsubscribe_backend = self.unsubscribe_ready = ""
        self.answers: dict[str, int] = {}  # what came back -> the reply it got
        self.sent_before: dict[str, int] = {}  # messages per receiver before the follow-up
        self.one_click_signed: list[str] = []  # headers DKIM covers in the unsubscribed one's

    # -- helpers ---------------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return harness.kubectl_ok(self.env, *args, stdin=stdin)

    def read(self, kind: str, name: str) -> dict[str, Any]:
        """One object of the demo's namespace, through the API client (no kubectl
        process: on a busy two-core machine each costs a second)."""
        obj = harness.get_object(self.env, kind, name, NAMESPACE)
        if obj is None:
            raise harness.HarnessError(f"{kind} {name} not found in namespace {NAMESPACE}")
        return obj

    def plugin(self, *args: str) -> str:
        """`kubectl mailpipe <args>`: kubectl finds this checkout's plugin on PATH."""
        path = f"{harness.MAILPIPE.parent}{os.pathsep}{self.env.get('PATH', '')}"
        return harness.kubectl_ok({**self.env, "PATH": path}, "mailpipe", *args)

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
        # one port for every MX, free on every address: the feedback receiver takes it too
        port = self.smtp_port = free_port(next(iter(DOMAINS.values())))
        for domain, ip in DOMAINS.items():
            self.receivers[domain] = SMTPReceiver(ip, port).start()
        self.plan.script(self.receivers)
        self.stack.set_dns(zones())
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

    def create_feedback_keys(self) -> None:
        """The key the relays sign each message's tokens with (Return-Path, trace
        header, unsubscribe URL) and the receiver and endpoint verify them with."""
        self.feedback_key = secrets.token_bytes(FEEDBACK_KEY_BYTES)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": FEEDBACK_SECRET, "namespace": NAMESPACE},
            "data": {FEEDBACK_KEY_ID: base64.b64encode(self.feedback_key).decode()},
        }
        harness.apply(self.env, secret)
        self.say(f"feedback token key in Secret {FEEDBACK_SECRET}")

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

    def mount_volumes(self, pod: dict[str, Any], here: Path) -> dict[str, Path]:
        """Write what the pod would mount (its ConfigMaps and Secrets) under `here`;
        return mount path -> local directory."""
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts: dict[str, Path] = {}
        for mount in pod["containers"][0]["volumeMounts"]:
            volume = volumes[mount["name"]]
            target = here / mount["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                data = self.read("configmap", volume["configMap"]["name"])
                for key, text in data["data"].items():
                    (target / key).write_text(text)
            elif "secret" in volume:
                data = self.read("secret", volume["secret"]["secretName"])
                for key, value in data["data"].items():
                    (target / key).touch(mode=0o600)
                    (target / key).write_bytes(base64.b64decode(value))
            mounts[mount["mountPath"]] = target
        return mounts

    def run_deployment(
        self,
        name: str,
        own_addresses: Callable[[dict[str, Any]], None],
        extra_args: Callable[[str], list[str]] = lambda _: [],
    ) -> None:
        """Run each replica of Deployment `name` as a local process: its args and
        env, its volumes as local files; `own_addresses` sets the pod's own
        addresses and ports in the replica's copy of the config file its args name."""
        dep = self.read("deployment", name)
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        here = self.workdir / name
        mounts = self.mount_volumes(pod, here)
        args: list[str] = local_path(container["args"], mounts)
        at = args.index("--config") + 1
        text = Path(args[at]).read_text()
        for i in range(dep["spec"]["replicas"]):
            pod_name = f"{name}-{i}"
            config = local_path(yaml.safe_load(text), mounts)
            own_addresses(config)
            (here / f"{pod_name}.yaml").write_text(yaml.safe_dump(config))
            argv = [*args[:at], str(here / f"{pod_name}.yaml"), *args[at + 1 :]]
            argv += extra_args(pod_name)
            env = pod_env(container, pod_name, LOCAL_POD_IP, frozenset({PUBLIC_KEY_ENV}))
            self.say(f"{pod_name}: mailpipe {' '.join(argv)}")
            self.children.mailpipe(pod_name, argv, {**self.env, **env})

    def start_relays(self) -> None:
        def own(config: dict[str, Any]) -> None:
            # the pod's fixed metrics port may be taken by anything else on this machine
            config["metrics_port"] = free_port()

        self.run_deployment(RELAY, own, lambda pod: ["--relay-id", pod])
        # Ready needs available relays; the local relays stand in for the pods: report them.
        harness.report_deployment(self.env, NAMESPACE, RELAY)

    def start_feedback_receiver(self) -> None:
        """The bounce domain's MX (DNS points there): on its own loopback address,
        on the port every MX of the demo uses."""

        def own(config: dict[str, Any]) -> None:
            config["feedback"].update(
                listen_address=FEEDBACK_IP,
                listen_port=self.smtp_port,
                metrics_port=free_port(FEEDBACK_IP),
            )

        # In a pod the receiver names itself by its host name, the pod's name.
        self.run_deployment(FEEDBACK, own, lambda pod: ["--receiver-id", pod])

    def start_unsubscribe_endpoint(self) -> None:
        """The one-click endpoint, on its own loopback address; the https
        ingress's stand-in forwards the base URL to it (`behind_ingress`)."""

        def own(config: dict[str, Any]) -> None:
            port, metrics = free_port(UNSUBSCRIBE_IP), free_port(UNSUBSCRIBE_IP)
            config.update(
                listen_address=UNSUBSCRIBE_IP,
                port=port,
                metrics_address=UNSUBSCRIBE_IP,
                metrics_port=metrics,
            )
            self.unsubscribe_backend = f"http://{UNSUBSCRIBE_IP}:{port}/u/"
            self.unsubscribe_ready = f"http://{UNSUBSCRIBE_IP}:{metrics}/readyz"

        self.run_deployment(UNSUBSCRIBE, own)
        self.say(f"https ingress stand-in: {UNSUBSCRIBE_BASE_URL} -> {self.unsubscribe_backend}")

    def campaign(self) -> dict[str, Any]:
        return self.read("camp", CAMPAIGN)

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

    def summarize_send(self) -> None:
        """The send's checks, as it stood at Completed (before anything came back)."""
        self.checks.extend(
            summarize(self.plan, self.campaign()["status"], self.receivers, self.say)
        )

    def endpoints_up(self) -> None:
        """Wait for the receiver (listening) and the endpoint (its Deployment's
        readiness probe); report their Deployments available. Nothing before
        what comes back needs them, so the campaign does not wait for them."""
        self.wait("the feedback receiver", lambda: listening(FEEDBACK_IP, self.smtp_port))
        self.wait("the unsubscribe endpoint", lambda: http(self.unsubscribe_ready)[0] == HTTP_OK)
        harness.report_deployment(self.env, NAMESPACE, FEEDBACK)
        harness.report_deployment(self.env, NAMESPACE, UNSUBSCRIBE)

    # -- what comes back: reaches the pool's endpoints as the world would ---------------------

    def mailbox(self, recipient: str) -> tuple[bytes, str]:
        """The copy `recipient`'s mailbox holds, and the address it came from."""
        rx = self.receivers[recipient.rpartition("@")[2]]
        message = next(m for m in rx.messages() if recipient in m.rcpt_tos)
        return mailbox_copy(message), message.peer

    def mx_address(self, domain: str) -> str:
        """Where mail for `domain` goes, from DNS, as any MTA finds it."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.state.dns_port
        mx = min(resolver.resolve(domain, "MX"), key=lambda r: int(r.preference))
        return str(resolver.resolve(mx.exchange, "A")[0])

    def send_mail(self, to: str, data: bytes, helo: str, mail_from: str = "") -> int:
        """Hand `data` to `to`'s MX over SMTP as the host `helo`; the reply code
        (RCPT's if refused, else DATA's)."""
        host = self.mx_address(to.rpartition("@")[2])
        with smtplib.SMTP(host, self.smtp_port, timeout=CLIENT_TIMEOUT_SECONDS) as smtp:
            smtp.ehlo(helo)
            smtp.mail(mail_from)
            code, _ = smtp.rcpt(to)
            if code == 250:
                code, _ = smtp.data(data)
        return code

    def reply_out_of_office(self) -> None:
        """The one who is away: the vacation responder answers the Return-Path."""
        who = self.plan.away
        copy, _ = self.mailbox(who)
        rp = return_path(copy)
        reply = out_of_office(copy, who, datetime.now(UTC))
        helo = "mx." + who.rpartition("@")[2]  # the recipient's own mail system answers
        self.answers[f"out-of-office {who}"] = self.send_mail(rp, reply, helo)
        self.say(f"out-of-office reply from {who} -> {rp[:40]}...")

    def return_bounces(self) -> None:
        """Accepted, then undeliverable: the recipient's MX returns a DSN to the
        message's Return-Path (null sender, as RFC 5321 wants for reports)."""
        now = datetime.now(UTC)
        for who in sorted(self.plan.async_bounce):
            copy, _ = self.mailbox(who)
            helo = "mx." + who.rpartition("@")[2]
            code = self.send_mail(return_path(copy), dsn(copy, who, now), helo)
            self.answers[f"DSN {who}"] = code
        self.say(f"DSNs for {len(self.plan.async_bounce)} recipients, each to its Return-Path")

    def complain(self) -> None:
        """The mailbox provider's feedback loop reports the one who marked it as spam."""
        who = self.plan.complainer
        copy, peer = self.mailbox(who)
        provider = "fbl." + who.rpartition("@")[2]
        report = arf(copy, who, peer, datetime.now(UTC))
        code = self.send_mail(FBL_ADDRESS, report, provider, f"complaints@{provider}")
        self.answers[f"ARF {who}"] = code
        self.say(f"complaint (ARF, feedback-type abuse) about {who} -> {FBL_ADDRESS}")

    def unsubscribe_one_click(self) -> None:
        """The mail client of the one who unsubscribes: POST to the message's URL."""
        who = self.plan.unsubscriber
        copy, _ = self.mailbox(who)
        url = one_click_url(copy)
        local = behind_ingress(url, UNSUBSCRIBE_BASE_URL, self.unsubscribe_backend)
        status, _ = http(local, ONE_CLICK_BODY)
        self.answers[f"one-click {who}"] = status
        self.one_click_signed = dkim_signed_headers(copy)
        self.say(f"one-click unsubscribe of {who}: POST {url[:60]}... -> {status}")

    def wait_counted(self) -> None:
        """Until the campaign's status counts what came back (a status timer or two)."""
        expected = {
            "bounced": len(self.plan.bounce) + len(self.plan.async_bounce),
            "complained": 1,
            "unsubscribed": 1,
        }

        def counted() -> bool:
            counts = self.campaign().get("status", {}).get("counts", {})
            return all(counts.get(k, 0) >= n for k, n in expected.items())

        self.wait("the campaign counting what came back", counted, COUNTED_TIMEOUT_SECONDS)

    def start_follow_up(self) -> None:
        """A second campaign to everyone the loop touched, at once: every
        suppression was acknowledged by Kafka before its 250 or 200 above, so
        its fan-out reads them all."""
        self.sent_before = {d: len(rx.messages()) for d, rx in self.receivers.items()}
        harness.apply(self.env, self.plan.follow_up(NAMESPACE, POOL))
        self.say(f"follow-up campaign {FOLLOW_UP} to {len(self.plan.came_back) + 1} of them")

    def show_suppressions(self) -> list[dict[str, Any]]:
        """What `kubectl mailpipe` says now (three calls at once, while the
        follow-up goes out): the feedback's suppressions, the whole story of the
        one who unsubscribed, and every suppression for the checks."""
        who = self.plan.unsubscriber
        calls = {
            "suppressions list -n demo --source feedback": (
                "suppressions", "list", "-n", NAMESPACE, "--source", "feedback"
            ),
            f"fate {who} -n demo": ("fate", who, "-n", NAMESPACE),
            "json": ("suppressions", "list", "-n", NAMESPACE, "-o", "json"),
        }  # fmt: skip
        with ThreadPoolExecutor(len(calls)) as pool:
            running = {shown: pool.submit(self.plugin, *args) for shown, args in calls.items()}
        out = {shown: future.result() for shown, future in running.items()}
        for shown, text in out.items():
            if shown != "json":
                self.say(f"\nkubectl mailpipe {shown}\n{text.rstrip()}")
        listed: list[dict[str, Any]] = json.loads(out["json"])
        return listed

    def follow_up_done(self) -> tuple[dict[str, Any], list[str]]:
        """The follow-up's status once it finished, and who the receivers got it for."""

        def status() -> dict[str, Any]:
            obj = harness.get_object(self.env, "camp", FOLLOW_UP, NAMESPACE) or {}
            return dict(obj.get("status") or {})

        self.wait(
            f"{FOLLOW_UP} to finish",
            lambda: status().get("phase") in FINAL_PHASES,
            COUNTED_TIMEOUT_SECONDS,
        )
        sent = [
            r
            for d, rx in self.receivers.items()
            for m in rx.messages()[self.sent_before[d] :]
            for r in m.rcpt_tos
        ]
        return status(), sent

    def summarize_loop(
        self, suppressions: list[dict[str, Any]], follow_up: dict[str, Any], sent: list[str]
    ) -> None:
        status = self.campaign()["status"]
        signed = self.one_click_signed
        back = CameBack(self.answers, status, suppressions, follow_up, sent, signed)
        self.checks.extend(summarize_loop(self.plan, back, self.say))
        self.checks.append(self.loopback_only())
        self.say("\n== checks ==")
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
            self.create_feedback_keys()
            self.say("kubectl apply -f examples/demo/pool.yaml")
            self.apply_template("pool.yaml", values)
            # Relays start once their topics exist (a consumer that subscribes
            # before them rebalances when they appear, and re-reads records).
            self.wait("relay Deployment and topics", self.topics_ready)
            self.start_relays()
            self.start_feedback_receiver()
            self.start_unsubscribe_endpoint()
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
            self.summarize_send()
            self.endpoints_up()  # started with the relays: up long since, as a rule
            self.say("\n== what comes back ==")
            self.reply_out_of_office()
            self.return_bounces()
            self.complain()
            self.unsubscribe_one_click()
            self.start_follow_up()
            suppressions = self.show_suppressions()
            self.wait_counted()
            follow_up, sent = self.follow_up_done()
            self.summarize_loop(suppressions, follow_up, sent)
            self.say("\nkubectl describe camp demo-newsletter (events):")
            described = self.kubectl("describe", "camp", CAMPAIGN, "-n", NAMESPACE)
            self.say(described[described.find("Events:") :].rstrip())
        finally:
            # Uninstall as the README says: the CRs first, while the operator
            # still runs their finalizers (deleting the pool deletes its topics),
            # then the chart. The pool's local processes go first, as the
            # Deployments' pods would: a relay still reading would have the
            # broker re-create the topics. The chart's pre-delete hook is a Job
            # that deletes the CRs too, which needs a kubelet this stack does
            # not have: --no-hooks.
            pods = [c for c in self.children.running() if c.name != "operator"]
            for child in pods:
                child.request_stop()
            for child in pods:
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


# Loopback only: never through a proxy the environment may name (http_proxy).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, body: bytes | None = None) -> tuple[int, str]:
    """GET `url`, or POST `body` as a form: the status and the body (0 and "" when
    nothing answers yet)."""
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    if body is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with _DIRECT.open(request, timeout=CLIENT_TIMEOUT_SECONDS) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


def run_demo(stack: Stack, workdir: Path, plan: Plan, say: Callable[[str], None] = print) -> bool:
    return Demo(stack, workdir, plan, say).run()


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

    try:
        plan = Plan.make(args.recipients)
    except ValueError as exc:  # before anything starts: nothing to stop
        print(f"mailpipe demo: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-demo-"))
    print(f"mailpipe demo: {args.recipients} recipients; logs in {workdir}")
    try:
        with ExitStack() as stack_ctx:
            print("starting the local stack (Kafka, etcd + kube-apiserver, dnsmasq)...")
            stack = stack_ctx.enter_context(_own_stack(args.state_dir))
            ok = run_demo(stack, workdir, plan)
    except KeyboardInterrupt:
        print("interrupted: everything the demo started is stopped")
        return 130
    except Exception as exc:  # the demo's contract is an exit code and a readable reason
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"\ndemo {'PASSED' if ok else 'FAILED'} in {elapsed:.0f}s")
    return 0 if ok else 1
