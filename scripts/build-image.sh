#!/usr/bin/env bash
# Builds mailpipe's image without a container engine or a registry (`make image`).
#
# The same image as the Dockerfile, by another road: a Debian root filesystem
# from Debian's packages (mmdebstrap, the packages in image/debian-packages.txt),
# the project's wheel and its PyPI dependencies installed by image/install.sh
# inside it (chroot), packed as one layer with the Dockerfile's run-time config
# (umoci), written as an OCI archive that containerd's
# `ctr -n k8s.io images import` takes (checked with Debian's containerd 1.6).
#
# Output: $MAILPIPE_CACHE/images/<repository>-<version>-<digest>.oci.tar, where
# <digest> hashes the inputs (sources, pyproject, README, Dockerfile, image/,
# this recipe): unchanged inputs reuse the archive, so it is rebuilt only when
# they change. The archive names the image twice, <repository>:<version>-<digest>
# (changes with the content, for rollouts) and <repository>:<version> (the
# chart's appVersion). $MAILPIPE_CACHE/images/mailpipe.env names the newest
# (MAILPIPE_IMAGE, MAILPIPE_IMAGE_VERSION_TAG, MAILPIPE_IMAGE_OCI) for `source`.
# Only the newest two archives are kept, so a caller that uses the archive after
# this script ends (another checkout's build may prune it by then) names a path in
# MAILPIPE_IMAGE_HOLD: the archive is hard-linked there before the lock is released.
#
# Needs root (mmdebstrap's root mode, chroot); network to Debian's mirror and PyPI.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MAILPIPE_CACHE:-$HOME/.cache/mailpipe}
IMAGES=$CACHE/images
REPOSITORY=${MAILPIPE_IMAGE_REPOSITORY:-mailpipe.local/mailpipe}
# Debian's mirrors: mmdebstrap's default for a stable release (the release, its
# updates and its security suite), or a sources file (a local mirror).
SOURCES=${MAILPIPE_DEBIAN_SOURCES:-}
KEEP_BUILDS=2 # older archives are removed: each is a few hundred MB
PY=${PY:-python3}

recipe() { PYTHONPATH="$ROOT/devstack" "$PY" -m mailpipe.devstack.image --root "$ROOT" "$@"; }

# The tools, from Debian, installed once (idempotent: skipped when present).
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v umoci >/dev/null || need+=(umoci)
command -v flock >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    echo "build-image: installing ${need[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$IMAGES"
exec 9>"$IMAGES/.lock" # one build at a time: a second caller waits, then finds it cached
flock 9

version=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
digest=$(recipe digest)
release=$(recipe release)
python=$(recipe python)
# The archive's names are in it: another repository is another archive.
name=${REPOSITORY//[\/:]/_}-$version-$digest
tag=$version-$digest
oci=$IMAGES/$name.oci.tar
log=$IMAGES/build.log

publish() {
    cat >"$IMAGES/mailpipe.env.tmp" <<EOF
MAILPIPE_IMAGE=$REPOSITORY:$tag
MAILPIPE_IMAGE_VERSION_TAG=$REPOSITORY:$version
MAILPIPE_IMAGE_OCI=$oci
EOF
    mv "$IMAGES/mailpipe.env.tmp" "$IMAGES/mailpipe.env"
}

hold() {
    if [ -n "${MAILPIPE_IMAGE_HOLD:-}" ]; then
        ln -f "$oci" "$MAILPIPE_IMAGE_HOLD"
    fi
}

if [ -f "$oci" ]; then
    touch "$oci" # most recently used: kept by the pruning below
    publish
    hold
    echo "image: $REPOSITORY:$tag up to date ($oci)"
    exit 0
fi

host_python=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$host_python" != "$python" ]; then
    # The wheels are resolved on the host for the image's interpreter.
    echo "build-image: the host's $PY is Python $host_python, the image's is $python" \
        "(image/debian-packages.txt); set PY to a python$python" >&2
    exit 1
fi

started=$(date +%s)
work=$(mktemp -d "$IMAGES/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
: >"$log"
failed() {
    echo "build-image: $1 failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

# 1. The wheels, from exactly what the Dockerfile's build stage copies (no
# devstack/): the project's, its dependencies' (pip's cache keeps them across
# builds) and pip's own, which install.sh runs without shipping it.
mkdir -p "$work/src" "$work/wheels"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- \
    pyproject.toml README.md common operator relay image |
    xargs -0 -I{} sh -c 'test ! -f "$1" || cp --parents "$1" "$2"' _ {} "$work/src")
"$PY" -m pip wheel --disable-pip-version-check --wheel-dir "$work/wheels" "$work/src" pip \
    >>"$log" 2>&1 || failed "pip wheel"

# 2. The root filesystem as a tar: Debian's essential packages and the list,
# merged /usr by mmdebstrap's hook rather than the usrmerge package (which
# pulls in perl), no docs, man pages or translations; then install.sh in a
# chroot with a clean environment (the host's PIP_* and PYTHON* stay out).
# The .debs are kept across builds in $IMAGES/debs.
mkdir -p "$IMAGES/debs"
SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH
mmdebstrap --variant=essential --include="$(recipe packages)" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
    --setup-hook="sync-in $IMAGES/debs /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives $IMAGES/debs" \
    --customize-hook='mkdir "$1"/tmp/mailpipe' \
    --customize-hook="copy-in $work/wheels $ROOT/image /tmp/mailpipe" \
    --customize-hook='chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 sh /tmp/mailpipe/image/install.sh /tmp/mailpipe/wheels' \
    --customize-hook='rm -rf "$1"/tmp/mailpipe "$1"/var/cache/apt/archives/*.deb' \
    "$release" "$work/rootfs.tar" ${SOURCES:+"$SOURCES"} \
    >>"$log" 2>&1 || failed mmdebstrap

# 3. The image: that tar as its one layer, the Dockerfile's config.
layout=$work/oci
ref=$REPOSITORY:$tag
umoci init --layout "$layout"
umoci new --image "$layout:$ref"
umoci raw add-layer --image "$layout:$ref" \
    --history.created_by="scripts/build-image.sh (mmdebstrap $release, image/install.sh)" \
    "$work/rootfs.tar"
mapfile -t config < <(recipe umoci-args)
umoci config --image "$layout:$ref" --no-history --author="scripts/build-image.sh" \
    "${config[@]}" \
    --config.label="org.opencontainers.image.version=$version" \
    --config.label="org.opencontainers.image.revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    --config.label="io.mailpipe.image.inputs-digest=$digest" \
    --config.label="io.mailpipe.image.debian-release=$release" \
    --config.label="io.mailpipe.image.python=$python"
umoci tag --image "$layout:$ref" "$REPOSITORY:$version"
umoci gc --layout "$layout"

# 4. The archive: the layout as a tar (what an oci-archive is). Its refs are
# full image names, which containerd's import keeps as they are.
tar -C "$layout" --sort=name --owner=0 --group=0 --numeric-owner \
    -cf "$work/image.oci.tar" oci-layout index.json blobs
mv "$work/image.oci.tar" "$oci"
publish

# Older builds go, the newest $KEEP_BUILDS stay.
ls -1t "$IMAGES"/*.oci.tar | tail -n +$((KEEP_BUILDS + 1)) | while read -r old; do
    rm -f "$old"
done
hold

seconds=$(($(date +%s) - started))
echo "image: $ref built in ${seconds}s: archive $(du -m "$oci" | cut -f1) MB," \
    "root filesystem $(du -m "$work/rootfs.tar" | cut -f1) MB ($oci)"
