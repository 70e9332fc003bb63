# One image for both `mailpipe operator` and `mailpipe relay`. The dev stack
# (devstack/: the local Kafka, kube-apiserver, demo) is not copied: it is not
# shipped, and `mailpipe dev`/`demo` are not offered without it.
#
# Two recipes build this image and must agree: this file (any OCI builder with
# a registry: docker, buildah) and scripts/build-image.sh (no container engine:
# mmdebstrap + umoci, `make image`). Both install the Debian packages in
# image/debian-packages.txt and run image/install.sh; the script reads
# DEBIAN_RELEASE and the final stage's USER, ENV, ENTRYPOINT, CMD, WORKDIR,
# LABEL and EXPOSE from this file. tests/devstack/test_image.py checks that
# they agree. Python is Debian's (the python3.X line of the package list), the
# one Python both recipes can install without compiling it.
# Pinned by release; CI that can reach a registry should pin the digest too
# (debian:bookworm-slim@sha256:...), which cannot be resolved offline here.
ARG DEBIAN_RELEASE=bookworm

FROM debian:${DEBIAN_RELEASE}-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common/ common/
COPY operator/ operator/
COPY relay/ relay/
# The project's wheel, its dependencies' wheels, and pip's own (install.sh runs
# pip from its wheel, so the image ships no pip).
RUN pip wheel --no-cache-dir --wheel-dir /wheels . pip

FROM debian:${DEBIAN_RELEASE}-slim
COPY image/ /tmp/image/
COPY --from=build /wheels /tmp/wheels
RUN apt-get update \
    && grep -v '^#' /tmp/image/debian-packages.txt \
       | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* \
    && sh /tmp/image/install.sh /tmp/wheels \
    && rm -rf /tmp/wheels /tmp/image
LABEL org.opencontainers.image.title="mailpipe"
LABEL org.opencontainers.image.description="Kubernetes-native mail delivery pipeline: kopf operator, Kafka-fed SMTP relays"
LABEL org.opencontainers.image.licenses="Apache-2.0"
USER 10001
WORKDIR /
ENV PATH=/opt/mailpipe/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV LANG=C.UTF-8
ENV PYTHONUNBUFFERED=1
EXPOSE 8080 9090
ENTRYPOINT ["mailpipe"]
CMD ["--help"]
