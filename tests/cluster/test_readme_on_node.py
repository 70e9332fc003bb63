"""The README, run top to bottom on a real node: every shell block, in order.

Each line of each ```sh block is typed, as written, into one bash started in
the repository root with nothing of the stack (no KUBECONFIG, no
~/.kube/config, no helm on its PATH), whose first line is `eval "$(mailpipe dev
env)"`: what a reader's terminal would have. Variables and the working
directory carry from line to line, as in a terminal. Every line must exit 0,
and after each block the test checks what the README says the block did. A
README edit that breaks a line fails here, and so does a block that is neither
run here nor named in `ELSEWHERE` with the test that runs it.

The cluster is a stack of this module's own with its real node (containerd, a
kubelet, the scheduler and the controller-manager): `helm install` runs the
operator as a pod from the image built here (imported into the node, named by
the chart's default), the quick start's pool becomes relay pods Ready on the
one node, and a Campaign through it is delivered to a recording MX. A stack of
its own, not the session's: the README installs a cluster-wide operator and
its uninstall block deletes every pool and campaign in every namespace.

What differs from a reader's own cluster, and only that (the substitutions):

- Before the first line the shell exports `KAFKA_BOOTSTRAP` as the address the
  node's pods reach the stack's Kafka at (its Service) and
  `MAILPIPE_KAFKA_BOOTSTRAP` as the one this machine reaches it at (for the
  plugin, which runs outside the cluster), as the README says for the stack.
- The Internet's DNS and MX hosts are the stack's: the `helm install` line
  gets three more `--set`s (policy values allowing the stack's resolver, the
  recording receiver's port and delivery to the node's link address in
  namespace mail), and right after the quick start applies its pool the test
  sets that pool's `dnsNameserver`, `smtpPort` and
  `delivery.allowPrivateDestinations`. The README's newsletter sends in
  weekday send windows, so delivery is proven with a Campaign of the test's
  own through the same pool.
- The relays of the warm-up pool stay Pending (no node holds 192.0.2.20-21, as
  the README says). Before a block that un-pauses the warming IP, the test
  writes what relays write after a run of bounces, bounce events of that IP on
  the pool's events topic, until the pool shows the IP PAUSED.
- The Kafka login block names the reader's own files (`./mail.pw`,
  `./ca.pem`): the shell `cd`s to a directory that holds such files first.
- The Kafka ACL block needs what the reader's cluster has and the dev stack's
  broker has not: a broker with SASL logins and an authorizer (a second
  broker, started for it), `kafka-acls.sh` (a script running the same class,
  `kafka.admin.AclCommand`, from the stack's Kafka jars), and `K` and `A` set
  as the README says (its address, an admin login's client properties).
- The "operator is gone for good" block is for objects stuck being deleted
  with no operator: after the uninstall block, the test re-creates exactly
  that (the CRDs, and the quick start's pool and campaign deleted while they
  hold the operator's finalizer).

The run also times each line and each block (with the test's own steps before
and after it) and prints the table at the end, passed or not (`pytest -s`), and
writes it to `readme-steps.json` in the test's tmp dir: the first hour as a new
user, step by step. Nothing asserts on those times.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourceType,
)
from kafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from mailpipe.contracts.topics import NEVER_MAIL_TOPIC
from mailpipe.contracts.wire import Disposition, Event, encode
from mailpipe.devstack import harness, kafka, node_plan, paths, procs
from mailpipe.devstack.dns import Zone
from mailpipe.devstack.node import Node
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import Stack, StackState
from mailpipe.operator.defaults import PoolDefaults
from mailpipe.operator.models import CampaignSpec, SendingPoolSpec
from mailpipe.operator.pool import PoolRef, topics
from tests.cluster.conftest import GONE_TIMEOUT_SECONDS, Image, campaign_manifest
from tests.conftest import wait_for
from tests.devstack.test_cli import bare_env
from tests.kafkakit.test_tenant_acls import _admin as acl_admin
from tests.scram_broker import (
    ACL_BROKER_START_SECONDS,
    ACLS_APPLIED_SECONDS,
    ALL_ACLS,
    PASSWORDS,
    operator_acls,
)
from tests.scram_broker import tenant_acls as namespace_acl_list

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CRDS = ROOT / "crds"  # the chart's crds/ (a symlink to it, which kubectl -f does not follow)
MAILPIPE = Path(sys.executable).parent / "mailpipe"
LINE_TIMEOUT_SECONDS = 420  # the longest line: `helm install --wait` (its default 5 min timeout)
FANOUT_SECONDS = 120  # two recipients checked and produced by the operator pod
DELIVERY_SECONDS = 300  # the test's campaign fanned out, read by a relay pod, delivered
REASON_SECONDS = 180  # the warm-up pool's pods Pending, the operator's pod re-check
STATUS_SECONDS = 90  # the warm-up status timer reports every 15 s, after 5 s idle
ROLLOUT_SECONDS = 60
PEERING_SECONDS = 300  # a second operator pod started (image on the node) and peered
SHELL_EXIT_SECONDS = 10
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{2,3} (.+)$", re.MULTILINE)
NAMESPACE, POOL, CAMPAIGN = "mail", "marketing", "november-newsletter"
OPERATOR_NAMESPACE = "mailpipe-system"
OPERATOR_SELECTOR = "app.kubernetes.io/instance=mailpipe,app.kubernetes.io/component=operator"
OPERATOR_METRICS_PORT = 9090  # the chart's operator.metricsPort
RELAY_SELECTOR = f"mailpipe.io/pool={POOL}"
DEFAULT_IMAGE = "mailpipe.local/mailpipe:0.1.0"  # the chart's default, as the README installs it
RELAY_DEPLOYMENT = f"mailpipe-relay-{POOL}"
WARMING_IP = "192.0.2.21"  # examples/warmup-pool.yaml's warming IP
EVENTS_TOPIC = f"mailpipe.{NAMESPACE}.{POOL}.events"
POOL_TOPICS = f"mailpipe.{NAMESPACE}.{POOL}."
FINALIZER = "mailpipe.io/finalizer"
DELIVERY_CAMPAIGN = "quick-start-delivery"
DELIVERY_DOMAINS = ("alpha.readme.test", "beta.readme.test")
DELIVERY_RECIPIENTS = [f"reader{i}@{DELIVERY_DOMAINS[i % 2]}" for i in range(6)]

# Blocks not run here, by the start of their first line: why, and what runs them.
ELSEWHERE = {
    "make demo": "`make demo` is tests/e2e/test_demo.py's run (the Demo class, smaller);"
    " `make test` is this suite itself",
}


@dataclass(frozen=True)
class Block:
    section: str  # the heading it is under
    lines: tuple[str, ...]

    def starts(self, prefix: str) -> bool:
        return bool(self.lines) and self.lines[0].startswith(prefix)


def shell_lines(block: str) -> list[str]:
    """A block's commands: comments and blank lines left out, `\\`-continued lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def shell_blocks(text: str) -> list[Block]:
    """Every ```sh block of the text, in order, with the heading it is under."""
    blocks = []
    for m in SHELL_BLOCK.finditer(text):
        headings = HEADING.findall(text, 0, m.start())
        blocks.append(Block(headings[-1] if headings else "", tuple(shell_lines(m.group(1)))))
    return blocks


