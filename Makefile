# fedleak: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= runs/demo

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: this version is the CPU build here (others pull gigabytes of CUDA)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

# optional extras exercised by the test suite (Flower simulation, Ray sweeps)
$(VENV)/.extras: $(VENV)/.installed
	$(PIP) install -q -e ".[dev,flower,ray]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fedleak run digits-quick --out $(OUT)

test: $(VENV)/.extras
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: venv
	$(PY) benchmarks/signals.py
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/inversion.py

clean:
	rm -rf $(VENV) runs .pytest_cache
