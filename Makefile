# Two commands on a fresh machine:  `make check` (runs `parity check minixception`) and `make test`.
# Each installs into .venv first if it is absent (CPU wheels; see constraints.txt for the measured versions).
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed
PY     := $(VENV)/bin/python

.PHONY: check test bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

check: $(STAMP)
	$(VENV)/bin/parity check minixception

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_check.py

clean:
	rm -rf $(VENV) parity-report
