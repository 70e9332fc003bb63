"""`mailpipe demo`: the whole pipeline end to end on the stack's real node, and what comes back.

    build the image (scripts/build-image.sh; cached) while the node comes up ->
    import it into the node -> helm install the chart with it: the operator
    runs as a pod under the chart's ServiceAccount -> apply examples/demo (a
    pool with a warm and a warming IP, a feedback receiver and a one-click
    unsubscribe endpoint; a campaign to an audience across four .test domains):
    the operator's Deployments run as pods on the node -> watch `kubectl get
    sp,camp` until Completed -> `kubectl get pods -A`: the operator, relay,
    receiver and endpoint pods Running with the image built here -> what comes
    back: DSNs for some recipients, a complaint, a one-click unsubscribe, an
    out-of-office reply -> a follow-up campaign to them -> check the numbers
    add up -> uninstall, the node down.

Where each part lives, and why:
- The relays run with hostNetwork on the node's egress addresses (the stack
  puts four on the node and labels it `egress.mailpipe.io/<address>`; the
  operator's node affinity places the relay there), so mail leaves from the
  pool's warm and warming IPs, as on a cluster with egress nodes. One relay:
  a hostNetwork relay holds its metrics port on its node, and there is one node.
- The recipients' MX hosts are one recording receiver on the host's loopback,
  reached by the relay pods at the host end of the node's link (`Node.expose`:
  one DNAT rule, recorded and removed with the node); the four domains' MX
  names resolve there, one mail system for four domains as mailbox providers
  run them. Not four receivers: the node reaches the host at one address and
  the pool has one SMTP port; and not through a ClusterIP Service, whose
  masquerade would hide the egress IP a message came from (the per-IP checks).
- The feedback receiver and the unsubscribe endpoint run on the pod network
  behind the ClusterIP Services the operator makes; how the world reaches them
  is the cluster's to decide, so the demo does what a platform team would: a
  NodePort Service in front of each. The host reaches the node's own address
  on the link without any route of its own. Not a host route to the Service
  or pod range (every stack's node uses the same ranges: two nodes on one
  machine would fight over it); not hostPort (not in the operator's
  Deployment, and the operator reverts a patched child). The bounce domain's
  MX resolves to the node's address, and reports go to the receiver's node
  port there; the https ingress's stand-in (`demo_plan.behind_ingress`) sends
  the one-click POST to the endpoint's node port.
What comes back reaches the pods only as mail systems and mail clients would:
by SMTP to the MX found in DNS, by an https POST to the URL in the message.
The end-to-end test runs the same code with a smaller audience. Exit code 0
only if every check holds.

Why one module of ~800 lines: it is a script read top to bottom, one step per
method in run order; what the steps compute is in `demo_plan`.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import functools
import ipaddress
import json
import os
import secrets
import shutil
import smtplib
import string
import subprocess
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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kafka import KafkaProducer

from . import harness, node_plan, procs, sockets
from .demo_plan import (
    DOMAINS,
    FBL_ADDRESS,
    FEEDBACK_MX,
    FOLLOW_UP,
    ONE_CLICK_BODY,
    UNSUBSCRIBE_BASE_URL,
    CameBack,
    Check,
    Egress,
    Plan,
    arf,
    behind_ingress,
    built_image,
    dkim_signed_headers,
    dsn,
    mailbox_copy,
    node_port,
    node_port_service,
    one_click_url,
    out_of_office,
    pods_check,
    return_path,
    summarize,
    summarize_loop,
    timings,
    zones,
)
from .node import Node, NodeError, NodeState
from .node_plan import Link
from .smtp_receiver import SMTPReceiver
from .stack import Stack, StackState

__all__ = ["Demo", "Plan", "run_demo"]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "demo"
CHART = ROOT / "helm" / "mailpipe"
BUILD_SCRIPT = ROOT / "scripts" / "build-image.sh"
NAMESPACE = "demo"
SYSTEM_NAMESPACE = "mailpipe-system"
RELEASE = "mailpipe"
OPERATOR = f"{RELEASE}-operator"  # the chart's Deployment (its full name is the release's)
POOL, CAMPAIGN, AUDIENCE = "demo", "demo-newsletter", "demo-audience"
# The operator's names for the pool's Deployments (and the relays' ConfigMap).
RELAY = f"mailpipe-relay-{POOL}"
FEEDBACK = f"mailpipe-feedback-{POOL}"
UNSUBSCRIBE = f"mailpipe-unsubscribe-{POOL}"
# The platform team's NodePort Services in front of the receiver and the endpoint.
MX_SERVICE, INGRESS_SERVICE = "demo-mx", "demo-ingress"
TIMEOUT_SECONDS = 240  # the whole campaign; 1000 recipients take about a minute
BUILD_TIMEOUT_SECONDS = 1200  # a cold build: Debian packages and wheels, loaded machine
# A pod from the ~80 MB image: unpack, Python and kopf start-up, the first
# readiness probe (every 10 s), on a loaded 2-core machine.
POD_READY_TIMEOUT_SECONDS = 300
# Topics created, the relay pod started and its consumer joined, the operator's
# next look at its Deployment: a minute on an idle machine.
POOL_READY_TIMEOUT_SECONDS = 300
# What came back in the campaign's status, and the follow-up's fan-out and one
# delivery: seconds on an idle machine, a minute when a loaded one starves the operator.
COUNTED_TIMEOUT_SECONDS = 120
WAIT_POLL_SECONDS = 0.5
WATCH_POLL_SECONDS = 3  # `kubectl get` once every 3 s reads like someone watching
DKIM_SECRET = "demo-dkim"
FEEDBACK_SECRET = "demo-feedback-keys"  # examples/demo/pool.yaml names it twice
FEEDBACK_KEY_ID = "ka"  # a key id is a-z and 2-7; the newest signs (rotation adds "kb")
FEEDBACK_KEY_BYTES = 32  # the least spec.feedback.keySecretRef accepts

# Finalizers: the operator pod deletes the relays and topics, tells the relays.
CR_DELETE_TIMEOUT_SECONDS = 120
UNINSTALL_TIMEOUT_SECONDS = 300  # the hook Job's pod starts on the node and deletes the CRs
NAMESPACE_GONE_TIMEOUT_SECONDS = 120  # its pods stop (grace periods of 30 and 60 s)
LOGS_TIMEOUT_SECONDS = 60  # `kubectl logs` of one pod, through the kubelet
DKIM_KEY_BITS = 2048  # what mailbox providers expect of an RSA DKIM key
CLIENT_TIMEOUT_SECONDS = 30  # one SMTP or HTTP exchange with an endpoint
DEFAULT_RECIPIENTS = 1000
FINAL_PHASES = ("Completed", "Failed")
HTTP_OK = 200
BOOTSTRAP_ENV = "MAILPIPE_KAFKA_BOOTSTRAP"  # the plugin's Kafka, when the pool's is not reachable
# `kubectl get pods -A` with what the plain listing leaves out: the node and the image.
POD_COLUMNS = (
    "NAMESPACE:.metadata.namespace,NAME:.metadata.name,STATUS:.status.phase,"
    "NODE:.spec.nodeName,IMAGE:.spec.containers[*].image"
)


def new_feedback_key() -> bytes:
    """A token key as the README makes one (`openssl rand -hex 32`): hex text.
    Every reader strips a key (a mounted file may end in a newline), so raw
    random bytes that began or ended with a whitespace byte (one run in twenty)
    lost it and the pool was refused (`FeedbackKeyInvalid`)."""
    return secrets.token_hex(FEEDBACK_KEY_BYTES).encode()


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
        self.node = Node(stack.state_dir)
        self.node_state: NodeState | None = None  # the node this demo ran on, once up
        self.node_was_up = False  # someone else's node: left running
        self.builder: harness.Child | None = None  # scripts/build-image.sh, while it runs
        self.build_started = 0.0
        self.image = ""  # the built image's reference, once imported into the node
        self.image_names: list[str] = []  # every name the node's containerd holds it by
        self.installed = False  # the chart, once `helm install` ran
        # The recipients' MX hosts: one recording receiver on loopback, on a port
        # free here (the pool's smtpPort), reached from the node through the link.
        self.smtp_port = procs.free_port()
        self._receiver: SMTPReceiver | None = None  # once started
        self.link: Link | None = None  # the node's link, once it is up
        self.egress = Egress("", "")  # the pool's egress IPs: the node's, once it is up
        self.pods_bootstrap = ""  # Kafka for pods (`Node.expose_kafka`)
        self.resolver = ""  # the stack's dnsmasq for pods: the host end of the link
        self.checks: list[Check] = []
        self.timings: dict[str, float] = {}  # step -> seconds, in the order they ran
        self.pods: list[dict[str, Any]] = []  # `kubectl get pods -A` once everything ran
        self.pod_logs: dict[str, Path] = {}  # pod name -> its log, saved before the node goes
        self.cleanup_errors: list[str] = []
        self.dkim_pem = ""  # the pool's DKIM private key, once created
        self.feedback_key = b""  # the pool's token key, once created
        self.mx_port = 0  # the feedback receiver's node port: the bounce domain's MX
        # where the https ingress in front of the one-click endpoint forwards to
        self.unsubscribe_backend = ""
        self.answers: dict[str, int] = {}  # what came back -> the reply it got
        self.sent_before = 0  # messages at the receiver before the follow-up
        self.one_click_signed: list[str] = []  # headers DKIM covers in the unsubscribed one's

    # -- helpers ---------------------------------------------------------------------

    @property
    def receiver(self) -> SMTPReceiver:
        if self._receiver is None:
            raise harness.HarnessError("the recording receiver has not started yet")
        return self._receiver

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return harness.kubectl_ok(self.env, *args, stdin=stdin)

    def read(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        """One object, through the API client where it can (no kubectl process:
        on a busy two-core machine each costs a second)."""
        obj = harness.get_object(self.env, kind, name, namespace)
        if obj is None:
            raise harness.HarnessError(f"{kind} {name} not found in namespace {namespace}")
        return obj

    def plugin(self, *args: str) -> str:
        """`kubectl mailpipe <args>`: kubectl finds this checkout's plugin on PATH.
        The pool names Kafka as its pods reach it (a ClusterIP); from the host
        the plugin is given the address the host reaches, as its error says to."""
        path = f"{harness.MAILPIPE.parent}{os.pathsep}{self.env.get('PATH', '')}"
        env = {**self.env, "PATH": path, BOOTSTRAP_ENV: self.state.kafka_bootstrap}
        return harness.kubectl_ok(env, "mailpipe", *args)

    def wait(
        self,
        what: str,
        predicate: Callable[[], bool],
        timeout_s: float = POOL_READY_TIMEOUT_SECONDS,
    ) -> None:
        """Wait for `predicate`; on a timeout, say where the pods and the pool are."""
        try:
            harness.wait_for(predicate, timeout_s, what, interval_seconds=WAIT_POLL_SECONDS)
        except harness.TimedOut as exc:
            pods = harness.kubectl(self.env, "get", "pods", "-A", "-o", "wide").stdout
            objects = harness.kubectl(self.env, "get", "sp,camp", "-n", NAMESPACE).stdout
            raise harness.TimedOut(f"{exc}\n{pods}\n{objects}") from exc

    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[what] = time.monotonic() - started
        self.say(f"  ({what}: {self.timings[what]:.1f}s)")

    def deployment_available(self, namespace: str, name: str) -> bool:
        """Every replica of the Deployment's latest template is available (its
        controller's word, from the kubelet's readiness probes)."""
        dep = harness.get_object(self.env, "deployment", name, namespace)
        if dep is None:
            return False
        status = dep.get("status") or {}
        want = int(dep["spec"].get("replicas", 1))
        return (
            int(status.get("observedGeneration", 0)) >= int(dep["metadata"]["generation"])
            and int(status.get("updatedReplicas", 0)) >= want
            and int(status.get("availableReplicas", 0)) >= want
        )

    # -- steps -------------------------------------------------------------------------

    def start_image_build(self) -> None:
        """`make image`'s script, in the background while the node comes up: it
        finds the image cached unless the sources changed."""
        self.say("building the image (scripts/build-image.sh; cached until the sources change)")
        self.build_started = time.time()  # wall clock: compared with its log's mtime
        log = self.workdir / "build-image.log"
        self.builder = harness.start("build-image", ["bash", str(BUILD_SCRIPT)], log)

    def start_node(self) -> None:
        """The stack's node (containerd, kubelet, kube-proxy, scheduler,
        controller-manager in a network namespace), and what its pods reach on
        the host: Kafka (a ClusterIP Service) and the stack's DNS."""
        before = self.node.state
        self.node_was_up = (
            before is not None
            and before.complete
            and all(procs.alive(p.pid) for p in before.processes.values())
        )
        self.say("starting the node (containerd, kubelet, kube-proxy, scheduler, controllers)")
        with self.timed("node up"):
            node = self.node_state = self.node.up(self.state)
        self.link = Link(ipaddress.IPv4Network(node.link))
        self.egress = Egress.of(node.egress)
        self.pods_bootstrap = self.node.expose_kafka(self.state)
        dns_port = self.state.dns_port
        host = self.node.expose(dns_port, "udp").rpartition(":")[0]
        self.node.expose(dns_port, "tcp")  # a truncated answer is asked again over TCP
        self.resolver = f"{host}:{dns_port}"
        self.say(
            f"node {node_plan.NODE_NAME} at {self.link.node_ip}, egress addresses"
            f" {', '.join(node.egress)}; its pods reach Kafka at {self.pods_bootstrap},"
            f" DNS at {self.resolver}"
        )

    def import_image(self) -> None:
        """Wait for the build; import its archive into the node's containerd (no
        registry: the chart names it with pullPolicy Never)."""
        builder = self.builder
        assert builder is not None
        harness.wait_for(
            lambda: builder.exit_code() is not None,
            BUILD_TIMEOUT_SECONDS,
            "scripts/build-image.sh",
            interval_seconds=WAIT_POLL_SECONDS,
        )
        # Its own time, beside the node's start: to its last word in its log.
        self.timings["image build (beside node up)"] = (
            builder.log.stat().st_mtime - self.build_started
        )
        if builder.exit_code() != 0:
            raise harness.HarnessError(f"scripts/build-image.sh failed:\n{builder.log_tail()}")
        builder.stop()  # exited: this only records it
        ref, archive = built_image(builder.log.read_text(errors="replace"))
        held = self.hold(archive)
        try:
            with self.timed("image import"):
                self.image_names = self.node.import_image(held)
        finally:
            held.unlink()
        if ref not in self.image_names:
            raise harness.HarnessError(f"the node holds {self.image_names}, not {ref}")
        self.image = ref
        self.say(f"image {ref} in the node's containerd")

    def hold(self, archive: Path) -> Path:
        """A hard link of the archive (a copy across filesystems), taken under the
        build script's lock: other checkouts build into the same cache, and the
        script keeps only the newest two archives."""
        held = self.workdir / "mailpipe.oci.tar"
        with (archive.parent / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    os.link(archive, held)
                except OSError:
                    shutil.copyfile(archive, held)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return held

    def start_receiver(self) -> None:
        """The recipients' MX: the receiver, exposed to the node at the host end
        of the link; DNS says so, and that the bounce domain's MX is the node."""
        assert self.link is not None
        rx = self._receiver = SMTPReceiver("127.0.0.1", self.smtp_port).start()
        self.plan.script(rx)
        mx = self.node.expose(rx.port).rpartition(":")[0]
        self.stack.set_dns(zones(mx, self.link.node_ip))
        self.say(
            f"MX of {', '.join(DOMAINS)}: one recording receiver on 127.0.0.1:{rx.port},"
            f" reached from the node at {mx}:{rx.port}; {FEEDBACK_MX}: the node,"
            f" {self.link.node_ip}"
        )

    def install_chart(self) -> None:
        # The platform team's cluster policy: the stack's Kafka and resolver (as
        # pods reach them), the receiver's port, hostNetwork relays and private
        # destinations in the demo's namespace, the image built here.
        repository, tag = self.image.rsplit(":", 1)
        policy = {
            "allowedImages": f"{repository}:*",
            "allowedBootstrapServers": self.pods_bootstrap,
            "allowedDnsNameservers": self.resolver,
            "allowedSmtpPorts": str(self.smtp_port),
            "hostNetworkNamespaces": NAMESPACE,
            # its MX is the host end of the node's link (the pool opts in; the platform allows it)
            "privateDestinationNamespaces": NAMESPACE,
        }
        values = {
            "image.repository": repository,
            "image.tag": tag,
            "image.pullPolicy": "Never",  # imported into the node; there is no registry
            "kafka.bootstrapServers": self.pods_bootstrap,
            # The operator watches, and may create relays in, the demo's namespace only.
            "operator.watchNamespaces": f"{{{NAMESPACE}}}",
            **{f"policy.{k}": f"{{{v}}}" for k, v in policy.items()},
        }
        self.say(
            f"helm install the chart with image {self.image} (watching namespace {NAMESPACE};"
            " policy: " + ", ".join(policy.values()) + ")"
        )
        with self.timed("helm install"):
            self.installed = True
            harness.helm_ok(
                self.env,
                "install",
                RELEASE,
                str(CHART),
                "-n",
                SYSTEM_NAMESPACE,
                "--create-namespace",
                *[arg for k, v in values.items() for arg in ("--set", f"{k}={v}")],
            )
        with self.timed("operator pod Ready"):
            self.wait(
                "the operator pod Ready",
                lambda: self.deployment_available(SYSTEM_NAMESPACE, OPERATOR),
                POD_READY_TIMEOUT_SECONDS,
            )

    def create_dkim_secret(self) -> None:
        """The pool signs with a key from a Secret, as a real one would; the
        test of this run greps every pod's log for it."""
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
        self.feedback_key = new_feedback_key()
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

    def values(self) -> dict[str, str]:
        """examples/demo's placeholders."""
        return {
            "NAMESPACE": NAMESPACE,
            "KAFKA_BOOTSTRAP": self.pods_bootstrap,
            "MAILPIPE_DNS": self.resolver,
            "SMTP_PORT": str(self.smtp_port),
            "WARM_IP": self.egress.warm,
            "WARMING_IP": self.egress.warming,
            "WARMUP_CAP": str(self.plan.warmup_cap),
            "WARMUP_CAP_DAY2": str(2 * self.plan.warmup_cap),
        }

    def expose_endpoints(self) -> None:
        """The platform team's part: a NodePort Service in front of the feedback
        receiver (the bounce domain's MX, which DNS names as the node) and one
        in front of the one-click endpoint (where the https ingress's stand-in
        forwards)."""
        assert self.link is not None
        services = [
            node_port_service(MX_SERVICE, NAMESPACE, POOL, "feedback", "smtp"),
            node_port_service(INGRESS_SERVICE, NAMESPACE, POOL, "unsubscribe", "http"),
        ]
        harness.apply(self.env, {"apiVersion": "v1", "kind": "List", "items": services})
        self.mx_port = node_port(self.read("service", MX_SERVICE))
        ingress_port = node_port(self.read("service", INGRESS_SERVICE))
        node_ip = self.link.node_ip
        self.unsubscribe_backend = f"http://{node_ip}:{ingress_port}/u/"
        self.say(
            f"NodePort Services: {FEEDBACK_MX} -> {node_ip}:{self.mx_port} (the feedback"
            f" receiver's pods); https ingress stand-in: {UNSUBSCRIBE_BASE_URL} ->"
            f" {self.unsubscribe_backend} (the unsubscribe endpoint's pods)"
        )

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
            interval_seconds=WATCH_POLL_SECONDS,
        )

    def summarize_send(self) -> None:
        """The send's checks, as it stood at Completed (before anything came back)."""
        self.checks.extend(
            summarize(
                self.plan, self.campaign()["status"], self.receiver.handler, self.egress, self.say
            )
        )

    def endpoints_up(self) -> None:
        """Wait for the receiver's and the endpoint's Deployments (their pods'
        readiness probes) and the receiver's node port. Nothing before what
        comes back needs them, so the campaign does not wait for them."""
        assert self.link is not None
        for name in (FEEDBACK, UNSUBSCRIBE):
            self.wait(
                f"Deployment {name} available",
                functools.partial(self.deployment_available, NAMESPACE, name),
                POD_READY_TIMEOUT_SECONDS,
            )
        node_ip = self.link.node_ip
        self.wait(
            "the feedback receiver at its node port", lambda: procs.listening(node_ip, self.mx_port)
        )

    def show_pods(self) -> None:
        """What a user sees of it all: every pod, with its node and image; the
        operator's and the pool's pods must run the image built here."""
        self.say("\nkubectl get pods -A")
        self.say(self.kubectl("get", "pods", "-A").rstrip())
        self.say(f"\nkubectl get pods -A -o custom-columns={POD_COLUMNS}")
        self.say(self.kubectl("get", "pods", "-A", "-o", f"custom-columns={POD_COLUMNS}").rstrip())
        self.pods = harness.get_json(self.env, "pods", "-A")["items"]
        roles = {
            "operator": (SYSTEM_NAMESPACE, f"{OPERATOR}-"),
            "relay": (NAMESPACE, f"{RELAY}-"),
            "feedback receiver": (NAMESPACE, f"{FEEDBACK}-"),
            "unsubscribe endpoint": (NAMESPACE, f"{UNSUBSCRIBE}-"),
        }
        self.checks.extend(pods_check(self.pods, self.image, self.image_names, roles))

    # -- what comes back: reaches the pool's endpoints as the world would ---------------------

    def mailbox(self, recipient: str) -> tuple[bytes, str]:
        """The copy `recipient`'s mailbox holds, and the address it came from."""
        message = next(m for m in self.receiver.messages() if recipient in m.rcpt_tos)
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
        (RCPT's if refused, else DATA's). The MX takes it on its node port (a
        MX's port 25 on a real cluster's load balancer)."""
        host = self.mx_address(to.rpartition("@")[2])
        with smtplib.SMTP(host, self.mx_port, timeout=CLIENT_TIMEOUT_SECONDS) as smtp:
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
        self.sent_before = len(self.receiver.messages())
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
        self.say(f"\n(the plugin reads Kafka at {BOOTSTRAP_ENV}={self.state.kafka_bootstrap})")
        for shown, text in out.items():
            if shown != "json":
                self.say(f"\nkubectl mailpipe {shown}\n{text.rstrip()}")
        listed: list[dict[str, Any]] = json.loads(out["json"])
        return listed

    def follow_up_done(self) -> tuple[dict[str, Any], list[str]]:
        """The follow-up's status once it finished, and who the receiver got it for."""

        def status() -> dict[str, Any]:
            obj = harness.get_object(self.env, "camp", FOLLOW_UP, NAMESPACE) or {}
            return dict(obj.get("status") or {})

        self.wait(
            f"{FOLLOW_UP} to finish",
            lambda: status().get("phase") in FINAL_PHASES,
            COUNTED_TIMEOUT_SECONDS,
        )
        sent = [r for m in self.receiver.messages()[self.sent_before :] for r in m.rcpt_tos]
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

    def loopback_only(self) -> Check:
        """The stack promises loopback only on the host: every socket its
        components, the node's processes and this process listen on in the
        host's network namespace, checked from /proc (the pods and the node's
        kubelet listen in the node's namespace, which this table does not show)."""
        pids = [os.getpid(), *(p.pid for p in self.state.processes.values())]
        if self.node_state is not None:
            pids += [p.pid for p in self.node_state.processes.values()]
        listeners = sockets.listening(pids)
        wide = sorted({f"{a}:{p}" for a, p in listeners if not sockets.is_loopback(a)})
        if wide:
            return False, "listening beyond loopback: " + ", ".join(wide)
        return bool(listeners), "every process of the stack listens on loopback only"

    # -- clean-up ------------------------------------------------------------------------

    def save_pod_logs(self) -> None:
        """Each pod's log (`kubectl logs`) into the work directory: the pods go
        with the node."""
        got = harness.kubectl(self.env, "get", "pods", "-A", "-o", "json")
        if got.returncode != 0:
            return
        (self.workdir / "pods").mkdir(exist_ok=True)
        for pod in json.loads(got.stdout)["items"]:
            namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            if namespace not in (NAMESPACE, SYSTEM_NAMESPACE):
                continue
            out = harness.kubectl(
                self.env,
                "logs",
                name,
                "-n",
                namespace,
                "--all-containers",
                timeout_seconds=LOGS_TIMEOUT_SECONDS,
            )
            path = self.workdir / "pods" / f"{name}.log"
            path.write_text(out.stdout + out.stderr)
            self.pod_logs[name] = path

    def uninstall(self) -> None:
        """As the README says: the CRs first, while the operator still runs their
        finalizers (deleting the pool deletes its relays and topics), then the
        chart, whose pre-delete hook Job runs on the node; without hooks when
        that cannot work (no image on the node) or did not."""
        harness.kubectl(
            self.env,
            "delete",
            "campaigns,sendingpools",
            "--all",
            "-n",
            NAMESPACE,
            f"--timeout={CR_DELETE_TIMEOUT_SECONDS}s",
            timeout_seconds=CR_DELETE_TIMEOUT_SECONDS + 30,
        )
        hooks = [] if self.image else ["--no-hooks"]
        out = harness.helm(
            self.env,
            "uninstall",
            RELEASE,
            "-n",
            SYSTEM_NAMESPACE,
            *hooks,
            "--wait",
            f"--timeout={UNINSTALL_TIMEOUT_SECONDS}s",
            timeout_seconds=UNINSTALL_TIMEOUT_SECONDS + 60,
        )
        if out.returncode != 0 and hooks == []:
            self.say(f"helm uninstall: {out.stderr.strip()}; again without its hook")
            out = harness.helm(self.env, "uninstall", RELEASE, "-n", SYSTEM_NAMESPACE, "--no-hooks")
        if out.returncode != 0:
            raise harness.CommandFailed(f"helm uninstall: {out.stderr.strip()}")

    def timed_uninstall(self) -> None:
        if self.installed:
            with self.timed("uninstall (CRs, then the chart and its hook Job)"):
                self.uninstall()

    def delete_namespaces(self) -> None:
        """The demo's namespaces (its NodePort Services, Secrets, audience), while
        the node still runs to stop their pods."""
        harness.kubectl(
            self.env,
            "delete",
            "namespace",
            NAMESPACE,
            SYSTEM_NAMESPACE,
            "--ignore-not-found",
            f"--timeout={NAMESPACE_GONE_TIMEOUT_SECONDS}s",
            timeout_seconds=NAMESPACE_GONE_TIMEOUT_SECONDS + 30,
        )

    def node_down(self) -> None:
        if self.node_state is None or self.node_was_up:
            return
        # Every node process and pod, page cache included: what a node for the demo
        # needs. Not knowing it (no v1 memory cgroup) must not keep the node up.
        try:
            peak = self.node.memory_peak_bytes(self.node_state)
            self.say(f"  node cgroup peak memory {peak / 2**20:.0f} MiB")
        except (NodeError, OSError) as exc:
            self.say(f"  node cgroup peak memory unknown: {exc}")
        with self.timed("node down"):
            self.node.down()

    def stop_receiver(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()

    def stop_build(self) -> None:
        if self.builder is not None:
            self.builder.stop()

    def clean_up(self) -> None:
        """Everything the demo made goes, each step whatever the one before did;
        a step that fails is said, and fails the demo."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stop the image build", self.stop_build),
            ("save the pods' logs", self.save_pod_logs),
            ("uninstall", self.timed_uninstall),
            ("delete the demo's namespaces", self.delete_namespaces),
            ("stop the receiver", self.stop_receiver),
            ("bring the node down", self.node_down),
        ]
        for what, step in steps:
            try:
                step()
            except (harness.HarnessError, NodeError, OSError, subprocess.SubprocessError) as exc:
                self.cleanup_errors.append(f"{what}: {exc}")
                self.say(f"clean-up: {what} failed: {exc}")

    def run(self) -> bool:
        try:
            self.start_image_build()
            self.start_node()
            self.import_image()
            self.start_receiver()
            self.kubectl("create", "namespace", NAMESPACE)
            self.install_chart()
            self.create_dkim_secret()
            self.create_feedback_keys()
            self.say("kubectl apply -f examples/demo/pool.yaml")
            applied = time.monotonic()
            self.apply_template("pool.yaml", self.values())
            self.expose_endpoints()
            self.wait("pool Ready (its relay pod Ready on the node)", self.pool_ready)
            self.timings["pool Ready"] = time.monotonic() - applied
            self.say(f"  (pool Ready: {self.timings['pool Ready']:.1f}s after it was applied)")
            self.seed_suppressions()
            audience = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": AUDIENCE, "namespace": NAMESPACE},
                "data": {"audience.csv": self.plan.audience_csv()},
            }
            harness.apply(self.env, audience)
            self.say(f"kubectl apply -f examples/demo/campaign.yaml  ({self.plan.size} recipients)")
            self.apply_template("campaign.yaml", self.values())
            with self.timed("campaign Completed"):
                self.watch()
            self.summarize_send()
            self.endpoints_up()  # started with the relay: up long since, as a rule
            self.show_pods()
            self.say("\n== what comes back ==")
            back_started = time.monotonic()
            self.reply_out_of_office()
            self.return_bounces()
            self.complain()
            self.unsubscribe_one_click()
            self.start_follow_up()
            suppressions = self.show_suppressions()
            self.wait_counted()
            follow_up, sent = self.follow_up_done()
            self.timings["what comes back, counted; the follow-up"] = (
                time.monotonic() - back_started
            )
            self.summarize_loop(suppressions, follow_up, sent)
            self.say("\nkubectl describe camp demo-newsletter (events):")
            described = self.kubectl("describe", "camp", CAMPAIGN, "-n", NAMESPACE)
            self.say(described[described.find("Events:") :].rstrip())
        finally:
            self.say("\ncleaning up: the CRs, the chart, the namespaces, the node")
            with self.timed("clean-up (all of it)"):
                self.clean_up()
        self.say("\n== timings ==")
        for line in timings(self.timings):
            self.say(line)
        return bool(self.checks) and all(ok for ok, _ in self.checks) and not self.cleanup_errors


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
    try:
        plan = Plan.make(args.recipients)
    except ValueError as exc:  # before anything starts: nothing to stop
        print(f"mailpipe demo: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-demo-"))
    print(f"mailpipe demo: {args.recipients} recipients; logs in {workdir}")
    try:
        # A signal (Ctrl-C, SIGTERM) becomes SystemExit: the demo's clean-up
        # and the stack's `down` (its node included) run, and a second signal
        # cannot cut them short.
        with harness.stop_on_signal(), ExitStack() as stack_ctx:
            print("starting the local stack (Kafka, etcd + kube-apiserver, dnsmasq)...")
            stack = stack_ctx.enter_context(_own_stack(args.state_dir))
            print(f"  (stack up: {time.monotonic() - started:.1f}s)")
            ok = run_demo(stack, workdir, plan)
    except SystemExit as exc:
        print("interrupted: everything the demo started is stopped", file=sys.stderr)
        return int(exc.code or 1)
    except Exception as exc:  # the demo's contract is an exit code and a readable reason
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"\ndemo {'PASSED' if ok else 'FAILED'} in {elapsed:.0f}s")
    return 0 if ok else 1
