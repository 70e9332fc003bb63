# mailpipe — developer entry points. `make demo` and `make test` each run
# `setup` first, so a fresh clone needs nothing else.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/mailpipe
export MAILPIPE_CACHE := $(CACHE)

.PHONY: setup venv components dnssec node-components image demo test test-cluster test-unit smoke lint bench bench-relay bench-operator clean

setup: venv components dnssec node-components

# The virtualenv is rebuilt only when pyproject.toml changes (stamp file).
venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	# Plain path entries for the three source roots, so every tool (mypy,
	# pytest, debuggers) sees real files rather than setuptools' editable finder.
	printf '%s\n' $(CURDIR)/common $(CURDIR)/operator $(CURDIR)/relay $(CURDIR)/devstack \
	  > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mailpipe-source-roots.pth"
	touch $@

# Kafka (Maven Central), etcd + kube-apiserver + helm (Go modules),
# dnsmasq + postfix (Debian); cached under $(CACHE), idempotent.
components:
	bash scripts/setup-components.sh

# nsd, unbound and ldns-utils (Debian): the signed zone and the validating
# resolver the DANE tests run on loopback (issue 22); apt only when missing.
dnssec:
	bash scripts/setup-dnssec.sh

# The image without a container engine (mmdebstrap + umoci; the Dockerfile's
# twin): $(CACHE)/images/, rebuilt only when its inputs change. Needs root.
image:
	PY=$(PY) bash scripts/build-image.sh

# kubelet, kube-controller-manager, kube-scheduler, kube-proxy (Go modules, the
# API server's version), containerd + runc + CNI plugins (Debian), the pause
# binary: what the stack's real node runs (issue 17). Cached like `components`,
# and after it: its Go build reuses kube-apiserver's build cache.
node-components:
	bash scripts/setup-node.sh

demo: setup
	$(BIN)/mailpipe demo

test: setup
	bash scripts/run-tests.sh

# The stack's real node (issue 17): also the last phase of `make test`
# (scripts/run-tests.sh), reported on its own.
test-cluster: venv node-components
	$(BIN)/pytest -m cluster

test-unit: venv
	$(BIN)/pytest -m "not smoke and not relay and not operator and not e2e and not cluster"

smoke: setup
	$(BIN)/pytest -m smoke

lint: venv
	$(BIN)/ruff check common operator relay devstack tests bench
	$(BIN)/ruff format --check common operator relay devstack tests bench
	$(BIN)/mypy common/mailpipe operator/mailpipe relay/mailpipe devstack/mailpipe
	$(BIN)/lint-imports
	$(CACHE)/bin/helm lint helm/mailpipe

bench: bench-relay bench-operator bench-soak bench-dsn

bench-relay: setup
	$(BIN)/python -m bench.relay

bench-operator: setup
	$(BIN)/python -m bench.operator

# Returned messages (DSNs, ARF) decided per second on one core by the feedback
# receiver (issue 20): pure CPU, no stack needed; bench/results/dsn_parse.json.
.PHONY: bench-dsn
bench-dsn: venv
	$(BIN)/python -m bench.dsn_parse

# 200,000 records through two relays (issue 10, Deliver 9); bench/results/soak.json
# gets the RSS curves, the final lag and the dispositions. `make test` runs the
# short one (tests/soak/test_soak.py).
.PHONY: bench-soak
bench-soak: setup
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
