#!/bin/sh
# Installs mailpipe into /opt/mailpipe inside the image's root filesystem; run
# as root inside that root (a Dockerfile RUN, or chroot from
# scripts/build-image.sh), so both recipes install the same way.
#
# usage: install.sh WHEEL_DIR   (the project's wheel, its dependencies and pip)
#
# The venv has no pip: pip runs from its wheel, offline, and is not shipped.
# pip compiles every module to .pyc here, because the root filesystem is
# read-only at run time and nothing could write them later.
set -eu
wheels=$1
here=$(dirname "$0")
# The Python named in debian-packages.txt, e.g. python3.11.
python=$(grep -E '^python3\.[0-9]+$' "$here/debian-packages.txt")
# The non-root user the Dockerfile's USER and the chart's runAsUser name (10001),
# written directly: the no-Docker root filesystem has no useradd.
grep -q '^mailpipe:' /etc/group || echo 'mailpipe:x:10001:' >>/etc/group
grep -q '^mailpipe:' /etc/passwd ||
    echo 'mailpipe:x:10001:10001:mailpipe:/nonexistent:/usr/sbin/nologin' >>/etc/passwd
"$python" -m venv --without-pip /opt/mailpipe
set -- "$wheels"/pip-*.whl
/opt/mailpipe/bin/python "$1/pip" install --no-index --find-links "$wheels" \
    --no-cache-dir --disable-pip-version-check --no-warn-script-location mailpipe
