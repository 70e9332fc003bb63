"""The Campaign fan-out daemon: the audience to Kafka, one delivery record per recipient.

One daemon per Campaign (in a thread: producing is blocking IO). It waits
while the campaign is suspended or its pool is not Ready, then has the whole
audience checked in a process of its own (`render_check`: parsed, normalised,
de-duplicated, validated, every record rendered within limits) before the
first record is produced, so a bad row or template fails the campaign with
nothing sent (`status.audience` says what was de-duplicated and skipped).
Then it produces the prepared audience in chunks, each in one Kafka
transaction under the campaign's transactional id. Before each chunk
it writes a `FanoutCheckpoint` (next index + the outbound topic's end offsets)
into status; a restarted operator, or another replica, claims the fan-out in
the checkpoint, fences every earlier producer of the campaign at the broker,
resumes from the checkpoint and skips indices committed on the topic since, so
no recipient is produced twice (`kafka_io`, `fanout_lease`). The daemon exits
when the fan-out is done or failed; the status timer in `handlers.campaign`
takes over.

A Failed campaign whose spec is then edited (a new generation) gets a new
daemon (kopf's `when` filter, `progress.fanout_wanted`), which resumes from
the checkpoint: indices already produced are skipped, as after a restart.
A failure the audience ConfigMap can fix (a bad row, a missing ConfigMap or
key) records the ConfigMap's resourceVersion; once it changes, the status
timer re-arms the fan-out, so fixing the ConfigMap is enough. Resuming skips
by position, so it is refused (Failed, AudienceChanged) when the audience is
no longer the list the fan-out began with (`FanoutCheckpoint.audience_digest`).
Every checkpoint carries the generation it acted on (status.observedGeneration).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from mailpipe.contracts import sites
from mailpipe.contracts.wire import encode, suppression_key

from .. import campaign as camp
from .. import fanout_lease, kafka_io, kube_io, render_check
from ..audience import PreparedAudience
from ..kafka_io import KafkaError
from ..kube_io import ApiException
from ..models import GROUP, VERSION, CampaignSpec, Recipient
from ..progress import FanoutCheckpoint, FanoutState, audience_configmap, fanout_wanted
from .context import OperatorState, Pool, get_pool, operator_state, pool_readiness, pool_waiting
from .status import now_iso

log = logging.getLogger("mailpipe.operator")

# Records per checkpoint: ~50 status patches for 100k recipients; at most one
# chunk is scanned again after a restart. Tests set a smaller one via the env.
FANOUT_CHUNK = int(os.environ.get("MAILPIPE_FANOUT_CHUNK", "2000"))
POLL_SECONDS = 2.0  # how often a paused or waiting fan-out looks again
KAFKA_BACKOFF_SECONDS = 10 * POLL_SECONDS  # a failing broker is not hammered
# kopf waits this long for a stopping daemon before it abandons the thread;
# enough for one chunk to be acknowledged by Kafka.
CANCELLATION_TIMEOUT_SECONDS = 30
# The check proved every render finishes within campaign.RENDER_SECONDS; the
# same render here gets ten times that, so a busy node never fails a campaign
# half-way through its fan-out.
FANOUT_RENDER_SECONDS = 10 * camp.RENDER_SECONDS
# A checkpoint write conflicts with the status timer's (every 3 s) now and then;
# this many in a row means something else is wrong.
CONFLICT_RETRIES = 20
HTTP_CONFLICT = 409
HTTP_FORBIDDEN = 403
# An audience ConfigMap the operator may not read (its namespace not onboarded)
# is tried again at this pace: the RoleBinding that fixes it sends no event.
AUDIENCE_RETRY_SECONDS = 5.0
# The check's progress is written to status at most this often: `kubectl get`
# shows it moving, the API server is not written to for every row.
PROGRESS_WRITE_SECONDS = 2.0


def _write(kube: kube_io.Kube, namespace: str, name: str, checkpoint: FanoutCheckpoint) -> None:
    kube.patch_status("campaigns", namespace, name, {"fanout": checkpoint.patch()})


def _wanted(status: Any, meta: Any, **_: Any) -> bool:
    return fanout_wanted(status, meta.get("generation"))


@kopf.daemon(
    GROUP,
    VERSION,
    "campaigns",
    cancellation_timeout=CANCELLATION_TIMEOUT_SECONDS,
    when=_wanted,
)
def fanout(
    stopped: Any,
    name: str,
    namespace: str | None,
    uid: str,
    spec: Any,
    body: Any,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace is not None  # both kinds are namespaced
    state = operator_state(memo)
    campaign_key = f"{namespace}/{name}"
    waiting_for: str | None = None  # the holder this daemon last said it waits for
    checked: Checked | None = None  # the audience as last checked, for this generation
    while not stopped:
        obj = state.kube.get_custom("campaigns", namespace, name)
        if obj is None:
            return
        generation = obj["metadata"].get("generation")
        spec = obj.get("spec", {})  # the spec of this generation, read with it
        checkpoint = FanoutCheckpoint.from_status(obj.get("status", {}))
        if not fanout_wanted(obj.get("status", {}), generation):
            # Returning would mark the daemon finished for good; waiting lets
            # kopf stop it (its `when` filter no longer matches) and spawn a
            # new one if the spec of a Failed campaign is edited.
            stopped.wait(POLL_SECONDS)
            continue
        may, why = fanout_lease.may_produce(
            checkpoint.holder, checkpoint.held_at, state.process, time.time()
        )
        if not may:
            if checkpoint.holder != waiting_for:  # one Event per holder waited for
                log.warning("fan-out of %s not resumed: %s", campaign_key, why)
                kopf.info(body, reason="FanoutHeldElsewhere", message=why)
                waiting_for = checkpoint.holder
            stopped.wait(POLL_SECONDS)
            continue
        if checkpoint.state is FanoutState.FAILED:
            kopf.info(
                body,
                reason="FanoutResumed",
                message=f"spec edited (generation {generation}): resuming at index "
                f"{checkpoint.next_index}",
            )
            checkpoint = checkpoint.model_copy(update={"state": FanoutState.RUNNING})
        if obj.get("status", {}).get("refusedEdit"):
            # An edit refused after fan-out started (handlers.campaign.accept_spec):
            # a restarted fan-out would read the edited spec, so it holds until reverted.
            stopped.wait(POLL_SECONDS)
            continue
        if spec.get("suspend"):
            if checkpoint.state is not FanoutState.PAUSED:
                paused = FanoutCheckpoint(state=FanoutState.PAUSED, generation=generation)
                _write(state.kube, namespace, name, paused)
            stopped.wait(POLL_SECONDS)
            continue
        pool_name = str(spec.get("poolRef", ""))
        pool = get_pool(state.kube, namespace, pool_name)
        ready = pool_readiness(pool)[0]
        try:
            if checked is None or checked.generation != generation:
                # Checked while the pool is not Ready yet: a template that cannot
                # render fails the campaign now, not once relays are up.
                checked = _check(
                    state.kube, stopped, campaign_key, uid, dict(spec), checkpoint, generation
                )
            if not ready:
                said = f"waiting for the pool: {pool_waiting(pool_name, pool)}"
                if checked is not None and checked.prepared is not None:
                    said += f" (audience checked: {len(checked.prepared.recipients)} recipients)"
                if (checkpoint.state, checkpoint.message) != (FanoutState.WAITING_FOR_POOL, said):
                    waiting = FanoutCheckpoint(
                        state=FanoutState.WAITING_FOR_POOL, message=said, generation=generation
                    )
                    _write(state.kube, namespace, name, waiting)
                stopped.wait(POLL_SECONDS)
                continue
            assert pool is not None
            if not _run_fanout(
                stopped,
                state,
                campaign_key,
                uid,
                dict(spec),
                pool,
                checkpoint,
                body,
                generation,
                checked,
            ):
                # Another process holds it now: watched, so this one resumes it
                # should that one go too (the lease above says when).
                waiting_for = None
                continue
        except camp.CampaignError as exc:
            checked = None  # a fixed ConfigMap or spec is checked again
            failed = FanoutCheckpoint(
                state=FanoutState.FAILED,
                message=str(exc),
                reason=exc.reason.value,
                generation=generation,
                audience_version=_audience_version(state.kube, namespace, spec, exc.reason),
                holder=None,  # a failed fan-out is nobody's: any replica may resume it
            )
            _write(state.kube, namespace, name, failed)
            kopf.warn(body, reason="FanoutFailed", message=f"{exc.reason.value}: {exc}")
            continue  # not `return`: an edited spec must be able to resume it
        except AudienceUnreadable as exc:
            checked = None
            if (checkpoint.state, checkpoint.message) != (FanoutState.CHECKING, str(exc)):
                _write(
                    state.kube,
                    namespace,
                    name,
                    FanoutCheckpoint(
                        state=FanoutState.CHECKING, message=str(exc), generation=generation
                    ),
                )
                kopf.warn(body, reason="AudienceUnreadable", message=str(exc))
            stopped.wait(AUDIENCE_RETRY_SECONDS)
            continue
        except KafkaError as exc:
            log.warning("fan-out of %s paused by Kafka error: %s", campaign_key, exc)
            stopped.wait(KAFKA_BACKOFF_SECONDS)
            continue
        return


class AudienceUnreadable(Exception):
    """The operator may not read the audience ConfigMap (RBAC); retried, not a failure:
    onboarding the namespace is the fix, and nothing about the campaign is wrong."""


@dataclass(frozen=True)
class Checked:
    """An audience this daemon checked (`render_check`), and what it was checked from:
    reused by the fan-out when neither the spec nor the ConfigMap changed since."""

    generation: int | None
    audience_version: str | None  # the ConfigMap's resourceVersion; None: inline
    prepared: PreparedAudience | None  # None: stopped while checking


def _read_audience(
    kube: kube_io.Kube, namespace: str, spec: CampaignSpec
) -> tuple[dict[str, str] | None, str | None]:
    """The audience ConfigMap's data and resourceVersion (None, None: inline);
    raises AudienceUnreadable when RBAC refuses the read."""
    ref = spec.audience.config_map_ref
    if ref is None:
        return None, None
    try:
        return kube.read_configmap_versioned(namespace, ref.name)
    except ApiException as exc:
        if exc.status != HTTP_FORBIDDEN:
            raise
        raise AudienceUnreadable(
            f"cannot read the audience ConfigMap {ref.name}: the operator may not read "
            f"ConfigMaps in namespace {namespace} (403 Forbidden); onboard the namespace "
            "(chart value rbac.tenantNamespaces), the campaign then goes on by itself"
        ) from None


def _parse(spec_raw: dict[str, Any]) -> CampaignSpec:
    try:
        return CampaignSpec.model_validate(spec_raw)
    except ValidationError as exc:
        raise camp.CampaignError(str(exc), camp.FailReason.INVALID_SPEC) from exc


def _check(
    kube: kube_io.Kube,
    stopped: Any,
    key: str,
    uid: str,
    spec_raw: dict[str, Any],
    checkpoint: FanoutCheckpoint,
    generation: int | None,
    data: tuple[dict[str, str] | None, str | None] | None = None,
) -> Checked:
    """Check the whole audience and every template (`render_check`), saying how
    far it got in status.fanout while it runs; raises CampaignError.

    A fan-out that already began is not shown as checking (its status stays
    `running`): its audience is checked again only to compare it."""
    namespace, name = key.split("/", 1)
    spec = _parse(spec_raw)
    cm_data, version = data if data is not None else _read_audience(kube, namespace, spec)
    begun = checkpoint.next_index > 0 or checkpoint.offsets is not None
    written = 0.0

    def say(done: int, rows: int) -> None:
        nonlocal written
        now = time.monotonic()
        if begun or (done < rows and now - written < PROGRESS_WRITE_SECONDS):
            return
        written = now
        message = f"checking the audience and templates: {done} of {rows} rows rendered"
        _write(
            kube,
            namespace,
            name,
            FanoutCheckpoint(state=FanoutState.CHECKING, message=message, generation=generation),
        )

    prepared = render_check.check_audience(
        spec_raw, cm_data, key, uid, time.time(), stopped, on_progress=say
    )
    return Checked(generation, version, prepared)


def _write_held(
    state: OperatorState,
    key: str,
    obj: dict[str, Any],
    checkpoint: FanoutCheckpoint,
    claim_from: str | None = "",
) -> bool:
    """Write `checkpoint` if this operator (`state.process`) holds the fan-out; False when
    it does not (another operator process resumed it: this one must stop producing).

    The first write of a run claims the fan-out from `claim_from`, the holder
    the daemon found replaceable (None: nobody held it); later writes need the
    holder to be this process still. Conditional on the resourceVersion just
    read, so a holder written by another process in between is never
    overwritten; a conflict with any other status write (the status timer's
    counts) is read again."""
    namespace, name = key.split("/", 1)
    me = state.process.encode()
    allowed = {me} if claim_from == "" else {me, claim_from}
    for _ in range(CONFLICT_RETRIES):
        holder = FanoutCheckpoint.from_status(obj.get("status", {})).holder
        if holder not in allowed:
            log.warning(
                "fan-out of %s taken over by %s: this process stops producing it", key, holder
            )
            return False
        version = obj["metadata"]["resourceVersion"]
        try:
            state.kube.patch_status(
                "campaigns", namespace, name, {"fanout": checkpoint.patch()}, version
            )
            return True
        except ApiException as exc:
            if exc.status != HTTP_CONFLICT:
                raise
        again = state.kube.get_custom("campaigns", namespace, name)
        if again is None:
            return False
        obj = again
    raise kopf.TemporaryError(f"fan-out checkpoint of {key}: {CONFLICT_RETRIES} write conflicts")


def _audience_version(
    kube: kube_io.Kube, namespace: str, spec: Any, reason: camp.FailReason
) -> str | None:
    """The audience ConfigMap's version when the failure can be fixed there (see
    `progress.audience_fix_pending`), else None."""
    configmap = audience_configmap(spec)
    if not reason.fixed_in_audience or configmap is None:
        return None
    return kube.configmap_version(namespace, configmap)


def _prepare(
    stopped: Any,
    state: OperatorState,
    key: str,
    uid: str,
    spec_raw: dict[str, Any],
    checkpoint: FanoutCheckpoint,
    generation: int | None,
    checked: Checked | None,
) -> tuple[CampaignSpec, PreparedAudience] | None:
    """The campaign's spec and its audience, checked whole (every record rendered)
    and summarised in status; None when stopped meanwhile. `CampaignError` when
    the spec is invalid, the audience bad, or changed since the fan-out began.

    `checked`: the audience as checked while the pool was not Ready, used when
    neither the spec nor the audience ConfigMap changed since."""
    namespace, name = key.split("/", 1)
    spec = _parse(spec_raw)
    cm_data, version = _read_audience(state.kube, namespace, spec)
    same = checked is not None and (checked.generation, checked.audience_version) == (
        generation,
        version,
    )
    if not same or checked is None:
        checked = _check(
            state.kube, stopped, key, uid, spec_raw, checkpoint, generation, data=(cm_data, version)
        )
    prepared = checked.prepared
    if prepared is None:
        return None  # stopped while the audience was being checked
    begun = checkpoint.next_index > 0 or checkpoint.offsets is not None
    if begun and checkpoint.audience_digest not in (None, prepared.digest()):
        raise camp.CampaignError(
            f"the audience changed after the fan-out began ({checkpoint.enqueued} of "
            f"{checkpoint.total} recipients produced): resuming by position would skip "
            "some people and mail others twice. Restore the audience as it was (the "
            "campaign then resumes by itself), or send the changed audience as a new "
            "Campaign",
            camp.FailReason.AUDIENCE_CHANGED,
        )
    state.kube.patch_status("campaigns", namespace, name, {"audience": prepared.summary()})
    return spec, prepared


@dataclass
class _Chunk:
    """One chunk of the audience as records, and what it adds to the counts."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)
    enqueued: int = 0  # recipients counted as enqueued (produced now or before a restart)
    suppressed: int = 0  # recipients left out: suppressed before the send


