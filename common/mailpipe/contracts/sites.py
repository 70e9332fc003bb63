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
3. a domain whose MX hosts are known (the relay's resolver) is the site of
   its MX hosts (`mx_site`): the **provider domain** of each MX host name
   (its last two labels, three under a country code whose second level is a
   registry's: `co.uk`, `com.au`), sorted, joined by `+`. So every domain
   served by `*.google.com` (gmail.com's `gmail-smtp-in.l.google.com`, a
   Workspace domain's `aspmx.l.google.com`) is the site `google.com`, every
   Microsoft 365 tenant (`*.mail.protection.outlook.com`) `outlook.com`;
4. otherwise (a static route, an MX lookup that failed) the domain itself.

A site's limits are `throttles[site]`, else the default: a pool limits all
of Google with `throttles: {google.com: ...}`.

Pure and shared: the operator keys fan-out records with it, the relay keys
what it postpones with it and forwards a record read under another key
(`relay.routing`), so both planes name a site the same way.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping, Sequence

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


def written_site(
    domain: str, groups: Mapping[str, Sequence[str]], overrides: Collection[str]
) -> str | None:
    """The site of `domain` by rules 1-2 (what the config says), else None;
    `overrides` are the names with a throttle override (domains and groups)."""
    domain = domain.lower()
    if domain in overrides:
        return domain
    return group_of(domain, groups)


def site_of(domain: str, groups: Mapping[str, Sequence[str]], overrides: Collection[str]) -> str:
    """The site of `domain` as far as the config knows it (rules 1, 2 and 4):
    what a producer without MX answers keys by (the relay forwards a record
    whose MX hosts name another site)."""
    return written_site(domain, groups, overrides) or domain.lower()


# Second-level labels that registries use under a country code (`example.co.uk`):
# there the provider is the last three labels. A short list rather than the
# Public Suffix List: MX hosts of the large providers end in a gTLD, and a
# wrong guess only makes a site wider or narrower, never loses mail.
_REGISTRY_SECOND_LEVELS = frozenset({"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or"})


def provider_domain(host: str) -> str | None:
    """The provider part of an MX host name (rule 3 above); None for an address."""
    labels = [label for label in host.lower().rstrip(".").split(".") if label]
    if len(labels) < 2 or all(label.isdigit() for label in labels) or ":" in host:
        return None
    keep = 3 if len(labels[-1]) == 2 and labels[-2] in _REGISTRY_SECOND_LEVELS else 2
    return ".".join(labels[-keep:])


def mx_site(hosts: Iterable[str]) -> str | None:
    """The site of a domain whose MX hosts are `hosts`; None if none has a name."""
    providers = sorted({p for h in hosts if (p := provider_domain(h)) is not None})
    return "+".join(providers) or None


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
