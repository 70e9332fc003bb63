"""What a relay that runs but is not Ready says about itself: its `/readyz` answer.

The kubelet keeps no readiness probe's answer (its Event says only "HTTP
probe failed with statuscode: 503"), but a relay's answer names its problem,
and one of them the pool must show: egress IPs the relay cannot bind
(`contracts.egress`). So while relay pods are missing, the operator asks the
not-Ready ones itself, as the kubelet does (pod IP, the `metrics` port), and
`relay_pods.diagnose` reads the answers. Bounded: a few pods per pool, a
short timeout each, and only while relays are missing; a relay the operator
cannot reach (a NetworkPolicy) just gives no answer, and the pool's reason
stays the generic one.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from .relay_pods import readiness_to_ask

log = logging.getLogger("mailpipe.operator")

MAX_PODS_ASKED = 3  # per pool and reconcile: one answer names the problem
TIMEOUT_SECONDS = 2.0  # a relay answers its probe in milliseconds; the kubelet's own is 1 s
MAX_ANSWER_BYTES = 4096  # the relay's reasons fit; nothing more is read


def ask(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Pod name -> its `/readyz` answer, for the not-Ready relays that answered.
    Blocking: called from the reconcile's thread."""
    answers: dict[str, str] = {}
    for name, url in readiness_to_ask(pods, MAX_PODS_ASKED):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as resp:
                body = resp.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as exc:  # 503: not ready, and why
            body = exc.read(MAX_ANSWER_BYTES)
        except (OSError, ValueError) as exc:
            log.debug("relay pod %s did not answer %s: %s", name, url, exc)
            continue
        answers[name] = body.decode("utf-8", "replace")
    return answers