def test_shell_blocks_join_continuations_and_drop_comments() -> None:
    text = "## A\n```sh\n# note\na \\\n  b  # c\n\nd\n```\n### B\n```yaml\nx\n```\n```sh\ne\n```\n"
    assert shell_blocks(text) == [Block("A", ("a b  # c", "d")), Block("B", ("e",))]


# -- how long each step took ------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    section: str  # which README block: its number and heading
    step: str  # a README line, or the test's own part around a block
    seconds: float


@dataclass
class StepTimes:
    """Each README line's time and each block's, in README order: what a new user's
    first hour costs, step by step (issue 18). Reported, never asserted: wall-clock
    time says as much about the machine's load as about the code."""

    rows: list[Timed] = field(default_factory=list)
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def add(self, section: str, step: str, seconds: float) -> None:
        self.rows.append(Timed(section, step, seconds))

    @contextmanager
    def timing(self, section: str, step: str) -> Iterator[None]:
        """Time what runs inside; a step that fails or times out is kept, marked so."""
        started = time.monotonic()
        try:
            yield
        except BaseException:  # pytest-timeout's Failed too: the table says where it stopped
            self.add(section, f"{step} (failed here)", time.monotonic() - started)
            raise
        self.add(section, step, time.monotonic() - started)

    def blocks(self) -> list[tuple[str, float]]:
        """Each block's total, lines and the test's own steps around it together."""
        totals: list[tuple[str, float]] = []
        for row in self.rows:
            if totals and totals[-1][0] == row.section:
                totals[-1] = (row.section, totals[-1][1] + row.seconds)
            else:
                totals.append((row.section, row.seconds))
        return totals

    def table(self) -> str:
        width = 72  # a terminal line: long commands are cut, the section says which block
        lines = [f"{'seconds':>8}  step"]
        for section, total in self.blocks():
            lines.append(f"{total:8.1f}  == {section}")
            for row in (r for r in self.rows if r.section == section):
                step = row.step if len(row.step) <= width else row.step[: width - 1] + "…"
                lines.append(f"{row.seconds:8.1f}     {step}")
        lines.append(f"{sum(r.seconds for r in self.rows):8.1f}  total")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "load_average_before": self.load_before,
                    "load_average_after": os.getloadavg(),
                    "blocks": [{"section": s, "seconds": t} for s, t in self.blocks()],
                    "steps": [vars(r) for r in self.rows],
                },
                indent=2,
            )
        )


