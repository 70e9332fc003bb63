"""A Campaign waiting for its pool says why, in the pool's words, and is checked meanwhile.

The pool here is not Ready because its relays are not available (the dev
stack runs no kubelet; the test reports none). While it waits, the campaign's
audience and templates are checked: a template that cannot render fails it at
once, and a long check says how far it got. A campaign already sending whose
pool loses its relays says so too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import (
    Child,
    OperatorProcess,
    get,
    kubectl,
    pool_manifest,
    relays_up,
    wait_for,
)

pytestmark = pytest.mark.operator

STATUS_SECONDS = 60  # the pool's first reconcile and the campaign's check, on a loaded machine


def _campaign(name: str, namespace: str, recipients: int, **spec: Any) -> str:
    audience = [{"address": f"u{i}@x.test"} for i in range(recipients)]
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "poolRef": "news",
            "from": {"address": "news@sender.test"},
            "subject": "Hello",
            "text": "Hi",
            "audience": {"inline": audience},
            **spec,
        },
    }
    return json.dumps(body)


def _status(env: dict[str, str], name: str, namespace: str) -> dict[str, Any]:
    return dict((get(env, "camp", name, namespace) or {}).get("status") or {})


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})


@pytest.fixture
def unready_pool(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> OperatorProcess:
    """An operator, and the pool "news" reconciled with no relay available."""
    op = operator_factory()
    manifest = pool_manifest("news", namespace, kafka_bootstrap, topic_prefix)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    relays_up(cli_env, namespace, op, available=0)
    return op


def test_a_waiting_campaign_says_why_in_the_pools_words(
    unready_pool: OperatorProcess, cli_env: dict[str, str], namespace: str
) -> None:
    campaign = _campaign("spring", namespace, 2)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=campaign).returncode == 0
    wanted = (
        "waiting for the pool: pool news is not Ready: RelaysUnavailable: "
        "0/1 relays available (audience checked: 2 recipients)"
    )
    wait_for(
        lambda: _ready(_status(cli_env, "spring", namespace)).get("message") == wanted,
        STATUS_SECONDS,
        f"Ready=False saying {wanted!r}; last: {_ready(_status(cli_env, 'spring', namespace))}",
        unready_pool,
    )
    assert _status(cli_env, "spring", namespace)["phase"] == "Pending"


def test_a_template_that_cannot_render_fails_while_the_pool_is_not_ready(
    unready_pool: OperatorProcess, cli_env: dict[str, str], namespace: str
) -> None:
    campaign = _campaign("broken", namespace, 2, text="{{ 1/0 }}")
    assert kubectl(cli_env, "apply", "-f", "-", stdin=campaign).returncode == 0
    wait_for(
        lambda: _status(cli_env, "broken", namespace).get("phase") == "Failed",
        STATUS_SECONDS,
        f"Failed before any relay runs; last: {_status(cli_env, 'broken', namespace)}",
        unready_pool,
    )
    failed = _ready(_status(cli_env, "broken", namespace))
    assert failed["reason"] == "TemplateError", failed
    assert "ZeroDivisionError" in failed["message"], failed


# About 20 ms of CPU a row (a loop with no output is compiled away): a check of
# a few seconds, enough to be seen moving.
SLOW = (
    "{% set ns = namespace(n=0) %}{% for i in range(8000) %}{% set ns.n = ns.n + i %}{% endfor %}"
    "Hi {{ address }}"
)
SLOW_ROWS = 300


def test_a_long_check_says_how_far_it_got(
    unready_pool: OperatorProcess, cli_env: dict[str, str], namespace: str
) -> None:
    campaign = _campaign("slow", namespace, SLOW_ROWS, text=SLOW)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=campaign).returncode == 0
    progress = re.compile(
        rf"checking the audience and templates: (\d+) of {SLOW_ROWS} rows rendered"
    )
    seen: set[int] = set()

    def checked() -> bool:
        status = _status(cli_env, "slow", namespace)
        fanout = status.get("fanout") or {}
        found = progress.fullmatch(fanout.get("message", ""))
        if found:
            seen.add(int(found[1]))
            assert fanout["state"] == "checkingAudience", fanout
            assert status.get("phase") in (None, "Pending"), status  # not yet sending
        return "audience checked: 300 recipients" in _ready(status).get("message", "")

    wait_for(checked, STATUS_SECONDS * 3, "the check to finish", unready_pool)
    assert seen and min(seen) < SLOW_ROWS, seen  # shown while it ran, not only at the end


def test_a_sending_campaign_whose_pool_loses_its_relays_says_so_in_the_pools_words(
    ready_operator: Child, cli_env: dict[str, str], namespace: str
) -> None:
    """Fanned out, its records on Kafka, the campaign is Sending; then its pool
    has no relay available (on a cluster: a cluster policy that refuses the pool
    scales its relays to 0, tests/cluster/test_scaling_on_node.py). "waiting for
    dispositions" alone would hide that nothing can be sent: the campaign adds
    the pool's words while they last, and drops them when the relays are back."""
    op = ready_operator
    campaign = _campaign("summer", namespace, 2)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=campaign).returncode == 0

    def says(message: str) -> Callable[[], bool]:
        def check() -> bool:
            status = _status(cli_env, "summer", namespace)
            return status.get("phase") == "Sending" and _ready(status).get("message") == message

        return check

    sending = "waiting for dispositions"
    wait_for(says(sending), STATUS_SECONDS, f"Sending, {sending!r}", op)
    relays_up(cli_env, namespace, op, available=0)
    stopped = f"{sending}; pool news is not Ready: RelaysUnavailable: 0/1 relays available"
    wait_for(
        says(stopped),
        STATUS_SECONDS,
        f"Sending, {stopped!r}; last: {_ready(_status(cli_env, 'summer', namespace))}",
        op,
    )
    relays_up(cli_env, namespace, op)
    wait_for(says(sending), STATUS_SECONDS, f"Sending, {sending!r} again", op)
