# ClassifyCloud. `make run` = the embedded local stack; `make test` = the whole suite, from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TOOLS  := .venv-tools

.PHONY: install run test test-fast lint-infra bench clean

$(VENV)/.installed: setup.cfg pyproject.toml requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	touch $@

# checkov pins many packages of its own: it lives in a separate venv.
$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade pip
	$(TOOLS)/bin/pip install -q 'checkov>=3.2'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/classifycloud up

test: install $(TOOLS)/.installed
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

# The offline infrastructure checks alone (fmt, schema, checkov, shellcheck, systemd, cross-checks).
lint-infra: install $(TOOLS)/.installed
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -q -ra tests/test_infra_terraform.py tests/test_infra_crosscheck.py tests/test_infra_iam.py tests/test_infra_ami.py

bench: install
	$(PY) bench/worker_throughput.py
	$(PY) bench/autoscale_sim.py

clean:
	rm -rf $(VENV) $(TOOLS) *.egg-info