def test_step_times_total_each_block_in_readme_order() -> None:
    times = StepTimes()
    for section, step, seconds in [("A", "a", 1.0), ("A", "b", 2.5), ("B", "c", 0.5)]:
        times.add(section, step, seconds)
    with pytest.raises(KeyError), times.timing("B", "d"):
        raise KeyError("a line that failed")
    assert [r.step for r in times.rows][-1] == "d (failed here)"
    times.rows.pop()
    assert times.blocks() == [("A", 3.5), ("B", 0.5)]
    assert times.table().splitlines() == [
        " seconds  step",
        "     3.5  == A",
        "     1.0     a",
        "     2.5     b",
        "     0.5  == B",
        "     0.5     c",
        "     4.0  total",
    ]


# -- the reader's shell ----------------------------------------------------------------


class Shell:
    """One bash, fed lines as a reader types them; each line's exit status and output.

    A line runs with stdin from /dev/null (no line reads the next ones as its
    input) and may end in a `# comment`; a marker printed after it carries `$?`.
    The shell is a process group of its own, killed at `close`."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.output: queue.Queue[bytes] = queue.Queue()
        self.pump = threading.Thread(target=self._pump, name="readme-shell", daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.output.put(raw)
        self.output.put(b"")  # the shell is gone

    def run(self, line: str, timeout_seconds: float = LINE_TIMEOUT_SECONDS) -> tuple[int, str]:
        marker = f"readme-line-done-{uuid.uuid4().hex}"
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            f"{{ {line}\n}} </dev/null\nprintf '\\n%s %s\\n' {marker} $?\n".encode()
        )
        self.proc.stdin.flush()
        printed: list[str] = []
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                raw = self.output.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no end after {timeout_seconds:.0f}s: {line}\n{''.join(printed)}"
                ) from None
            if not raw:
                raise AssertionError(f"the shell exited at: {line}\n{''.join(printed)}")
            text = raw.decode(errors="replace")
            if marker in text:
                printed.append(text[: text.index(marker)])
                return int(text.split(marker, 1)[1].split()[0]), "".join(printed)[:-1]
            printed.append(text)

    def ok(self, line: str) -> str:
        status, printed = self.run(line)
        assert status == 0, f"{line}: exit {status}\n{printed}"
        return printed

    def env(self, workdir: Path) -> dict[str, str]:
        """The shell's environment now (for the test's own kubectl, helm and clients)."""
        dump = workdir / "reader.env"
        self.ok(f"env -0 > {dump}")
        pairs = [item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item]
        return {k: v for k, v in pairs}

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=SHELL_EXIT_SECONDS)
        except subprocess.TimeoutExpired:  # a line that hung: its whole group goes
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.pump.join(SHELL_EXIT_SECONDS)  # it reads to the end of the output
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- the node's pods, and what the relays of the warm-up pool would write -----------------


def acl_broker_ready(bootstrap: str) -> bool:
    """The README's own ACL broker answers its admin (PLAIN login, as the README's)."""
    host, _, port = bootstrap.rpartition(":")
    if not procs.listening(host, int(port)):
        return False  # no client, nothing to leak
    try:
        admin = acl_admin(bootstrap)
    except KafkaError:
        # kafka-python leaves a half-made bootstrap's sockets open: collect them here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def pool(env: dict[str, str]) -> dict[str, Any]:
    return harness.get_object(env, "sp", POOL, NAMESPACE) or {}


def campaign(env: dict[str, str], name: str = CAMPAIGN) -> dict[str, Any]:
    return harness.get_object(env, "camp", name, NAMESPACE) or {}


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def warmup_column(env: dict[str, str]) -> str:
    return str(pool(env).get("status", {}).get("warmupSummary", ""))


def live_pods(env: dict[str, str], namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = harness.get_json(env, "pods", "-n", namespace, "-l", selector)[
        "items"
    ]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def operator_pods(env: dict[str, str]) -> list[dict[str, Any]]:
    return live_pods(env, OPERATOR_NAMESPACE, OPERATOR_SELECTOR)


def relay_pods(env: dict[str, str]) -> list[dict[str, Any]]:
    return live_pods(env, NAMESPACE, RELAY_SELECTOR)


def pod_logs(env: dict[str, str]) -> str:
    """The operator pods' log tails: what a failed wait is explained by."""
    if harness.get_object(env, "namespace", OPERATOR_NAMESPACE, "") is None:
        return ""
    tails = []
    for pod in operator_pods(env):
        name = pod["metadata"]["name"]
        got = harness.kubectl(env, "logs", "-n", OPERATOR_NAMESPACE, name, "--tail=60")
        tails.append(f"--- {name} ---\n{got.stdout}{got.stderr}")
    return "\n".join(tails)


