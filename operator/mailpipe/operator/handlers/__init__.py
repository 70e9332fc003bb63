"""kopf handlers, one module per kind: importing this package registers them all.

Handlers only parse, delegate to pure builders and IO modules, and patch
status (ARCHITECTURE.md, "Components"):

- `pool`: SendingPool create/update/resume/delete; the one place the relay
  Deployment (and its ConfigMap, Service, PDB) is written;
- `warmup`: per-IP warm-up status of each pool, read from its events topic;
- `fanout`: the per-Campaign daemon that produces the audience to Kafka;
- `campaign`: Campaign status from events, suspend/resume, cancel on delete;
- `children`: a pool's ConfigMap, Service and PDB put back when edited or
  deleted (the Deployment is `relays`'s), by one task for every pool;
- `relays`: the world a pool depends on (its relay Deployment watched, the
  Secrets it references re-read), so its status and relays follow it;
- `scale`: the pool's status.replicas and status.selector (scale subresource)
  from its relay Deployment, and a refused pool's relays held at 0;
- `policy`: the mounted cluster policy re-read while running; a change
  re-checks every pool;
- `status`: conditions; `context`: the operator state in kopf's memo, `get_pool`.

This module holds the operator-wide startup and cleanup: kopf settings, and
the `OperatorState` put into kopf's memo, which replaces module globals.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

import kopf

from .. import kube_io, tenancy
from ..cluster_policy import POLICY_MEMO_KEY
from ..config_signing import SIGNER_MEMO_KEY
from ..models import GROUP
from . import campaign, children, fanout, policy, pool, relays, scale, warmup
from .context import MEMO_KEY, TIMERS_MEMO_KEY, OperatorState, OperatorTimers, operator_state

__all__ = ["campaign", "children", "fanout", "policy", "pool", "relays", "scale", "warmup"]

# Re-list every 5 min: a watch that silently stopped delivering events (load
# balancers drop idle streams) is replaced within that time.
WATCH_SERVER_TIMEOUT_SECONDS = 300
WATCH_CLIENT_TIMEOUT_SECONDS = WATCH_SERVER_TIMEOUT_SECONDS + 30  # the server ends it first
WATCH_CONNECT_TIMEOUT_SECONDS = 30
# kopf runs sync handlers (the fan-out daemons) in this many threads: the
# number of campaigns that fan out at the same time.
SYNC_HANDLER_THREADS = 8
# Threads for the handlers' blocking calls (to_thread): API requests and topic
# creation in flight at once. The API server and Kafka queue the rest.
EXECUTOR_MEMO_KEY = "mailpipe_blocking_executor"  # the operator memo's, for the clean-up
BLOCKING_CALL_THREADS = kube_io.API_CONNECTIONS  # each thread keeps its API connection


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Settings for a real cluster, and the operator state every handler reaches via memo."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_SECONDS
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT_SECONDS
    settings.watching.connect_timeout = WATCH_CONNECT_TIMEOUT_SECONDS
    settings.posting.level = logging.INFO
    settings.execution.max_workers = SYNC_HANDLER_THREADS
    # Handlers run their blocking Kubernetes and Kafka calls in the loop's
    # default executor (asyncio.to_thread), which has cpu+4 threads: six here,
    # so 200 pools created at once queued 1,000 API calls behind six threads.
    # The calls wait on the network, not the CPU: more threads overlap them.
    loop = asyncio.get_running_loop()
    blocking = concurrent.futures.ThreadPoolExecutor(
        max_workers=BLOCKING_CALL_THREADS, thread_name_prefix="blocking"
    )
    loop.set_default_executor(blocking)
    memo[EXECUTOR_MEMO_KEY] = blocking  # the clean-up drops what still waits for a thread
    state = OperatorState(timers=memo.get(TIMERS_MEMO_KEY, OperatorTimers()))
    if POLICY_MEMO_KEY in memo:  # put there by `mailpipe operator` (main.run)
        state.policy = tenancy.policy_of(memo)
    state.signer = memo.get(SIGNER_MEMO_KEY)  # put there by `mailpipe operator` (main.run)
    state.hub.start(loop)
    # Set before kopf starts watching, so every resource memo copies it.
    memo[MEMO_KEY] = state


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    state = operator_state(memo)
    await policy.stop(state)
    await children.stop_guard(state)
    await warmup.stop_status_loop(state)
    blocking = memo.get(EXECUTOR_MEMO_KEY)
    if isinstance(blocking, concurrent.futures.ThreadPoolExecutor):
        # The blocking calls still queued are for handlers kopf has cancelled:
        # dropped, not run. asyncio waits for the default executor's work
        # before the process exits, and at SIGTERM with 1,000 pools that queue
        # (API reads and writes nobody waits for any more) held the exit 10 s.
        blocking.shutdown(wait=False, cancel_futures=True)
    # In threads of their own, all at once: stopping readers and closing clients
    # waits on sockets. Not the default executor: at shutdown its threads may all
    # be in API calls to a slow apiserver (1,000 pools: every one of 32), and the
    # clean-up queued behind them took seconds of SIGTERM's grace.
    loop = asyncio.get_running_loop()
    closers = (state.hub.stop, state.producers.close, state.admins.close)
    with concurrent.futures.ThreadPoolExecutor(len(closers), "shutdown") as threads:
        await asyncio.gather(*(loop.run_in_executor(threads, close) for close in closers))
