# Two commands on a fresh machine:  `make check` (runs `parity check minixception`) and `make test`.
# Each installs into .venv first if it is absent (CPU wheels; see constraints.txt for the measured versions).
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed
PY     := $(VENV)/bin/python

.PHONY: check test bench install bytecode clean

# An editable install compiles nothing, and where PYTHONDONTWRITEBYTECODE=1 Python never writes what it
# compiles: every `parity` run would compile the project's modules again (0.25 s of a 2.5 s cached check,
# measured by importing them with and without __pycache__). Stale files are ignored by Python (mtime checked).
PACKAGES := parity reference_keras ported_torch weight_converters reports

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(MAKE) --no-print-directory bytecode
	touch $(STAMP)

install: $(STAMP)

check: $(STAMP)
	$(VENV)/bin/parity check minixception

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_check.py

bytecode:
	$(PY) -m compileall -q $(PACKAGES) > /dev/null

clean:
	rm -rf $(VENV) parity-report
	find $(PACKAGES) -name __pycache__ -prune -exec rm -rf {} +