def pause_warming_ip(env: dict[str, str]) -> None:
    """Write the bounce events a relay of the warming IP would, until it is paused."""
    spec = yaml.safe_load((ROOT / "examples" / "warmup-pool.yaml").read_text())["spec"]
    sample = spec["warmup"]["minSample"]  # judged after this many; every one bounced
    producer = KafkaProducer(bootstrap_servers=env["MAILPIPE_KAFKA_BOOTSTRAP"])
    try:
        for i in range(sample):
            bounce = Event(
                message_id=f"readme-{time.time_ns()}-{i}",
                recipient=f"gone{i}@example.org",
                domain="example.org",
                disposition=Disposition.BOUNCED,
                time=time.time(),
                egress_ip=WARMING_IP,
                smtp_code=550,
                relay=f"{RELAY_DEPLOYMENT}-0",
            )
            producer.send(EVENTS_TOPIC, encode(bounce))
        producer.flush()
    finally:
        producer.close()
    wait_for(
        lambda: f"{WARMING_IP} PAUSED" in warmup_column(env),
        STATUS_SECONDS,
        f"{WARMING_IP} PAUSED in the WARMUP column",
    )


def wait_unpaused(env: dict[str, str]) -> None:
    wait_for(
        lambda: "PAUSED" not in warmup_column(env) and warmup_column(env) != "",
        STATUS_SECONDS,
        f"{WARMING_IP}'s pause lifted (WARMUP: {warmup_column(env)})",
    )


def pool_topics(bootstrap: str) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return sorted(t for t in admin.list_topics() if t.startswith(POOL_TOPICS))
    finally:
        admin.close()


def crd_names(env: dict[str, str]) -> set[str]:
    out = harness.kubectl_ok(env, "get", "crd", "-o", "name")
    return {line.split("/", 1)[1] for line in out.split()}


CHART_CRDS = {
    "sendingpools.mailpipe.io",
    "campaigns.mailpipe.io",
    "kopfpeerings.kopf.dev",
    "clusterkopfpeerings.kopf.dev",
}


@dataclass(frozen=True)
class World:
    """The stack's stand-ins for the Internet's DNS and MX hosts, as the node's
    pods reach them (at the host end of the node's link)."""

    rx: SMTPReceiver
    resolver: str  # host:port of the stack's dnsmasq
    kafka_for_pods: str  # the stack's Kafka, at its Service address on the node

    def install_sets(self) -> str:
        """What the quick start's `helm install` line gets: the cluster policy
        allowing the stack's resolver, the receiver's port, and delivery to the
        link's private address from namespace mail."""
        port = self.rx.port
        return (
            f" --set 'policy.allowedDnsNameservers={{{self.resolver}}}'"
            f" --set 'policy.allowedSmtpPorts={{{port}}}'"
            f" --set 'policy.privateDestinationNamespaces={{{NAMESPACE}}}'"
        )

    def pool_patch(self) -> str:
        return json.dumps(
            {
                "spec": {
                    "dnsNameserver": self.resolver,
                    "smtpPort": self.rx.port,
                    "delivery": {"allowPrivateDestinations": True},
                }
            }
        )


def delivery_campaign(recipients: list[str]) -> dict[str, Any]:
    """A Campaign of the test's own through the quick start's pool: the README's
    newsletter waits for weekday send windows."""
    manifest = campaign_manifest(DELIVERY_CAMPAIGN, NAMESPACE, POOL, recipients)
    manifest["spec"] |= {
        "from": {"address": "news@news.example.com"},
        "subject": "Hello from the quick start",
    }
    return manifest


# -- what each block is for, checked after it ---------------------------------------------


