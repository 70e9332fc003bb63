#!/usr/bin/env bash
# Installs or builds the real components the tests, demo and benchmarks use,
# into a cache outside the clone, so a second clone on this machine is warm.
# Only package managers download anything: Maven (Kafka), Go modules (etcd,
# kube-apiserver, helm), apt (dnsmasq, postfix). Idempotent: each component is
# skipped when its cached binary already reports the pinned version.
set -euo pipefail

KAFKA_VERSION=3.9.1
ETCD_VERSION=v3.6.16
HELM_VERSION=v4.3.1

here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MAILPIPE_CACHE:-$HOME/.cache/mailpipe}
BIN=$CACHE/bin
LOGS=$CACHE/logs
mkdir -p "$BIN" "$LOGS"
# shellcheck source=lib/components.sh
. "$here/scripts/lib/components.sh"

# --- etcd -------------------------------------------------------------------
etcd_dir=$CACHE/etcd-$ETCD_VERSION
if "$etcd_dir/etcd" --version 2>/dev/null | grep -q "etcd Version: ${ETCD_VERSION#v}"; then
    echo "etcd $ETCD_VERSION: cached"
else
    echo "etcd $ETCD_VERSION: building from Go modules (a few minutes)"
    mkdir -p "$etcd_dir"
    go_wrapper_build etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3 \
        "$etcd_dir/etcd" "-s -w"
fi
link "$etcd_dir/etcd" etcd

# --- kube-apiserver -----------------------------------------------------------
kube_dir=$CACHE/kube-apiserver-$KUBE_VERSION
if "$kube_dir/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $KUBE_VERSION"; then
    echo "kube-apiserver $KUBE_VERSION: cached"
else
    echo "kube-apiserver $KUBE_VERSION: building from Go modules (10+ minutes on 2 cores)"
    mkdir -p "$kube_dir"
    replaces=$(kube_staging_replaces "$KUBE_VERSION")
    ldflags=$(kube_ldflags "$KUBE_VERSION")
    go_wrapper_build kube-apiserver "k8s.io/kubernetes@$KUBE_VERSION" k8s.io/kubernetes/cmd/kube-apiserver \
        "$kube_dir/kube-apiserver" "$ldflags" "$replaces"
fi
link "$kube_dir/kube-apiserver" kube-apiserver

# --- helm -------------------------------------------------------------------
helm_dir=$CACHE/helm-$HELM_VERSION
if "$helm_dir/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    echo "helm $HELM_VERSION: cached"
else
    echo "helm $HELM_VERSION: building from Go modules"
    mkdir -p "$helm_dir"
    (GOBIN=$helm_dir CGO_ENABLED=0 go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v4/cmd/helm@$HELM_VERSION") > "$LOGS/helm.log" 2>&1 || fail helm "$LOGS/helm.log"
fi
link "$helm_dir/helm" helm

# --- Kafka ------------------------------------------------------------------
kafka_dir=$CACHE/kafka-$KAFKA_VERSION
if [ -s "$kafka_dir/classpath" ] && [ -f "$kafka_dir/libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    echo "kafka $KAFKA_VERSION: cached"
else
    echo "kafka $KAFKA_VERSION: resolving the broker classpath from Maven Central"
    mkdir -p "$kafka_dir/libs"
    (mvn -B -q -f "$here/deps/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$kafka_dir/libs") \
        > "$LOGS/kafka.log" 2>&1 || fail kafka "$LOGS/kafka.log"
    find "$kafka_dir/libs" -name '*.jar' | sort | paste -sd: > "$kafka_dir/classpath"
fi
ln -sfn "$kafka_dir" "$CACHE/kafka"

# --- Debian packages -----------------------------------------------------------
# The system postfix instance (default config dir) that the package's
# maintainer script may start on install. The dev stack and the benchmark run
# their own instances, each with its own config dir, on loopback ports.
SYSTEM_POSTFIX_CONF=/etc/postfix
system_postfix_running() {
    [ -x /usr/sbin/postfix ] && /usr/sbin/postfix -c "$SYSTEM_POSTFIX_CONF" status >/dev/null 2>&1
}

need=()
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
[ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/postfix ] || need+=(postfix)
# The relay benchmark's DKIM reference: postfix + OpenDKIM as a milter (bench/relay.py
# runs its own instance on a loopback port; the package's service is left stopped).
[ -x /usr/sbin/opendkim ] || need+=(opendkim opendkim-tools)
if [ ${#need[@]} -gt 0 ]; then
    echo "apt: installing ${need[*]}"
    postfix_was_running=no
    system_postfix_running && postfix_was_running=yes
    # opendkim's package may start its service where policy-rc.d allows it:
    # stopped again below by the pid its pidfile records, only if the install started it.
    opendkim_pidfile=/run/opendkim/opendkim.pid
    opendkim_was_running=no
    [ -s "$opendkim_pidfile" ] && opendkim_was_running=yes
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt_install "$LOGS/apt.log" "${need[@]}"
    # Leave no system daemon behind, but stop only the instance this install
    # started: postfix's own `stop` for that config dir signals the master whose
    # pid its queue directory records. Never by process name: on a shared
    # machine other postfix masters (another clone's benchmark) are not ours.
    if [ "$postfix_was_running" = no ] && system_postfix_running; then
        /usr/sbin/postfix -c "$SYSTEM_POSTFIX_CONF" stop >> "$LOGS/apt.log" 2>&1 || true
    fi
    if [ "$opendkim_was_running" = no ] && [ -s "$opendkim_pidfile" ]; then
        kill "$(cat "$opendkim_pidfile")" 2>/dev/null || true
    fi
else
    echo "dnsmasq, postfix, opendkim: installed"
fi
echo "setup: components ready in $CACHE"
