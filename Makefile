# ClassifyCloud. `make run` = the embedded local stack; `make test` = the whole suite, from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TOOLS  := .venv-tools

.PHONY: install run test test-fast lint-infra bench clean system-tools

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
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

test: install $(TOOLS)/.installed system-tools
	PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

# The offline infrastructure checks alone (fmt, schema, checkov, shellcheck, systemd, cross-checks).
lint-infra: install $(TOOLS)/.installed system-tools
	PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -q -ra tests/test_infra_terraform.py tests/test_infra_crosscheck.py tests/test_infra_iam.py tests/test_infra_ami.py

bench: install
	$(PY) bench/worker_throughput.py
	$(PY) bench/autoscale_sim.py

clean:
	rm -rf $(VENV) $(TOOLS) *.egg-info