@dataclass
class Run:
    """One run of the README: the reader's shell, the world, what each line printed."""

    shell: Shell
    env: dict[str, str]
    world: World
    workdir: Path
    files: Path  # what the reader brings: the files a block names
    imported: list[str]  # the image's names in the node's containerd
    printed: dict[str, str] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    acl_bootstrap: str = ""

    def typed(self, line: str) -> str:
        """The line as the test types it (see the module docstring's substitutions)."""
        if line.startswith("helm install mailpipe "):
            return line + self.world.install_sets()
        return line

    def after_line(self, line: str) -> None:
        if line.startswith("kubectl apply -f examples/quickstart-pool.yaml"):
            harness.kubectl_ok(
                self.env, "patch", "sp", POOL, "-n", NAMESPACE, "--type=merge",
                "-p", self.world.pool_patch(),
            )  # fmt: skip

    def check_quick_start(self) -> None:
        """The operator and two relays run as pods on the node from the image built
        here; the pool is Ready, the newsletter fanned out, and mail through the
        pool reaches the recording MX."""
        env = self.env
        assert harness.condition_true(pool(env)), pool(env)
        listed = next(
            v for k, v in self.printed.items() if k.startswith("kubectl get sendingpools")
        )
        assert re.search(rf"^sendingpool\S*/{POOL} +True ", listed, re.MULTILINE), listed
        [operator] = operator_pods(env)
        relays = relay_pods(env)
        assert len(relays) == 2, [p["metadata"]["name"] for p in relays]
        for pod in [operator, *relays]:
            assert pod["spec"]["nodeName"] == node_plan.NODE_NAME
            assert pod["spec"]["containers"][0]["image"] == DEFAULT_IMAGE
            [container] = pod["status"]["containerStatuses"]
            assert container["image"] in self.imported, container["image"]
            assert container["ready"], container
        assert not any(p["spec"].get("hostNetwork") for p in relays)
        # Every example passes the API server's checks (CRD schema, the chart's
        # admission policy), the ones this README does not apply included.
        for example in EXAMPLES:
            harness.kubectl_ok(env, "apply", "--dry-run=server", "-f", str(example))
        audience = 2  # examples/newsletter-campaign.yaml's ConfigMap

        def fanned_out() -> bool:
            fanout = campaign(env).get("status", {}).get("fanout", {})
            return bool(fanout.get("state") == "done" and fanout.get("enqueued") == audience)

        wait_for(fanned_out, FANOUT_SECONDS, "the campaign's audience on Kafka")
        wait_for(
            lambda: campaign(env).get("status", {}).get("phase") in ("Scheduled", "Sending"),
            FANOUT_SECONDS,
            "the campaign Scheduled or Sending",
        )
        # The operator pod's own metrics saw the same.
        metrics = operator_metrics(env, operator)
        ready = sample(metrics, "mailpipe_operator_pool_ready", namespace=NAMESPACE, pool=POOL)
        assert ready == 1, metrics
        enqueued = sample(
            metrics,
            "mailpipe_operator_fanout_enqueued_records",
            namespace=NAMESPACE,
            pool=POOL,
            campaign=CAMPAIGN,
        )
        assert enqueued == audience, metrics
        # Mail through the quick start's pool, from its relay pods to the MX.
        started = time.monotonic()
        harness.apply(env, delivery_campaign(DELIVERY_RECIPIENTS))
        wait_for(
            lambda: set(self.world.rx.recipients()) >= set(DELIVERY_RECIPIENTS),
            DELIVERY_SECONDS,
            "the test's campaign at the recording MX",
        )
        wait_for(
            lambda: campaign(env, DELIVERY_CAMPAIGN).get("status", {}).get("phase") == "Completed",
            DELIVERY_SECONDS,
            "the test's campaign Completed",
        )
        print(f"delivered through the quick start's pool in {time.monotonic() - started:.1f}s")
        got = Counter(r for r in self.world.rx.recipients() if r in DELIVERY_RECIPIENTS)
        assert got == Counter(DELIVERY_RECIPIENTS), got
        pod_ips = {p["status"]["podIP"] for p in relay_pods(env)}
        peers = {m.peer for m in self.world.rx.messages()}
        # from the pods' own addresses, as the node's NAT (if any) leaves them
        print(f"OBSERVED quick start delivery: peers {sorted(peers)}, relay pods {pod_ips}")

    def check_production_pool(self) -> None:
        """On one node with no egress IP labels for it, the warm-up pool's relays
        stay Pending and the pool says why, naming the addresses."""
        env = self.env

        def says_no_node() -> bool:
            return ready_condition(pool(env)).get("reason") == "NoNodeHoldsEgressIPs"

        wait_for(says_no_node, REASON_SECONDS, "NoNodeHoldsEgressIPs on the warm-up pool")
        message = ready_condition(pool(env))["message"]
        print(f"OBSERVED production pool on one node: {message}")
        assert WARMING_IP in message and "egress.mailpipe.io/<address>" in message, message
        pending = [p for p in relay_pods(env) if p["spec"].get("hostNetwork")]
        assert pending and all(p["status"]["phase"] == "Pending" for p in pending), pending

    def check_unpaused(self) -> None:
        wait_unpaused(self.env)

    def in_files_dir(self) -> None:
        self.shell.ok(f"cd {self.files}")

    def check_login_secret(self) -> None:
        self.shell.ok(f"cd {ROOT}")
        secret = harness.get_json(self.env, "secret", "kafka-marketing", "-n", NAMESPACE)
        assert set(secret["data"]) == {"username", "password", "ca.crt"}, secret["data"].keys()

    def acl_broker(self) -> None:
        """What the ACL block needs: a broker with SASL logins and an authorizer, no
        ACL yet; `kafka-acls.sh`; K and A set as the README says."""
        ports, command, log = kafka.prepare(self.workdir / "acl-kafka", sasl_users=PASSWORDS)
        pid = procs.spawn(command, log)
        self.cleanups.append(lambda: procs.stop(pid))
        wait_for(lambda: acl_broker_ready(ports.bootstrap), ACL_BROKER_START_SECONDS, "ACL broker")
        self.acl_bootstrap = ports.bootstrap
        admin_login = self.files / "admin.properties"
        admin_login.write_text(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n"
            "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required"
            f' username="{kafka.SASL_ADMIN}" password="{PASSWORDS[kafka.SASL_ADMIN]}";\n'
        )
        tools = self.files / "bin"
        tools.mkdir(exist_ok=True)
        script = tools / "kafka-acls.sh"  # Kafka's own script runs this class
        script.write_text(
            f"#!/bin/sh\nexec {paths.java()} -Xmx256m -XX:TieredStopAtLevel=1"
            f' -cp "{paths.kafka_classpath()}" kafka.admin.AclCommand "$@"\n'
        )
        script.chmod(0o755)
        self.shell.ok(f'export K={ports.bootstrap} A={admin_login} PATH="{tools}:$PATH"')

    def check_acls(self) -> None:
        """The broker holds exactly the ACLs of the README's table and of the tests."""
        never_mail = ResourcePattern(
            ResourceType.TOPIC, NEVER_MAIL_TOPIC, ACLResourcePatternType.LITERAL
        )
        platform = [
            ACL("User:platform", "*", op, ACLPermissionType.ALLOW, never_mail)
            for op in (ACLOperation.WRITE, ACLOperation.DESCRIBE)
        ]
        tenant = namespace_acl_list("User:mailpipe-mail", NAMESPACE)
        expected = acl_keys([*tenant, *operator_acls(), *platform])
        admin = acl_admin(self.acl_bootstrap)
        try:
            wait_for(
                lambda: acl_keys(admin.describe_acls(ALL_ACLS)[0]) == expected,
                ACLS_APPLIED_SECONDS,
                "the README's ACLs, and only those, in the authorizer",
            )
        finally:
            admin.close()

    def check_day2(self) -> None:
        env = self.env

        def relays_scaled() -> bool:
            dep = harness.get_object(env, "deployment", RELAY_DEPLOYMENT, NAMESPACE) or {}
            return bool(dep.get("spec", {}).get("replicas") == 3)

        wait_for(relays_scaled, ROLLOUT_SECONDS, "the relays scaled to 3")
        listed = next(out for line, out in self.printed.items() if "suppressions list" in line)
        assert isinstance(json.loads(listed), (list, dict)), listed
        wait_unpaused(env)

    def check_peering(self) -> None:
        """Two operator pods run and meet in the peering object the block shows."""

        def both_listed() -> bool:
            pods = [p for p in operator_pods(self.env) if harness.condition_true(p)]
            peering = harness.get_object(self.env, "clusterkopfpeerings.kopf.dev", "mailpipe", "")
            peers = set((peering or {}).get("status") or {})
            return len(pods) == 2 and peers == {p["metadata"]["name"] for p in pods}

        wait_for(both_listed, PEERING_SECONDS, "two operator pods Ready, both in the peering")

    def check_uninstalled(self) -> None:
        env = self.env
        assert harness.helm(env, "status", "mailpipe", "-n", OPERATOR_NAMESPACE).returncode != 0
        assert not (CHART_CRDS & crd_names(env)), crd_names(env)
        assert pool_topics(env["MAILPIPE_KAFKA_BOOTSTRAP"]) == []
        wait_for(
            lambda: (
                not harness.get_json(env, "pods", "-n", NAMESPACE)["items"]
                and not operator_pods(env)
            ),
            GONE_TIMEOUT_SECONDS,
            "no relay or operator pod left",
        )

    def objects_stuck_on_the_finalizer(self) -> None:
        """What the block is for: the operator is gone, its objects are being deleted."""
        harness.kubectl_ok(self.env, "apply", "-f", str(CRDS))
        harness.kubectl_ok(
            self.env, "wait", "--for=condition=Established", "crd", *sorted(CHART_CRDS)
        )
        for example in ("quickstart-pool.yaml", "newsletter-campaign.yaml"):
            for doc in yaml.safe_load_all((ROOT / "examples" / example).read_text()):
                if doc and doc["kind"] in ("SendingPool", "Campaign"):
                    doc["metadata"]["finalizers"] = [FINALIZER]
                    harness.apply(self.env, doc)
        harness.kubectl_ok(self.env, "delete", "sp,camp", "--all", "-n", NAMESPACE, "--wait=false")
        stuck = [pool(self.env), campaign(self.env)]
        assert all(o.get("metadata", {}).get("deletionTimestamp") for o in stuck), stuck

    def check_released(self) -> None:
        assert pool(self.env) == {} and campaign(self.env) == {}


