#!/usr/bin/env bash
# Installs or builds what a real Kubernetes node in the local stack needs, into
# the same cache as scripts/setup-components.sh: kubelet, kube-controller-manager,
# kube-scheduler and kube-proxy from Go modules at the API server's version;
# containerd, runc, the CNI plugins, iptables and conntrack from Debian; the
# pod sandbox ("pause") binary from deps/pause. Idempotent: a component is
# skipped when its cached binary already reports the pinned version.
#
# Debian's containerd 1.6 is used rather than 2.x from Go modules: it runs
# pods under the 1.34 kubelet here (CRI v1) provided the CRI plugin sets
# `restrict_oom_score_adj = true`, and it costs one apt install instead of
# another multi-minute Go build on a 2-core machine.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MAILPIPE_CACHE:-$HOME/.cache/mailpipe}
BIN=$CACHE/bin
LOGS=$CACHE/logs
mkdir -p "$BIN" "$LOGS"
# shellcheck source=lib/components.sh
. "$here/scripts/lib/components.sh"

NODE_COMPONENTS=(kubelet kube-controller-manager kube-scheduler kube-proxy)

# --- kubelet, kube-controller-manager, kube-scheduler, kube-proxy -------------------
node_dir=$CACHE/kube-node-$KUBE_VERSION
node_cached() {
    local c
    for c in "${NODE_COMPONENTS[@]}"; do
        "$node_dir/$c" --version 2>/dev/null | grep -qx "Kubernetes $KUBE_VERSION" || return 1
    done
}
if node_cached; then
    echo "${NODE_COMPONENTS[*]} $KUBE_VERSION: cached"
else
    echo "${NODE_COMPONENTS[*]} $KUBE_VERSION: building from Go modules (minutes on 2 cores)"
    pkgs=""
    for c in "${NODE_COMPONENTS[@]}"; do pkgs+=" k8s.io/kubernetes/cmd/$c"; done
    started=$SECONDS
    go_wrapper_build kube-node "k8s.io/kubernetes@$KUBE_VERSION" "$pkgs" "$node_dir" \
        "$(kube_ldflags "$KUBE_VERSION")" "$(kube_staging_replaces "$KUBE_VERSION")"
    echo "${NODE_COMPONENTS[*]}: built in $((SECONDS - started))s"
    node_cached || fail kube-node "$LOGS/kube-node.log"
fi
for c in "${NODE_COMPONENTS[@]}"; do link "$node_dir/$c" "$c"; done

# --- pause: the pod sandbox image's one binary ---------------------------------------
# Our own source, so the cache key is its content rather than a version.
pause_hash=$(cat "$here/deps/pause/go.mod" "$here/deps/pause/main.go" | sha256sum | cut -c1-12)
pause_dir=$CACHE/pause-$pause_hash
if [ -x "$pause_dir/pause" ]; then
    echo "pause $pause_hash: cached"
else
    echo "pause $pause_hash: building"
    mkdir -p "$pause_dir"
    (cd "$here/deps/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
        -o "$pause_dir/pause.tmp" . && mv "$pause_dir/pause.tmp" "$pause_dir/pause") \
        > "$LOGS/pause.log" 2>&1 || fail pause "$LOGS/pause.log"
fi
link "$pause_dir/pause" pause

# --- Debian: containerd, runc, CNI plugins, iptables, conntrack ------------------------
# The packages start no daemon on this machine kind (PID 1 is not systemd); the
# node runs its own containerd with its own config, socket and directories.
need=()
containerd --version 2>/dev/null | grep -q ' 1\.6\.' || need+=(containerd)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
    && [ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)
[ -x /usr/sbin/iptables ] || need+=(iptables)
[ -x /usr/sbin/conntrack ] || need+=(conntrack)
if [ ${#need[@]} -gt 0 ]; then
    echo "apt: installing ${need[*]}"
    apt_install "$LOGS/apt-node.log" "${need[@]}"
else
    echo "containerd, runc, CNI plugins, iptables, conntrack: installed"
fi
echo "setup: node components ready in $CACHE"
