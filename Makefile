# Two commands do everything on a fresh machine (Python 3.11): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
CNN_STUDY_DIR ?= runs/cnn_study

# glibc's malloc hands XLA's large CPU buffers back to the kernel and faults them in again at the
# next step; these keep them in the heap (less system time; not yet benchmarked; results are
# identical). Read by glibc at process start only; a no-op elsewhere.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296
export MALLOC_TOP_PAD_ ?= 268435456

.PHONY: install data compilers demo cnn-study check test test-slow test-min-versions mutation-test mutmut benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

data: install
	bash scripts/get_fashion_mnist.sh $(PY)

# Single model vs deep ensemble (M = 4) on offline Fashion-MNIST; tables in $(DEMO_DIR)/*/results.md.
demo: data
	$(PY) -m experiments.train --config experiments/configs/single.py --workdir $(DEMO_DIR)/single
	$(PY) -m experiments.train --config experiments/configs/deep_ensemble.py --workdir $(DEMO_DIR)/deep_ensemble
	$(PY) -m experiments.report $(DEMO_DIR)/single $(DEMO_DIR)/deep_ensemble | tee $(DEMO_DIR)/comparison.md

# README "The papers' claims at CNN scale": the three families' comparisons, one after another, in one
# workdir (a run two families share trains once; an interrupted study resumes where it stopped).
cnn-study: data
	for family in freetickets subnetworks boosting; do \
	  start=$$(date +%s); \
	  $(PY) -m experiments.compare --comparison experiments/comparisons/cnn_$${family}_fashion_mnist.py \
	      --workdir $(CNN_STUDY_DIR) || exit 1; \
	  echo "cnn-study: $$family took $$(( $$(date +%s) - start )) s" | tee -a $(CNN_STUDY_DIR)/times.txt; \
	done

# TPU and GPU compilers for the pre-flight tests, pinned to the installed jax, in a folder of their
# own (scripts/install_compilers.py says why not in the environment)
COMPILERS := $(VENV)/compilers
compilers: $(COMPILERS)/.installed

$(COMPILERS)/.installed: $(VENV)/.installed scripts/install_compilers.py
	$(PY) scripts/install_compilers.py $(COMPILERS)
	touch $@

# Lint (seconds): pyflakes' checks, import order, the two-space format (config: setup.cfg, .yapfignore)
LINTED := ensembles experiments tests scripts benchmarks
check: install
	$(VENV)/bin/flake8 --config setup.cfg $(LINTED)
	$(PY) scripts/check_imports.py $$(find $(LINTED) -name '*.py' | sort)
	$(VENV)/bin/yapf --diff --recursive $(LINTED)

test: check data compilers
	$(PY) -m pytest -n 2 -q

# The lowest versions setup.cfg declares, in their own environment (.venv-min), on a part of the suite
test-min-versions: install
	$(PY) scripts/check_min_versions.py

test-slow: data compilers
	$(PY) -m pytest -q -m slow

# Applies each curated plausible bug (scripts/mutations.py) to a scratch copy and runs the tests
# that must catch it; fails if any survives. Not part of `make test`.
mutation-test: data
	$(PY) scripts/mutation_test.py

# mutmut's generic mutations of ensembles/metrics.py (config: [mutmut] in setup.cfg); survivors listed.
mutmut: data
	$(PY) -m pip install -q "mutmut>=3.8,<4"
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2 || true
	$(VENV)/bin/mutmut results --all true | awk '{print $$NF}' | sort | uniq -c

clean:
	rm -rf $(VENV) runs *.egg-info