def operator_metrics(env: dict[str, str], pod: dict[str, Any]) -> str:
    """The operator pod's /metrics, read inside the pod (the pod network is the node's)."""
    url = f"http://{pod['status']['podIP']}:{OPERATOR_METRICS_PORT}/metrics"
    script = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    return harness.kubectl_ok(
        env, "exec", "-n", OPERATOR_NAMESPACE, pod["metadata"]["name"], "--",
        "python3", "-c", script,
    )  # fmt: skip


@dataclass(frozen=True)
class Step:
    """A README block by the start of its first line, and what the test does around it."""

    first: str
    after: Callable[[Run], None]
    before: Callable[[Run], None] = lambda run: None


STEPS = [
    Step("kubectl create namespace mail", Run.check_quick_start),
    Step("kubectl apply -f examples/warmup-pool.yaml", Run.check_production_pool),
    Step(
        "kubectl annotate sp marketing",
        Run.check_unpaused,
        before=lambda run: pause_warming_ip(run.env),
    ),
    Step(
        "kubectl -n mail create secret generic",
        Run.check_login_secret,
        before=Run.in_files_dir,
    ),
    Step("ns=mail; p=User:mailpipe-$ns", Run.check_acls, before=Run.acl_broker),
    Step(
        "kubectl scale sp marketing",
        Run.check_day2,
        before=lambda run: pause_warming_ip(run.env),
    ),
    Step("helm upgrade --install mailpipe", Run.check_peering),
    Step("kubectl mailpipe uninstall", Run.check_uninstalled),
    Step(
        "kubectl patch sendingpool marketing",
        Run.check_released,
        before=Run.objects_stuck_on_the_finalizer,
    ),
]


