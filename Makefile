# jaxhybrid: the two commands.
#   make demo   FFN vs GFFN on the embedded sklearn digits (offline, CPU, a few minutes)
#   make test   the test suite on 8 fake CPU devices
# and the newest end of the supported range (CI runs both ends, .ci/run):
#   make test-newest   the suite on Python 3.12 in .venv312 with the newest jax/flax/orbax,
#                      pinned exactly in .ci/constraints-newest.txt, less the minute-long
#                      training runs (marker training_run; `make test` runs them)
#   make test-slurm    a real one-node SLURM cluster on localhost (launch/slurm_local/setup.sh,
#                      as root: installs SLURM and munge with apt-get if missing), then
#                      tests/test_slurm.py against it; fails, never skips, without SLURM
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
VENV_NEWEST ?= .venv312
PY_NEWEST   := $(VENV_NEWEST)/bin/python
NEWEST      := .ci/constraints-newest.txt
VERSIONS    := -c "import sys, jax, flax, optax, orbax.checkpoint as o; print(f'Python {sys.version.split()[0]}, jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, orbax-checkpoint {o.__version__}')"
# Python 3.12 for the newest end: python3.12 on PATH if it runs, else pyenv's newest 3.12.
PYTHON_NEWEST ?= $(shell for p in python3.12 "$$(pyenv root 2>/dev/null)/versions/$$(pyenv latest 3.12 2>/dev/null)/bin/python3.12"; do "$$p" -c "" 2>/dev/null && { command -v "$$p"; break; }; done)
RUNS   ?= runs/demo
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: demo test install test-newest install-newest test-slurm benchmarks clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

$(VENV_NEWEST)/bin/python:
	@test -n "$(PYTHON_NEWEST)" || { echo "error: no Python 3.12 found (python3.12 on PATH or pyenv's 3.12); set PYTHON_NEWEST=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON_NEWEST) -m venv $(VENV_NEWEST)
	$(PY_NEWEST) -m pip install --quiet --upgrade pip

$(VENV_NEWEST)/.installed: pyproject.toml $(NEWEST) | $(VENV_NEWEST)/bin/python
	$(PY_NEWEST) -m pip install --quiet -c $(NEWEST) -e ".[test]"
	touch $@

install-newest: $(VENV_NEWEST)/.installed

demo: install
	@echo "FFN (λ=0) vs GFFN (λ=1) on sklearn digits: a summary per command; full logs in $(RUNS)/*.log"
	$(PY) -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=$(RUNS)/ffn --config.objective.joint_weight=0 --log_file=$(RUNS)/ffn.log
	$(PY) -m jaxhybrid.main --config=configs/gffn.py:digits --workdir=$(RUNS)/gffn --config.objective.joint_weight=1 --log_file=$(RUNS)/gffn.log
	$(PY) -m jaxhybrid.main --workdir=$(RUNS)/ffn --mode=eval --checkpoint=latest --log_file=$(RUNS)/ffn.log
	$(PY) -m jaxhybrid.main --workdir=$(RUNS)/gffn --mode=eval --checkpoint=latest --log_file=$(RUNS)/gffn.log
	$(PY) -m jaxhybrid.tools.compare $(RUNS)/ffn $(RUNS)/gffn --names FFN,GFFN --out $(RUNS)/comparison.md
	@echo
	@echo "Run directories: $(RUNS)/ffn  $(RUNS)/gffn  (logs: $(RUNS)/ffn.log  $(RUNS)/gffn.log)"
	@echo "Reports:         $(RUNS)/ffn/eval/<step>/<eval_id>/report.md (final_metrics.json's eval_dir: the selected checkpoint's)"
	@echo "Comparison:      $(RUNS)/comparison.md"

test: install
	@$(PY) $(VERSIONS)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-newest: install-newest
	@$(PY_NEWEST) $(VERSIONS)
	$(PY_NEWEST) -m pytest -q -n 2 --dist loadfile -m "not training_run and not slow_smoke"

test-slurm: install
	launch/slurm_local/setup.sh
	SLURM_CONF=$${JAXHYBRID_SLURM_DIR:-/var/tmp/jaxhybrid-slurm}/slurm.conf JAXHYBRID_REQUIRE_SLURM=1 \
	  $(PY) -m pytest -q tests/test_slurm.py

benchmarks: install
	$(PY) benchmarks/gffn_overhead.py
	$(PY) benchmarks/metrics_speed.py

clean:
	rm -rf $(RUNS) .jax_cache
