# Shared by scripts/setup-components.sh and scripts/setup-node.sh (sourced, not
# run): how a component is built from Go modules into the cache and reported
# when it fails. The caller sets CACHE, BIN and LOGS and `set -euo pipefail`.

# One Kubernetes version for the API server and the node (kubelet, scheduler,
# controller-manager, kube-proxy): the kubelet must not be newer than the API
# server, and 1.34 is the last release whose kubelet still runs on cgroup v1
# without opting in (this machine kind is cgroup v1).
KUBE_VERSION=v1.34.4

export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local

fail() { # component, log
    echo "setup: $1 FAILED — last lines of $2:" >&2
    tail -n 40 "$2" >&2 || true
    exit 1
}

# A throwaway Go module that requires the target and builds its main packages:
# `go install pkg@version` refuses modules whose go.mod has replace lines.
# With one package `out` is the binary; with several (space-separated, built
# in one `go build` so they share compiled packages) `out` is a directory.
go_wrapper_build() { # name, module@version, packages, output, ldflags, [extra go.mod text]
    local name=$1 modver=$2 pkgs=$3 out=$4 ldflags=$5 extra=${6:-}
    local dir pkg target
    dir=$(mktemp -d "$CACHE/build-$name.XXXXXX")
    printf 'module mailpipe.local/build/%s\n\ngo 1.24\n\nrequire %s\n%s\n' \
        "$name" "${modver/@/ }" "$extra" > "$dir/go.mod"
    {
        printf 'package tools\n\nimport (\n'
        for pkg in $pkgs; do printf '\t_ "%s"\n' "$pkg"; done
        printf ')\n'
    } > "$dir/tools.go"
    if [ "$(wc -w <<< "$pkgs")" -gt 1 ]; then
        target=$out.tmp/
    else
        target=$out.tmp
    fi
    # shellcheck disable=SC2086 # $pkgs is a list of package paths
    ( cd "$dir" && go mod tidy && rm -rf "$out.tmp" \
        && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$target" $pkgs \
        && rm -rf "$out" && mv "$out.tmp" "$out" ) > "$LOGS/$name.log" 2>&1 \
        || { rm -rf "$dir"; fail "$name" "$LOGS/$name.log"; }
    rm -rf "$dir"
}

link() { ln -sfn "$1" "$BIN/$2"; }

# k8s.io/kubernetes points its staging modules at ./staging with replace
# lines; map each to its published v0.x.y twin of the same release.
kube_staging_replaces() { # kube version (v1.x.y)
    local version=$1 gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" \
        | sort -u | awk -v v="v0.${version#v1.}" '{printf "replace %s => %s %s\n", $1, $1, v}'
}

# What `--version` of a Kubernetes binary reports comes from these variables.
kube_ldflags() { # kube version (v1.x.y)
    local version=$1 minor pkg=k8s.io/component-base/version
    minor=$(echo "$version" | cut -d. -f2)
    printf '%s' "-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    printf '%s' " -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
}

# Debian packages, installed only when missing. apt waits for a lock another
# install holds (two setups on one machine) instead of failing at once.
APT_LOCK_TIMEOUT_SECONDS=600
apt_install() { # log, packages...
    local log=$1
    shift
    export DEBIAN_FRONTEND=noninteractive
    (apt-get -o DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT_SECONDS update -qq \
        && apt-get -o DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT_SECONDS install -y -qq \
            --no-install-recommends "$@") > "$log" 2>&1 || fail apt "$log"
}