def step_of(block: Block) -> Step | None:
    found = [s for s in STEPS if block.starts(s.first)]
    assert len(found) <= 1, block
    return found[0] if found else None


def test_every_block_is_run_here_or_named_elsewhere() -> None:
    """No block is skipped in silence: each is a step here, in README order, or is
    named in ELSEWHERE with the test that runs it; each entry names one block."""
    blocks = shell_blocks(README.read_text())
    here = [step_of(b) for b in blocks]
    elsewhere = [[k for k in ELSEWHERE if b.starts(k)] for b in blocks]
    unplaced = [b for b, s, e in zip(blocks, here, elsewhere, strict=True) if not s and not e]
    assert unplaced == [], unplaced
    assert [s for s in here if s] == STEPS  # each step once, in the README's order
    assert sorted(k for e in elsewhere for k in e) == sorted(ELSEWHERE)


def test_the_plugin_install_the_readme_names_exists() -> None:
    """Issue 18: the README said `pip install mailpipe`, which no index has. What it
    says now installs this checkout's distribution, which carries the plugin."""
    text = README.read_text()
    installs = re.findall(r"pip install (\S+?)`", text)
    assert installs == ["."], installs
    scripts = {e.name for e in metadata.distribution("mailpipe").entry_points}
    assert {"mailpipe", "kubectl-mailpipe"} <= scripts


def test_the_quick_start_pool_fits_one_node() -> None:
    """The quick start's pool must become Ready on a one-node cluster (kind,
    minikube): no hostNetwork (whose relays hold a node port each and need
    nodes labelled for their IPs) and egress address 0.0.0.0 (any address of
    the pod: nothing to prepare on a node). The pool it used before,
    examples/warmup-pool.yaml, stayed Pending there and `kubectl wait` timed out."""
    pools = [
        line.split()[3]
        for line in quick_start_block().lines
        if line.startswith("kubectl apply -f ") and "pool" in line.split()[3]
    ]
    assert pools == ["examples/quickstart-pool.yaml"], pools
    [doc] = [d for d in yaml.safe_load_all((ROOT / pools[0]).read_text()) if d]
    spec = SendingPoolSpec.model_validate(
        doc["spec"], context=PoolDefaults(kafka_bootstrap_servers="kafka:9092").context()
    )
    assert not spec.host_network
    assert [ip.address for ip in spec.egress_ips] == ["0.0.0.0"]
    assert not any(ip.warmup for ip in spec.egress_ips)


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))  # examples/demo/ are the demo's templates


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_reads_as_the_operator_and_the_plugin_read_it(example: Path) -> None:
    """Each pool parses as the plugin parses it (`SendingPoolSpec`, the model the
    CRD schema is generated from, then its topics), each campaign as the operator
    does. The API server's own check of each file (CRD schema and the chart's
    admission policy) is the node test's `kubectl apply --dry-run=server`."""
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert kinds & {"SendingPool", "Campaign"}, kinds
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] == "SendingPool":
            context = PoolDefaults(kafka_bootstrap_servers="kafka:9092").context()
            spec = SendingPoolSpec.model_validate(doc["spec"], context=context)
            ref = PoolRef(meta["name"], meta["namespace"], "uid")
            assert topics(ref, spec).outbound.startswith(f"mailpipe.{meta['namespace']}.")
        elif doc["kind"] == "Campaign":
            CampaignSpec.model_validate(doc["spec"])


def quick_start_block() -> Block:
    return next(b for b in shell_blocks(README.read_text()) if b.starts(STEPS[0].first))


