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

# CPU kernel families the numerics-marked tests are rerun under after the whole suite (see .ci/pytest-numerics)
NUMERICS_FAMILIES ?= default avx2

# pytest exits 5 when it selected no tests: reported as an error, never a silent pass
test: $(VENV)/.extras
	$(PY) -m pytest -q -n 2 --dist loadfile; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc
	bash .ci/pytest-numerics $(PY) $(NUMERICS_FAMILIES) -- -q -n 2 --dist loadfile

bench: venv
	$(PY) benchmarks/signals.py
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/inversion.py

clean:
	rm -rf $(VENV) runs .pytest_cache
