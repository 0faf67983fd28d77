# dispatch: the two commands of the README, plus lint and testbed shortcuts.
#
#   make demo    install, bring the testbed up, run examples/quickstart.py against it
#   make test    install, bring the testbed up, run the whole suite (testbed required)
#   make lint    ruff check + mypy --strict
#
# On a fresh Debian 12 machine run these as root (the testbed installs Debian packages and
# starts daemons). VENV and PYTHON may be overridden: `make VENV=/tmp/ci-venv test`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hpc-dispatch-installed
PYTEST_ARGS ?=
TESTBED := scripts/testbed

.PHONY: all install demo test lint testbed-up testbed-down testbed-status clean-venv

all: test

install: $(STAMP)

# A venv with the project installed editable with its dev extra. Debian's python3 needs
# the python3-venv package for `-m venv`; install it when we are root and it is missing.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: $(PYTHON) must be Python >= 3.11" >&2; exit 1; }
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
		rm -rf $(VENV); \
		if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
			rm -rf $(VENV); \
			if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
				echo "installing python3-venv"; \
				DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
				DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
			fi; \
			$(PYTHON) -m venv $(VENV); \
		fi; \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# `up` needs root; as another user, just check that someone brought it up.
testbed-up:
	@if [ "$$(id -u)" = 0 ]; then $(TESTBED) up; else $(TESTBED) status; fi

testbed-down:
	$(TESTBED) down

testbed-status:
	$(TESTBED) status

demo: install testbed-up
	eval "$$($(TESTBED) env)" && $(PY) examples/quickstart.py

test: install testbed-up
	eval "$$($(TESTBED) env)" && DISPATCH_REQUIRE_TESTBED=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict

clean-venv:
	rm -rf $(VENV)
