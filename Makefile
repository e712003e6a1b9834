# Pose Factory task runner. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := scripts/.venv
VENV_PY := $(VENV)/bin/python
# Stamp so `make test` / `make demo` reinstall only when the pins or the package metadata change.
VENV_STAMP := $(VENV)/.installed

.PHONY: help setup demo test lint s3-local test-tools

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV_STAMP): requirements.lock pyproject.toml
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	# Plain `dvc` in this virtualenv then talks to R2 correctly (checksum settings, credentials from .env).
	$(VENV_PY) -m pose_factory.core.envhook install
	@touch $@

setup: $(VENV_STAMP) ## Create scripts/.venv with the pinned versions from requirements.lock

demo: $(VENV_STAMP) ## The whole loop in a sandbox repository: generate, publish, pull, version, push, dvc repro
	$(VENV_PY) -m pose_factory.devtools.demo

test: $(VENV_STAMP) test-tools ## Run the whole test suite (starts its own local S3 server)
	$(VENV_PY) -m pytest

lint: $(VENV_STAMP) ## Check the code with ruff (pyflakes, pycodestyle, import order, bugbear)
	$(VENV)/bin/ruff check scripts tests benchmarks

test-tools: ## Install Debian's chromium and blender for the browser and render tests (when missing, on Debian as root)
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v blender >/dev/null 2>&1 || missing="$$missing blender"; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing$$missing (Debian packages) for the browser and Blender tests ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "note:$$missing not installed; those tests will be skipped (install them to run them)"; fi

s3-local: $(VENV_STAMP) ## Run a local S3 server (SeaweedFS) on 127.0.0.1 and print the exports to use it
	$(VENV_PY) -m pose_factory.devtools.s3local
