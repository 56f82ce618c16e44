# kubetune: the one entry point. A fresh machine needs nothing but this
# repository, Python 3.11, Go >= 1.26 and the package registries.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE       ?= $(HOME)/.cache/kubetune
UV_VERSION  := 0.13.8
UV          := $(CACHE)/uv-$(UV_VERSION)/bin/uv
VENV        := .venv
PY          := $(VENV)/bin/python
RUN_DIR     ?= .local
PYTEST_ARGS ?=
CHAOS_ARGS  ?=

.PHONY: help venv binaries up down status demo demo-classify chaos bench-memory test test-long lint chart-lint crds operator clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet --disable-pip-version-check --target $(CACHE)/uv-$(UV_VERSION) uv==$(UV_VERSION)

# The environment is rebuilt only when the lock file or a distribution's metadata changes.
$(VENV)/.synced: uv.lock pyproject.toml testbed/pyproject.toml | $(UV)
	$(UV) sync --frozen --all-extras --python 3.11
	@touch $@

venv: $(VENV)/.synced ## create .venv from uv.lock (all extras; the dev extra brings the test bed, testbed/)

binaries: ## build the local cluster's binaries from Go modules into $(CACHE) (only missing ones)
	hack/build-binaries.sh

up: venv binaries ## start the local cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok, node agent, MinIO)
	$(PY) -m kubetune_testbed up --run-dir $(RUN_DIR)

down: ## stop every process of the local cluster
	@if [ -x $(PY) ]; then $(PY) -m kubetune_testbed down --run-dir $(RUN_DIR); else echo "no environment, nothing to stop"; fi

status: venv ## show the local cluster's processes
	$(PY) -m kubetune_testbed status --run-dir $(RUN_DIR)

demo: up ## the main job: bring the local cluster up and show it working
	$(PY) hack/demo.py --run-dir $(RUN_DIR)

demo-classify: up ## a BERT-style encoder fine-tuned for sentiment classification on the local cluster
	$(PY) hack/demo_classify.py --run-dir $(RUN_DIR)

chaos: up ## fault injection: 100 faults into real training jobs on the local cluster, then a table (<= 45 min)
	$(PY) -m kubetune_testbed.chaos --faults 100 --jobs 2 --time-limit 2700 --run-dir $(RUN_DIR) $(CHAOS_ARGS)

bench-memory: venv ## the per-GPU memory estimate against measured peaks of DeepSpeed runs, ZeRO 0-3, on the CPU (~3 min)
	$(PY) hack/bench_memory.py

lint: venv ## ruff, mypy and the architecture contracts (.importlinter) on the project's packages and scripts
	$(VENV)/bin/ruff check api operator trainer testbed hack tests
	$(PY) hack/gen_api.py --check
	$(VENV)/bin/mypy -p kubetune_api -p kubetune_operator -p kubetune_trainer -p kubetune_testbed
	$(VENV)/bin/mypy hack/*.py
	$(VENV)/bin/lint-imports --no-cache

crds: venv ## regenerate crds/ and docs/api.md from the typed model in api/ (and the chart's copies)
	$(PY) hack/gen_api.py
	cp crds/kubetune.io_finetunejobs.yaml crds/kubetune.io_finetunesweeps.yaml charts/kubetune/files/crds/

chart-lint: venv binaries ## helm lint the chart with its defaults and with every charts/kubetune/ci/*-values.yaml
	@helm=$$($(PY) -c 'from kubetune_testbed.binaries import Binaries; print(Binaries.pinned().helm)'); \
	$$helm lint --strict charts/kubetune && \
	for f in charts/kubetune/ci/*-values.yaml; do $$helm lint --strict charts/kubetune -f $$f --quiet || exit 1; done

operator: venv ## run the operator (with leader election) against the current KUBECONFIG (source .local/env for the local cluster)
	$(PY) -m kubetune_operator

test: venv binaries lint ## everything CI runs: lint, then the whole test suite against a fresh local cluster
	hack/run-tests.sh $(PYTEST_ARGS)

test-long: venv binaries ## the long acceptance runs with real models (minutes each; not part of make test)
	hack/run-tests.sh -m long $(PYTEST_ARGS)

clean: down ## remove the run directory and the environment (the binary cache stays)
	rm -rf $(RUN_DIR) $(VENV)
