# One image for both `mailpipe operator` and `mailpipe relay`. The dev stack
# (devstack/: the local Kafka, kube-apiserver, demo) is not copied: it is not
# shipped, and `mailpipe dev`/`demo` are not offered without it.
# Pinned by version tag; CI that can reach a registry should pin the digest too
# (python:3.11.7-slim-bookworm@sha256:...), which cannot be resolved offline here.
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common/ common/
COPY operator/ operator/
COPY relay/ relay/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.7-slim-bookworm
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin mailpipe
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENV PYTHONUNBUFFERED=1
EXPOSE 8080 9090
ENTRYPOINT ["mailpipe"]
CMD ["--help"]
