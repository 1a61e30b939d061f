# vmportal: `make demo` runs the app, `make test` runs the tests. Both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: test demo venv vcsim services lint bench clean chaos

$(STAMP): pyproject.toml
	@bash tools/ensure-system.sh ldap-dev
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

vcsim:
	@bash tools/vcsim/build.sh

services:
	@bash tools/ensure-system.sh postgres redis chromium slapd oidc-provider nginx

# Held to mypy (pyproject's [tool.mypy]): the vSphere layer, jobs, core, every app's services,
# selectors, provisioning, access (first boot's) and pool manager, as files or packages;
# on-demand, VM tasks, tags, API tokens and auth, and the health page's facts.
TYPED := apps/vsphere apps/jobs apps/core $(sort $(wildcard $(foreach m,services selectors provisioning access manager,\
         apps/*/$(m).py apps/*/$(m)/__init__.py))) \
         apps/leases/ondemand.py apps/leases/vmtasks.py apps/leases/tags.py \
         apps/api/tokens.py apps/api/auth.py apps/pools/health.py apps/inventory/status.py apps/pools/autosize.py apps/pools/balance.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(TYPED:%/__init__.py=%)
	$(VENV)/bin/lint-imports

# ARGS passes options to pytest, e.g. make test ARGS="tests/test_foundation.py -k login"
test: venv services vcsim lint
	$(VENV)/bin/pytest $(ARGS)

demo: venv vcsim
	@bash tools/ensure-system.sh redis
	$(PY) manage.py migrate --no-input -v 0
	$(PY) manage.py demo

bench: venv services vcsim
	$(PY) bench/fill.py
	$(PY) bench/inventory.py
	@test ! -f bench/checkout.py || $(PY) bench/checkout.py
	$(PY) bench/pages.py
	$(PY) bench/memory.py

# Kill workers, stop vCenter and Redis, load the API; prove the invariants (README "After a
# crash or an outage"). ARGS passes options, e.g. make chaos ARGS="--only kills --kills 5"
chaos: venv services vcsim
	SECRET_KEY="$${SECRET_KEY:-vmportal-chaos-only-not-a-secret}" $(PY) tools/chaos/run.py $(ARGS)

clean:
	rm -rf $(VENV) var tools/vcsim/bin tools/oidc-provider/node_modules
