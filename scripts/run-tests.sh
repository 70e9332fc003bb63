#!/usr/bin/env bash
# Runs the whole suite, in three pytest phases, each one a run of its own:
#   parallel   every test but the two kinds below, on MAILPIPE_TEST_WORKERS
#              pytest-xdist workers (default 4) sharing one stack
#              (mailpipe.devstack.shared): the tests mostly wait on timers,
#              Kafka and processes, not on the CPU;
#   exclusive  the tests that change the stack for everyone (DNS records,
#              stopped components, cluster-wide operators: the `exclusive`
#              marker), one at a time on a stack of their own, at the same
#              time as the parallel phase; its output follows that phase's;
#   cluster    the stack's real node (kubelet, containerd: the `cluster`
#              marker), after both, reported on its own. Its image is built
#              (or found cached) beside the first two phases, so the node
#              tests do not wait minutes for it after them.
# pytest's exit code 5 ("no tests ran") fails a phase: a suite that silently
# collects nothing must never look green.
# --durations=25: every phase (CI's too) ends with its 25 slowest tests, so a
# test that starts to cost minutes is seen the day it lands.
# Arguments are passed to pytest as they are, in a single plain run.
# SIGTERM, SIGINT or SIGHUP to this script reaches every running phase, and
# the script waits for their clean-up (tests/conftest.py stops what they started).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=(.venv/bin/pytest --durations=25)
WORKERS="${MAILPIPE_TEST_WORKERS:-4}"

failed=0
check() {  # check NAME RC
    if [ "$2" -eq 5 ]; then
        echo "run-tests: $1: pytest collected no tests (exit 5) — failing" >&2
        failed=1
    elif [ "$2" -ne 0 ]; then
        echo "run-tests: $1: pytest exited $2" >&2
        failed=1
    fi
}

if [ "$#" -gt 0 ]; then
    "${PYTEST[@]}" "$@"
    rc=$?
    check "pytest $*" "$rc"
    [ "$rc" -eq 5 ] && exit 1
    exit "$rc"
fi

pids=()
image_pid=
stop() {
    trap '' TERM INT HUP  # a repeated signal must not cut the clean-up short
    echo "run-tests: stopping ${#pids[@]} phase(s)" >&2
    for pid in "${pids[@]}" $image_pid; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}" $image_pid; do wait "$pid"; done
    exit 143
}
trap stop TERM INT HUP

exclusive_log="$(mktemp -t mailpipe-exclusive.XXXXXX.log)"
image_log="$(mktemp -t mailpipe-image.XXXXXX.log)"
started=$SECONDS
bash scripts/build-image.sh >"$image_log" 2>&1 &
image_pid=$!
"${PYTEST[@]}" -p no:xdist -m "exclusive and not cluster" >"$exclusive_log" 2>&1 &
pids+=($!)
"${PYTEST[@]}" -n "$WORKERS" --dist worksteal -m "not exclusive and not cluster" &
pids+=($!)
wait "${pids[1]}"
parallel_rc=$?
echo "run-tests: parallel phase done after $((SECONDS - started)) s"
wait "${pids[0]}"
exclusive_rc=$?
echo "run-tests: exclusive phase (run at the same time; its output follows) done after $((SECONDS - started)) s"
cat "$exclusive_log"
rm -f "$exclusive_log"
pids=()
check "parallel phase" "$parallel_rc"
check "exclusive phase" "$exclusive_rc"

# The node tests' fixture builds the image itself when this build failed, and
# fails with the build's own message; here it is only reported.
wait "$image_pid"
image_rc=$?
image_pid=
echo "run-tests: image build beside the first phases: exit $image_rc, $(tail -n 1 "$image_log")"
[ "$image_rc" -eq 0 ] || tail -n 30 "$image_log"
rm -f "$image_log"

cluster_started=$SECONDS
"${PYTEST[@]}" -p no:xdist -m cluster &
pids=($!)
wait "${pids[0]}"
cluster_rc=$?
pids=()
echo "run-tests: cluster phase done after $((SECONDS - cluster_started)) s"
check "cluster phase" "$cluster_rc"
echo "run-tests: all phases done after $((SECONDS - started)) s"
exit "$failed"