def _chunk(
    audience: list[Recipient],
    indices: range,
    suppressed: set[str],
    produced: set[int],
    build: Callable[[int, Recipient], tuple[bytes, bytes]],
    list_name: str | None = None,
) -> _Chunk:
    """Pure: the records of `indices` to produce, leaving out suppressed addresses
    (the namespace's, and those of the campaign's mailing list `list_name`) and
    the indices `produced` before the operator restarted (counted, not sent)."""
    out = _Chunk()
    for i in indices:
        r = audience[i]
        if suppression_key(r.address) in suppressed or (
            list_name is not None and suppression_key(r.address, list_name) in suppressed
        ):
            out.suppressed += 1
            continue
        out.enqueued += 1
        if i not in produced:
            out.records.append(build(i, r))
    return out


def _record(
    key: str,
    uid: str,
    spec: CampaignSpec,
    renderer: camp.Renderer,
    site_of: Callable[[str], str],
    now: float,
    index: int,
    recipient: Recipient,
) -> tuple[bytes, bytes]:
    """The (key, value) of recipient `index`'s delivery record, keyed by its site
    (`contracts.sites`): the domains of a group share one partition, so one relay
    counts the group's limits (ARCHITECTURE.md, "Limits hold pool-wide")."""
    record = camp.build_record(
        campaign=key,
        uid=uid,
        index=index,
        recipient=recipient,
        spec=spec,
        renderer=renderer,
        now=now,
    )
    return site_of(record.domain).encode(), encode(record)


