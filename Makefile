# Set-up and checks. `make run` and `make test` are all a fresh Debian machine with
# Python 3.11+ needs; they install what is missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed-run
# `make run PORT=9900`, or PORT in the environment: the port the demo listens on.
PORT   ?= 9840
# apt-get as root, else through sudo.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test check lint format tools clean bench dist

# What running needs: the package and its run-time dependencies only.
$(RUN_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing Debian's python3-venv"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# What the tests need on top: the development tools.
$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## run: install into .venv and start the exporter in demo mode (simulated Kizen + FirstPromoter)
run: $(RUN_STAMP)
	$(BIN)/bulk-progress-exporter --demo --web.listen-address=:$(PORT)

## tools: Debian's prometheus (promtool), prometheus-alertmanager and chromium, when missing
tools:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus-alertmanager >/dev/null 2>&1; then \
	  echo "installing Debian's prometheus and prometheus-alertmanager"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager; \
	fi
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null
	@# node and the pinned @grafana/schema + typescript: the dashboards' schema check
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  echo "installing Debian's nodejs and npm"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; \
	fi
	@[ tests/dashboard-schema/node_modules/.package-lock.json -nt tests/dashboard-schema/package-lock.json ] || \
	  npm ci --prefix tests/dashboard-schema --no-audit --no-fund --loglevel=error
	@# helm (pinned, into .tools/bin): the Helm chart's lint and render tests
	bash scripts/install-helm.sh
	@# chromium: the landing page's browser tests (headless, --dump-dom)
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing Debian's chromium"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; \
	fi
	@command -v chromium >/dev/null
	@# podman and co.: tests/test_image.py builds the image (scripts/build-image.sh) and runs it
	@if ! dpkg -s podman runc debootstrap uidmap slirp4netns fuse-overlayfs >/dev/null 2>&1; then \
	  echo "installing Debian's podman, runc, debootstrap, uidmap, slirp4netns and fuse-overlayfs"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    podman runc debootstrap uidmap slirp4netns fuse-overlayfs; \
	fi
	@dpkg -s podman runc debootstrap uidmap slirp4netns fuse-overlayfs >/dev/null

## lint: ruff (lint and format), mypy, hadolint
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint --failure-threshold warning Dockerfile

# The groups that need something outside Python (pyproject's markers): `make check` leaves
# them out, `make test` runs them.
OUTSIDE := e2e or image or browser or chart or load or tools or dist

## check: the everyday loop: ruff, mypy and every test that needs no outside tool; the tests
## mostly wait on the network, so 4 workers share the 2 cores
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 4 -m "not ($(OUTSIDE))"

## test: everything: tools, lint, type checks and the whole test suite
test: $(STAMP) tools lint
	$(BIN)/python -m pytest

# Where `make dist` writes (tests/test_dist.py points it at a directory of its own).
DIST ?= dist

## dist: what a user installs, into $(DIST)/: the sdist and wheel (python -m build), checked as a
## package index reads them (twine check --strict), and the Helm chart's package (helm package)
dist: $(STAMP)
	rm -rf $(DIST)
	$(BIN)/python -m build --sdist --wheel --outdir $(DIST) .
	$(BIN)/twine check --strict $(DIST)/*.tar.gz $(DIST)/*.whl
	bash scripts/install-helm.sh
	.tools/bin/helm package charts/bulk-progress-exporter --destination $(DIST)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: the benchmark (prints figures; not part of test)
bench: $(STAMP)
	$(BIN)/python -m benchmarks.scrape

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info build dist
