# jaxhybrid: the two commands.
#   make demo   FFN vs GFFN on the embedded sklearn digits (offline, CPU, a few minutes)
#   make test   the test suite on 8 fake CPU devices
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUNS   ?= runs/demo
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: demo test install benchmarks clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=$(RUNS)/ffn --config.joint_weight=0
	$(PY) -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=$(RUNS)/gffn --config.joint_weight=1
	$(PY) -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=$(RUNS)/ffn --config.joint_weight=0 --mode=eval --checkpoint=latest
	$(PY) -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=$(RUNS)/gffn --config.joint_weight=1 --mode=eval --checkpoint=latest
	$(PY) -m jaxhybrid.compare $(RUNS)/ffn $(RUNS)/gffn --names FFN,GFFN --out $(RUNS)/comparison.md
	@echo
	@echo "Run directories: $(RUNS)/ffn  $(RUNS)/gffn"
	@echo "Reports:         $(RUNS)/ffn/eval/*/report.md  $(RUNS)/gffn/eval/*/report.md"
	@echo "Comparison:      $(RUNS)/comparison.md"

test: install
	$(PY) -m pytest -q

benchmarks: install
	$(PY) benchmarks/gffn_overhead.py
	$(PY) benchmarks/metrics_speed.py

clean:
	rm -rf $(RUNS) .jax_cache