def _run_fanout(
    stopped: Any,
    state: OperatorState,
    key: str,
    uid: str,
    spec_raw: dict[str, Any],
    pool: Pool,
    checkpoint: FanoutCheckpoint,
    body: Any,
    generation: int | None,
    checked: Checked | None,
) -> bool:
    """Produce the audience from `checkpoint` on; returns early when stopped or deleted.
    False when another operator process took the fan-out over (this one stopped
    producing it); True when done, stopped or deleted.

    `checked`: the audience as checked while the pool was not Ready, used when
    neither the spec nor the audience ConfigMap changed since."""
    namespace, name = key.split("/", 1)
    try:
        t, bootstrap = pool.topics, pool.bootstrap
    except ValidationError as exc:
        raise camp.CampaignError(str(exc), camp.FailReason.INVALID_SPEC) from exc
    state.hub.follow(bootstrap, t.events, state.tally.observe)
    ready = _prepare(stopped, state, key, uid, spec_raw, checkpoint, generation, checked)
    if ready is None:
        return True
    spec, prepared = ready
    digest, audience, total = prepared.digest(), prepared.recipients, len(prepared.recipients)
    renderer = camp.Renderer(
        spec, key, seconds=FANOUT_RENDER_SECONDS, endpoint=pool.spec.unsubscribe is not None
    )
    suppressed = kafka_io.read_suppressions(bootstrap, t.suppressions)
    groups, overrides = pool.spec.domain_groups, pool.spec.throttles.overrides
    site_of = functools.partial(sites.site_of, groups=groups, overrides=overrides)
    start = checkpoint.next_index
    enqueued = checkpoint.enqueued
    pre_suppressed = checkpoint.suppressed_before_send
    if start == 0 and checkpoint.is_empty:
        kopf.info(body, reason="FanoutStarted", message=f"{total} recipients to {t.outbound}")
    started_at = checkpoint.started_at or now_iso()

    def progress(state_: FanoutState, index: int, **fields: Any) -> FanoutCheckpoint:
        return FanoutCheckpoint(
            state=state_,
            next_index=index,
            enqueued=enqueued,
            suppressed_before_send=pre_suppressed,
            total=total,
            started_at=started_at,
            audience_digest=digest,
            message=None,  # a resumed campaign's failure message goes
            reason=None,
            generation=generation,
            **fields,
        )

    def held(index: int, offsets: dict[int, int] | None) -> FanoutCheckpoint:
        return progress(
            FanoutState.RUNNING,
            index,
            offsets=offsets,
            holder=state.process.encode(),
            held_at=time.time(),
        )

    # Claimed in the checkpoint before the broker fences anyone: a holder
    # fenced below then finds this process named there and waits, instead of
    # fencing it back (`fanout_lease`).
    obj = state.kube.get_custom("campaigns", namespace, name)
    if obj is None:
        return True
    # No offsets yet: nothing of it was ever produced, the first chunk starts here.
    scan_from = checkpoint.offsets or kafka_io.end_offsets(bootstrap, t.outbound)
    if not _write_held(state, key, obj, held(start, scan_from), checkpoint.holder):
        return False
    tid = fanout_lease.transactional_id(namespace, name, uid)
    try:
        with kafka_io.FanoutTransactions(bootstrap, tid) as transactions:
            produced: set[int] = set()
            if checkpoint.offsets:
                # after the fence: what it finds is all that will ever be committed there
                produced = kafka_io.produced_since(bootstrap, t.outbound, checkpoint.offsets, uid)
            index = start
            while index < total:
                obj = state.kube.get_custom("campaigns", namespace, name)
                if obj is None:
                    return True
                if stopped:  # released: another replica may resume it at once
                    _write_held(state, key, obj, FanoutCheckpoint(holder=None))
                    return True
                if index > start:  # the claim was the first chunk's checkpoint
                    # Fresh offsets only once no index from here on was found
                    # committed: a resume from them would not see those again.
                    later = any(i >= index for i in produced)
                    offsets = scan_from if later else kafka_io.end_offsets(bootstrap, t.outbound)
                    if not _write_held(state, key, obj, held(index, offsets)):
                        return False  # another operator process resumed it (see fanout_lease)
                build = functools.partial(_record, key, uid, spec, renderer, site_of, time.time())
                end = min(index + FANOUT_CHUNK, total)
                chunk = _chunk(
                    audience, range(index, end), suppressed, produced, build, renderer.list
                )
                enqueued += chunk.enqueued
                pre_suppressed += chunk.suppressed
                transactions.produce(t.outbound, chunk.records)
                index = end
    except KafkaError as exc:
        # A fenced producer is not always told so: frozen past its commit's
        # timeout, it only learns the commit timed out. The checkpoint says.
        now = state.kube.get_custom("campaigns", namespace, name)
        holder = FanoutCheckpoint.from_status((now or {}).get("status", {})).holder
        if holder == state.process.encode():
            if not isinstance(exc, kafka_io.ProducerFencedError):
                raise  # Kafka trouble: retried after a pause, from the checkpoint
            # the broker aborted it (its transaction timeout): resumed at once
            log.warning("fan-out of %s: chunk aborted (%s); resuming from the checkpoint", key, exc)
            return False
        log.warning(
            "fan-out of %s fenced: taken over by %s, whose transactions fence this "
            "process's at the broker (%s: %s); this process stops producing it",
            key,
            holder or "another operator process (which has finished or released it since)",
            type(exc).__name__,
            exc,
        )
        return False
    obj = state.kube.get_custom("campaigns", namespace, name)
    if obj is None:
        return True
    # offsets: explicit null, the merge patch removes the resume offsets
    done = progress(FanoutState.DONE, total, offsets=None, holder=None)
    if not _write_held(state, key, obj, done):
        return False  # taken over during the last chunk: the new holder writes done
    kopf.info(
        body,
        reason="FanoutDone",
        message=f"{enqueued} records enqueued, {pre_suppressed} suppressed",
    )
    return True
