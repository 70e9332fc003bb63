"""What the dev stack lacks for the chart: a kubelet. Runs the chart's operator as a process.

`run_operator` reads the installed release's operator Deployment and runs that
container's command (`mailpipe` + its args and env) as a local process,
authenticated as the Deployment's ServiceAccount through a token kubeconfig,
as a pod would be. The only changes: free local ports for the health and
metrics endpoints, since every local process shares one network namespace.
Used by the README test (tests/e2e/test_readme.py) and the `helm test` test.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import yaml

from mailpipe.devstack import harness, kube
from mailpipe.devstack.procs import free_port

TOKEN_DURATION = "1h"  # longer than any test runs
PORT_ARGS = ("--liveness-port", "--metrics-port")
SCRAPE_TIMEOUT_SECONDS = 5


class Kubelet:
    def __init__(self, env: dict[str, str], admin_kubeconfig: Path, workdir: Path) -> None:
        self.env = env
        self.admin_kubeconfig = admin_kubeconfig
        self.workdir = workdir
        self.children = harness.Children(workdir)
        self.metrics_port = 0

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
        args = [
            f"{a.split('=', 1)[0]}={ports[a.split('=', 1)[0]]}"
            if a.split("=", 1)[0] in ports
            else a
            for a in container["args"]
        ]
        env = {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}
        return self.children.mailpipe(
            f"operator-{len(self.children.started)}",
            args,
            {**self.env, **env, "KUBECONFIG": str(kubeconfig)},
        )

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as rsp:
            text: str = rsp.read().decode()
        return text
