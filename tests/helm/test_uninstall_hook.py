"""The chart's pre-delete hook: `helm uninstall` deletes the CRs while the operator still runs.

The Job runs on the stack's node, where plain `helm uninstall` deletes a CR the
operator holds and leaves no object of the release
(`tests/cluster/test_chart_on_node.py::test_the_operator_runs_as_a_pod_from_the_chart_and_uninstall_leaves_nothing`);
what it runs (`kubectl-mailpipe uninstall`) is run against the real apiserver
and Kafka by `tests/operator/integration/test_day2.py::test_uninstall_leaves_nothing_stranded`.
These tests pin the rest, rendered: the hook's kind and order, its least
privilege, and that the command it names exists in the image and parses.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from mailpipe.cli.kubectl import build_parser, commands

from .test_chart import LOGINS, render

ROOT = Path(__file__).resolve().parents[2]


def _hooks(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"]["name"].endswith("-uninstall")]


def _annotation(doc: dict[str, Any], key: str) -> str:
    value: str = doc["metadata"].get("annotations", {}).get(key, "")
    return value


def test_uninstall_deletes_every_cr_first_from_a_pre_delete_hook() -> None:
    docs = _hooks(render())
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
    }
    assert all(_annotation(d, "helm.sh/hook") == "pre-delete" for d in docs)
    weights = {d["kind"]: int(_annotation(d, "helm.sh/hook-weight")) for d in docs}
    assert weights["Job"] > max(w for k, w in weights.items() if k != "Job"), "RBAC first"

    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role["rules"] == [
        {
            "apiGroups": ["mailpipe.io"],
            "resources": ["sendingpools", "campaigns"],
            "verbs": ["get", "list", "watch", "delete"],
        },
        # the operator's Events on them: a pool whose topics it kept is reported
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    ]
    job = next(d for d in docs if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-mailpipe-uninstall"
    [container] = pod["containers"]
    assert container["image"] == "mailpipe.local/mailpipe:0.1.0"  # the operator's image
    assert container["command"] == ["kubectl-mailpipe"]
    assert container["args"] == ["uninstall", "--all-namespaces", "--timeout=240"]
    assert job["spec"]["activeDeadlineSeconds"] > 240, "the plugin reports before the deadline"
    # The command is the image's console script and parses as the uninstall.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-mailpipe"] == "mailpipe.cli.kubectl:main"
    args = build_parser().parse_args(container["args"])
    assert args._run is commands.uninstall and args.all_namespaces and args.timeout == 240


def test_watched_namespaces_get_roles_and_a_container_each() -> None:
    docs = _hooks(render("operator.watchNamespaces={mail,news}", LOGINS))
    assert {(d["kind"], d["metadata"].get("namespace")) for d in docs if "Role" in d["kind"]} == {
        ("Role", "mail"),
        ("Role", "news"),
        ("RoleBinding", "mail"),
        ("RoleBinding", "news"),
    }
    job = next(d for d in docs if d["kind"] == "Job")
    args = [c["args"] for c in job["spec"]["template"]["spec"]["containers"]]
    assert args == [
        ["uninstall", "--namespace=mail", "--timeout=240"],
        ["uninstall", "--namespace=news", "--timeout=240"],
    ]


def test_the_hook_can_be_turned_off() -> None:
    assert _hooks(render("uninstallHook.enabled=false")) == []
