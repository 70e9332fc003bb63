#!/usr/bin/env bash
# The DNSSEC test bed of the DANE tests (issue 22): nsd serves a signed test
# zone, ldns-keygen/ldns-signzone sign it, unbound validates it with the zone's
# trust anchor. All three from Debian (apt), installed only when missing, so a
# second run downloads nothing. The tests start their own nsd and unbound on
# loopback ports with their own config files; the system instances the
# packages ship are never used.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MAILPIPE_CACHE:-$HOME/.cache/mailpipe}
LOGS=$CACHE/logs
mkdir -p "$LOGS"
# shellcheck source=lib/components.sh
. "$here/scripts/lib/components.sh"

# Whether the system instance of a daemon runs (its init script asks by pid file).
system_running() { # service
    [ -x "/etc/init.d/$1" ] && "/etc/init.d/$1" status >/dev/null 2>&1
}

need=()
[ -x /usr/sbin/nsd ] && [ -x /usr/sbin/nsd-checkzone ] || need+=(nsd)
[ -x /usr/sbin/unbound ] && [ -x /usr/sbin/unbound-checkconf ] || need+=(unbound)
command -v ldns-signzone >/dev/null 2>&1 && command -v ldns-keygen >/dev/null 2>&1 \
    || need+=(ldnsutils)
if [ ${#need[@]} -gt 0 ]; then
    echo "apt: installing ${need[*]}"
    was_running=()
    for s in nsd unbound; do system_running "$s" && was_running+=("$s"); done
    apt_install "$LOGS/apt-dnssec.log" "${need[@]}"
    # A machine without a policy-rc.d lets the packages start their system
    # daemons (port 53). Stop only an instance this install started, through
    # its init script (which signals the pid its pid file records).
    for s in nsd unbound; do
        if [[ " ${was_running[*]} " != *" $s "* ]] && system_running "$s"; then
            "/etc/init.d/$s" stop >> "$LOGS/apt-dnssec.log" 2>&1 || true
        fi
    done
else
    echo "nsd, unbound, ldnsutils: installed"
fi
echo "setup: DNSSEC test bed ready"
