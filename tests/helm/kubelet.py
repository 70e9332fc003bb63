"""What the dev stack lacks for the chart: a kubelet. Runs the chart's operator as a process.

`run_operator` reads the installed release's operator Deployment and runs that
container's command (`mailpipe` + its args and env) as a local process,
authenticated as the Deployment's ServiceAccount through a token kubeconfig,
as a pod would be. The only changes: free local ports on loopback for the
health and metrics endpoints, since every local process shares one network
namespace, and ConfigMap and Secret volumes (the cluster policy, the config
signing key) written to local directories, with
the arguments that name their mount paths pointed there. They are written as
the kubelet writes them (`write_configmap_volume`: each key a symlink through
`..data`, swapped atomically on an update), so a test can change a mounted
ConfigMap under a running process the way a cluster does. Downward-API env
(`fieldRef` metadata.name/namespace) gets a pod name of its own per process,
`<deployment>-<n>`, as a ReplicaSet would give each pod.

`report_relays` plays the kubelet and the Deployment controller for the relay
Deployments the operator writes: in a thread, it reports each one available
(`harness.report_deployment`) whenever its status lags its spec, as those
controllers would once the relay pods ran. The relays themselves do not run:
the examples' egress IPs (192.0.2.0/24) are not this machine's.
Used only by the README test (tests/e2e/test_readme.py): the chart, uninstall,
peering and RBAC tests run on the stack's real node (tests/cluster). The README
test stays here until its quick start can become Ready on one node
(examples/warmup-pool.yaml: hostNetwork, two replicas, egress IPs 192.0.2.20-21).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from mailpipe.devstack import harness, kube
from mailpipe.devstack.procs import free_port
from tests.conftest import SHARED_STACK_DIR
from tests.operator.configmap_volume import write_configmap_volume

TOKEN_DURATION = "1h"  # longer than any test runs
PORT_ARGS = ("--liveness-port", "--metrics-port")
LISTEN_ARG = "--listen-address"
LOOPBACK = "127.0.0.1"
SCRAPE_TIMEOUT_SECONDS = 5
RELAY_SELECTOR = "app.kubernetes.io/component=relay,app.kubernetes.io/managed-by=mailpipe-operator"
CONTROLLER_PERIOD_SECONDS = 1.0  # how often the stand-in controller looks at the Deployments


class Kubelet:
    def __init__(self, env: dict[str, str], admin_kubeconfig: Path, workdir: Path) -> None:
        self.env = env
        self.admin_kubeconfig = admin_kubeconfig
        self.workdir = workdir
        self.children = harness.Children(workdir)
        self.metrics_port = 0
        self._stop = threading.Event()
        self._controller: threading.Thread | None = None
        # The namespaces the chart's operator watches (its --namespace args;
        # none: all). Relay Deployments exist only there, and the stand-in
        # controller looks only there: other tests' pools, in their own
        # namespaces on the same stack, are not this release's to report.
        self.watched: list[str] = []

    def token_kubeconfig(self, service_account: str, namespace: str) -> Path:
        """A kubeconfig that authenticates as `namespace/service_account`."""
        token = harness.kubectl_ok(
            self.env,
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            f"--duration={TOKEN_DURATION}",
        ).strip()
        path = self.workdir / f"{namespace}-{service_account}.kubeconfig"
        kube.write_token_kubeconfig(path, self.admin_kubeconfig, service_account, token)
        return path

    def run_operator(self, release: str, namespace: str) -> harness.Child:
        manifest = harness.helm_ok(self.env, "get", "manifest", release, "-n", namespace)
        docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(manifest) if d]
        dep = next(d for d in docs if d["kind"] == "Deployment")
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        kubeconfig = self.token_kubeconfig(pod["serviceAccountName"], namespace)
        ports = {name: free_port() for name in PORT_ARGS}
        self.metrics_port = ports["--metrics-port"]
        # The pod's own addresses are, for a local process, the machine's: loopback.
        local = {**{name: str(port) for name, port in ports.items()}, LISTEN_ARG: LOOPBACK}
        args = [
            f"{a.split('=', 1)[0]}={local[a.split('=', 1)[0]]}"
            if a.split("=", 1)[0] in local
            else a
            for a in container["args"]
        ]
        for mount_path, local in self.mount_volumes(docs, pod, container).items():
            args = [a.replace(mount_path, str(local)) for a in args]
        watched = [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")]
        # On the stack pytest-xdist's workers share, a cluster-wide operator
        # would take the other tests' pools over: such a test is `exclusive`.
        shared = SHARED_STACK_DIR in self.env.get("KUBECONFIG", "")
        assert watched or not shared, (
            "a cluster-wide operator on the stack parallel tests share: mark the test exclusive"
        )
        self.watched += watched
        name = f"operator-{len(self.children.started)}"
        pod_meta = {
            "metadata.name": f"{dep['metadata']['name']}-{len(self.children.started)}",
            "metadata.namespace": namespace,
        }
        env = {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}
        env |= {  # the downward API: the pod's own name (kopf's peer identity) and namespace
            v["name"]: pod_meta[v["valueFrom"]["fieldRef"]["fieldPath"]]
            for v in container.get("env", [])
            if "fieldRef" in v.get("valueFrom", {})
        }
        return self.children.mailpipe(
            name,
            args,
            {**self.env, **env, "KUBECONFIG": str(kubeconfig)},
        )

    def mount_volumes(
        self, docs: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, Path]:
        """Write each ConfigMap and Secret volume of the release where the container
        would see it (a Secret's data decoded, as the kubelet writes it)."""
        maps = {
            d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"
        }
        maps |= {
            d["metadata"]["name"]: {
                k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()
            }
            for d in docs
            if d["kind"] == "Secret"
        }
        volumes = {
            v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v
        }
        volumes |= {
            v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v
        }
        mounted: dict[str, Path] = {}
        for m in container.get("volumeMounts", []):
            if m["name"] in volumes and volumes[m["name"]] in maps:
                local = self.workdir / "volumes" / m["name"]
                write_configmap_volume(local, maps[volumes[m["name"]]])
                mounted[m["mountPath"]] = local
        return mounted

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as rsp:
            text: str = rsp.read().decode()
        return text

    def report_relays(self) -> None:
        """Start reporting the operator's relay Deployments available (see the docstring)."""

        def lagging() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            for where in [["-n", ns] for ns in self.watched] or [["-A"]]:
                got = harness.kubectl(
                    self.env, "get", "deployments", *where, "-l", RELAY_SELECTOR, "-o", "json"
                )
                items += json.loads(got.stdout)["items"] if got.returncode == 0 else []
            return [
                d
                for d in items
                if (d.get("status") or {}).get("observedGeneration") != d["metadata"]["generation"]
                or (d.get("status") or {}).get("availableReplicas", 0)
                != d["spec"].get("replicas", 1)
            ]

        def run() -> None:
            while not self._stop.wait(CONTROLLER_PERIOD_SECONDS):
                for dep in lagging():
                    meta = dep["metadata"]
                    # changed or deleted meanwhile: the next round sees it again
                    with contextlib.suppress(harness.CommandFailed):
                        harness.report_deployment(self.env, meta["namespace"], meta["name"])

        self._controller = threading.Thread(target=run, name="stand-in-controller", daemon=True)
        self._controller.start()

    def stop(self) -> None:
        """Stop the stand-in controller and every process started."""
        self._stop.set()
        if self._controller is not None:
            self._controller.join()
        self.children.stop_all()
