"""etcd + kube-apiserver, the way envtest runs them: a real API, no kubelet.

HTTPS with a generated CA, RBAC authorization, and a ServiceAccount signing
key so TokenRequest works (the demo runs the operator with its chart's
ServiceAccount token). Without kube-controller-manager there is no garbage
collection and no namespace finalization; tests that care delete explicitly.
"""

from __future__ import annotations

import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import certs, paths, procs

READYZ_TIMEOUT_SECONDS = 3  # one probe; the caller polls again
# Every SendingPool has a metrics Service: a /24 held 253, and the 1,000-pool
# benchmark failed with "failed to allocate a serviceIP".
SERVICE_CIDR = "10.0.0.0/16"
# The `kubernetes` Service's ClusterIP: the first address of the range. Pods
# reach the API server there (KUBERNETES_SERVICE_HOST), so the serving
# certificate names it.
KUBERNETES_SERVICE_IP = "10.0.0.1"
# Where pods on the stack's node reach Kafka: a Service the node creates
# (`Node.expose_kafka`). Kafka's metadata names the address a client must
# connect to next, so the broker's listener for pods advertises this address,
# fixed before the node (and its link's address) exists. In the range's low
# band, which the API server keeps for fixed ClusterIPs (never auto-assigned
# while the rest of the /16 is free).
KAFKA_SERVICE_IP = "10.0.0.9"
ETCD_HEALTH_TIMEOUT_SECONDS = 2


@dataclass(frozen=True)
class KubePorts:
    etcd_client: int
    etcd_peer: int
    apiserver: int

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver}"


def allocate_ports() -> KubePorts:
    return KubePorts(procs.free_port(), procs.free_port(), procs.free_port())


def etcd_command(ports: KubePorts, data_dir: Path) -> list[str]:
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    client = f"http://127.0.0.1:{ports.etcd_client}"
    return [
        str(paths.binary("etcd")),
        "--name=devstack",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=devstack={peer}",
        "--unsafe-no-fsync",  # throwaway data; fsync would dominate on a shared disk
        "--log-level=warn",
    ]


def apiserver_command(ports: KubePorts, pki: certs.PKI, cert_dir: Path) -> list[str]:
    return [
        str(paths.binary("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        # Node first: a kubelet (`system:node:<name>`) may touch only its own
        # node's objects, as on a real cluster; everyone else goes through RBAC.
        "--authorization-mode=Node,RBAC",
        # How `kubectl logs` and `exec` reach the stack's node: the kubelet
        # trusts the stack's CA, and the admin identity may do anything there.
        f"--kubelet-client-certificate={pki.admin_cert}",
        f"--kubelet-client-key={pki.admin_key}",
        # By address, never by node name: a name lookup would ask the host's
        # resolver, off this machine.
        "--kubelet-preferred-address-types=InternalIP",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The API server listens on 127.0.0.1, which a pod cannot reach; the
        # stack's node writes the `kubernetes` Service's endpoints itself (the
        # host end of its link), and nothing else may overwrite them.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--enable-priority-and-fairness=false",  # one client load; saves CPU and memory
        "--storage-media-type=application/json",
        "--v=1",
    ]


def write_kubeconfig(path: Path, server: str, pki: certs.PKI) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devstack",
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(pki.admin_cert),
                    "client-key": str(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": "devstack", "context": {"cluster": "devstack", "user": "admin"}}],
        "current-context": "devstack",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def write_token_kubeconfig(path: Path, admin: Path, user: str, token: str) -> None:
    """A kubeconfig for the admin kubeconfig's cluster that authenticates with `token`
    (a ServiceAccount's, from `kubectl create token`): what an in-cluster pod would be."""
    cluster = yaml.safe_load(admin.read_text())["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": user,
        "clusters": [{"name": "devstack", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "devstack", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config))


def is_ready(server: str, pki: certs.PKI) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    with urllib.request.urlopen(
        f"{server}/readyz", context=ctx, timeout=READYZ_TIMEOUT_SECONDS
    ) as resp:
        body: bytes = resp.read()
        return resp.status == 200 and body.strip() == b"ok"


def etcd_is_ready(ports: KubePorts) -> bool:
    url = f"http://127.0.0.1:{ports.etcd_client}/health"
    with urllib.request.urlopen(url, timeout=ETCD_HEALTH_TIMEOUT_SECONDS) as resp:
        return b'"health":"true"' in resp.read()


def is_ready_for(kubeconfig: Path) -> bool:
    """`is_ready` of the cluster a kubeconfig written by `write_kubeconfig` names
    (a restarted apiserver: its PKI paths are in the kubeconfig)."""
    data = yaml.safe_load(kubeconfig.read_text())
    cluster = data["clusters"][0]["cluster"]
    user = data["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    with urllib.request.urlopen(
        f"{cluster['server']}/readyz", context=ctx, timeout=READYZ_TIMEOUT_SECONDS
    ) as resp:
        body: bytes = resp.read()
        return resp.status == 200 and body.strip() == b"ok"
