# ClassifyCloud. `make run` = the embedded local stack; `make test` = the whole suite, from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TOOLS  := .venv-tools
KSERVE := .venv-kserve

.PHONY: install run test test-fast lint lint-infra bench bench-load bench-e2e browser clean system-tools

$(VENV)/.installed: setup.cfg pyproject.toml requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,local]'
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	touch $@

# KServe's Python client (tests/test_e2e_oip.py) pins protobuf<7, which our venv does not take: a venv of its own.
$(KSERVE)/.installed:
	$(PYTHON) -m venv $(KSERVE)
	$(KSERVE)/bin/pip install -q --upgrade pip
	$(KSERVE)/bin/pip install -q 'kserve==0.21.0'
	touch $@

# checkov pins many packages of its own: it lives in a separate venv.
$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade pip
	$(TOOLS)/bin/pip install -q 'checkov>=3.2'
	touch $@

install: $(VENV)/.installed

# What only the OS ships (systemd-analyze): apt-get when possible, else a clear message of what is missing.
system-tools:
	@bash tools/system-tools.sh

run: install
	$(VENV)/bin/classifycloud up

# The upload-page test drives Debian's chromium through chromedriver (tests/test_e2e_edge.py).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium + chromium-driver (apt-get) for the upload-page test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	else echo "error: the upload-page test needs chromium and chromedriver on PATH (Debian/Ubuntu: apt-get install chromium chromium-driver)" >&2; exit 1; fi

# The suite in two passes: everything but the wall-clock bounds on JOBS xdist workers (tests/conftest.py groups
# the deployment suite, the infrastructure checks and the whole-stack tests, each run in series on one worker),
# then the tests marked `timing` alone on the machine. Per-test times: out/durations*.tsv and out/junit*.xml.
JOBS    ?= 2
TESTENV := PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/$(TOOLS)/bin:$$PATH"
test: install $(TOOLS)/.installed $(KSERVE)/.installed system-tools browser lint
	$(TESTENV) $(PY) -m pytest -q -ra -n $(JOBS) --dist loadgroup -m "not timing" --junitxml=out/junit.xml
	$(TESTENV) DURATIONS_FILE=durations-timing.tsv $(PY) -m pytest -q -ra -p no:xdist -m timing \
	  --junitxml=out/junit-timing.xml

# The quick loop: lint, then every test that starts no stack of processes and asserts no wall-clock bound.
test-fast: install lint
	$(PY) -m pytest -q -ra -n $(JOBS) --dist loadgroup -m "not slow and not timing"

lint: install
	$(VENV)/bin/ruff check .

# The offline infrastructure checks alone (fmt, terraform validate, checkov, shellcheck, systemd, cross-checks).
lint-infra: install $(TOOLS)/.installed system-tools
	PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -q -ra tests/test_infra_terraform.py tests/test_infra_crosscheck.py tests/test_infra_iam.py tests/test_infra_ami.py

bench: install
	$(PY) bench/worker_throughput.py
	$(PY) bench/autoscale_sim.py

# A bounded locust run (60 s, 10 users) against the local stack; docs/BENCHMARKS.md has the numbers.
bench-load: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/load_test.py --users 10 --duration 60

bench-e2e: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/e2e.py --label $(or $(LABEL),run) $(ARGS)   # ARGS="--pinned --profile 20": see docs/BENCHMARKS.md

clean:
	rm -rf $(VENV) $(TOOLS) $(KSERVE) *.egg-info
