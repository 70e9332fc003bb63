"""Sites: what a destination's limits are counted under, and what a record is keyed by.

Receivers throttle per receiving infrastructure, not per address domain
(KumoMTA's "site"). A record's **site** is the one name its connection
slots, message rate and back-offs are counted under, and the Kafka key of
every delivery record: one site hashes to one partition, the consumer
group gives a partition to one relay at a time, so one relay owns a site
and its limits hold pool-wide with in-memory counters (ARCHITECTURE.md,
"Limits hold pool-wide").

The naming rule, first match:

1. a domain with a throttle override of its own (`throttles[domain]`) is
   its own site: a limit written for one domain means that domain;
2. a domain matching a hand-written domain group is the group's site (the
   group's name: group names have no dot, so never a domain's);
3. otherwise the domain is its own site.

Pure and shared: the operator keys fan-out records with it, the relay keys
what it postpones with it and forwards a record read under another key
(`relay.routing`), so both planes name a site the same way.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence

# Kafka header of a record forwarded to its site's partition: how many times it
# was. Relays that disagree about a site (a config rollout half done) would
# otherwise pass a record back and forth; past MAX_SITE_HOPS it is delivered
# where it is (the limits may be over for the rollout's length, nothing is lost).
HOPS_HEADER = "mailpipe-site-hops"
MAX_SITE_HOPS = 3


def group_of(domain: str, groups: Mapping[str, Sequence[str]]) -> str | None:
    """The domain group a destination domain belongs to, if any (first match wins)."""
    domain = domain.lower()
    for group, patterns in groups.items():
        if any(fnmatch.fnmatchcase(domain, p.lower()) for p in patterns):
            return group
    return None


def site_of(domain: str, groups: Mapping[str, Sequence[str]], overrides: Collection[str]) -> str:
    """The site of `domain` under the naming rule above; `overrides` are the
    names with a throttle override (domains and groups)."""
    domain = domain.lower()
    if domain in overrides:
        return domain
    return group_of(domain, groups) or domain


def hops(headers: Sequence[tuple[str, bytes]]) -> int:
    """How many times a record was forwarded to its site (0: never, or a bad header)."""
    for name, value in headers:
        if name == HOPS_HEADER:
            try:
                return int(value)
            except ValueError:
                return MAX_SITE_HOPS  # not ours to trust: deliver where it is
    return 0


def hopped(headers: Sequence[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    """`headers` of a record forwarded once more: the hop count raised by one."""
    kept = tuple((n, v) for n, v in headers if n != HOPS_HEADER)
    return (*kept, (HOPS_HEADER, str(hops(headers) + 1).encode()))
