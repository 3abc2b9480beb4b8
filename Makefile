# Ferry: one-command set-up, tests, demo and benchmark on a fresh Debian machine.
#
#   make demo    set everything up, start a 3-host cluster with 3 test VMs, leave it running
#   make test    set everything up, check the protos, run the test suite
#   make down    stop the demo cluster (every process and QEMU guest)
#   make bench   region API benchmark against a bare gRPC echo baseline

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
APT_PKGS    := $(shell grep -v '^\#' .ci/apt-packages)
TESTGUEST   := var/testguest.img
CLUSTER_DIR ?= .cluster
PYTEST_ARGS ?=
export DEBIAN_FRONTEND := noninteractive

.PHONY: help setup apt venv node testguest proto-check test demo down status bench clean

help:
	@echo "make demo    - set up, start a local 3-host cluster with 3 running test VMs"
	@echo "make test    - set up, lint and check the protos, run pytest"
	@echo "make down    - stop the local cluster ($(CLUSTER_DIR))"
	@echo "make status  - show the local cluster's processes"
	@echo "make bench   - region API benchmark (10,000 servers, 1,000 hosts)"

setup: apt venv node testguest

# Debian packages, only when one is missing (apt-get needs root; sudo otherwise).
apt:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  $$sudo apt-get update -q; \
	  $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	else echo "Debian packages present: $(APT_PKGS)"; fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

# Re-run pip when pyproject.toml changes (and at least once).
$(VENV)/.installed: pyproject.toml | apt $(PY)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

node: node_modules/.installed

testguest: apt venv
	@mkdir -p var
	$(VENV)/bin/ferry-testguest --out $(TESTGUEST)

proto-check: venv node
	npx --no-install buf lint
	$(PY) tools/genproto.py --check

# pytest's own exit code is kept in var/pytest-exit-code (make itself exits 2 on any failure).
test: setup proto-check
	@rc=0; $(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; echo $$rc > var/pytest-exit-code; exit $$rc

demo: setup
	$(PY) scripts/demo.py --dir $(CLUSTER_DIR) --image $(TESTGUEST)

down:
	@if [ -x $(VENV)/bin/ferry-cluster ]; then $(VENV)/bin/ferry-cluster down --dir $(CLUSTER_DIR); \
	else echo "no venv: nothing was started"; fi

status: venv
	$(VENV)/bin/ferry-cluster status --dir $(CLUSTER_DIR)

bench: setup
	$(PY) bench/region_api.py

clean: down
	rm -rf $(CLUSTER_DIR) var