# -- the run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The README is a new user's first hour: a cluster of its own, not the
    session's, where earlier tests leave pools and campaigns in other namespaces.
    Its cluster-wide operator would take those over, and its `kubectl mailpipe
    uninstall --all-namespaces` deletes them and waits on their finalizers (pools
    of brokers long gone). The conftest's `node` brings this stack's node up."""
    stack = Stack(tmp_path_factory.mktemp("readme-stack"))
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def stack_state(devstack: Stack) -> StackState:
    state = devstack.state
    assert state is not None
    return state


@pytest.fixture
def world(
    devstack: Stack,
    stack_state: StackState,
    node: Node,
    smtp_receiver: Callable[..., SMTPReceiver],
) -> World:
    """The recording MX and the stack's dnsmasq, reached from the node at the host
    end of its link; MX records for the test's domains; Kafka for pods."""
    rx = smtp_receiver("127.0.0.1")
    mx_host = node.expose(rx.port).partition(":")[0]
    dns_port = stack_state.dns_port
    resolver = f"{node.expose(dns_port, 'udp').rpartition(':')[0]}:{dns_port}"
    node.expose(dns_port, "tcp")  # a truncated answer is asked again over TCP
    devstack.set_dns(
        [Zone(d, mx=((f"mx.{d}", 10),), a={f"mx.{d}": mx_host}) for d in DELIVERY_DOMAINS]
    )
    return World(rx, resolver, node.expose_kafka(stack_state))


@pytest.fixture
def reader(stack_state: StackState, world: World, tmp_path: Path) -> Iterator[Shell]:
    """The reader's terminal: a bash in the checkout that ran `eval "$(mailpipe dev env)"`,
    with the Kafka addresses the README names for the stack's node."""
    home = tmp_path / "home"
    home.mkdir()
    shell = Shell(bare_env(home), ROOT)
    try:
        shell.ok(f'eval "$({MAILPIPE} dev env --state-dir {stack_state.state_dir})"')
        shell.ok(
            f"export KAFKA_BOOTSTRAP={world.kafka_for_pods}"
            f" MAILPIPE_KAFKA_BOOTSTRAP={stack_state.kafka_bootstrap}"
        )
        yield shell
    finally:
        shell.close()


@pytest.fixture
def reader_env(reader: Shell, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = reader.env(tmp_path)
    try:
        yield env
    finally:
        # A run that failed half-way: its objects go without the operator's cleanup
        # (the stack and its node go after the module).
        harness.kubectl(env, "delete", "sp,camp", "--all", "-n", NAMESPACE, "--wait=false")
        for kind in ("sp", "camp"):
            for name in (POOL, CAMPAIGN, DELIVERY_CAMPAIGN):
                harness.kubectl(
                    env, "patch", kind, name, "-n", NAMESPACE, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}',
                )  # fmt: skip
        harness.helm(env, "uninstall", "mailpipe", "-n", OPERATOR_NAMESPACE, "--no-hooks")


def files_the_reader_brings(workdir: Path, state: StackState) -> Path:
    """The Kafka login block's `./mail.pw` and `./ca.pem`, in a directory of their own
    (the CA: the stack's own, a real PEM certificate)."""
    files = workdir / "reader-files"
    files.mkdir(exist_ok=True)
    (files / "mail.pw").write_text("a-long-random-password\n")
    ca = Path(state.state_dir) / "kube" / "pki" / "ca.crt"
    (files / "ca.pem").write_text(ca.read_text())
    return files


# The whole README on the node: the operator and relay pods start, two rollouts,
# the uninstall's finalizers. A bound, not a timing claim: each line and wait has its own.
README_TEST_TIMEOUT_SECONDS = 1800


@pytest.mark.cluster
@pytest.mark.timeout(README_TEST_TIMEOUT_SECONDS)
def test_the_readme_runs_top_to_bottom_on_a_node(
    reader: Shell,
    reader_env: dict[str, str],
    world: World,
    imported: list[str],
    image: Image,
    stack_state: StackState,
    tmp_path: Path,
) -> None:
    assert DEFAULT_IMAGE in imported, (DEFAULT_IMAGE, imported)  # the chart's default names it
    files = files_the_reader_brings(tmp_path, stack_state)
    run = Run(reader, reader_env, world, tmp_path, files, imported)
    blocks = [b for b in shell_blocks(README.read_text()) if not any(map(b.starts, ELSEWHERE))]
    times = StepTimes()
    try:
        for number, block in enumerate(blocks, 1):
            step = step_of(block)
            assert step is not None, block  # test_every_block_is_run_here_or_named_elsewhere
            timed = f"block {number}, {block.section}"  # two blocks may share a heading
            with times.timing(timed, "(test: before the block)"):
                step.before(run)
            for line in block.lines:
                with times.timing(timed, line):
                    status, printed = reader.run(run.typed(line))
                run.printed[line] = printed
                assert status == 0, f"README line failed ({block.section}): {line}\n{printed}"
                run.after_line(line)
            with times.timing(timed, "(test: checks after the block)"):
                step.after(run)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pod_logs(reader_env)}") from None
    finally:
        for cleanup in run.cleanups:
            cleanup()
        times.write(tmp_path / "readme-steps.json")
        print(f"\nREADME steps ({tmp_path / 'readme-steps.json'}):\n{times.table()}")


def acl_keys(acls: list[ACL]) -> set[tuple[object, ...]]:
    return {
        (
            a.principal,
            a.host,
            a.operation,
            a.permission_type,
            a.resource_pattern.resource_type,
            a.resource_pattern.resource_name,
            a.resource_pattern.pattern_type,
        )
        for a in acls
    }


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series `name{labels}` in a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None
