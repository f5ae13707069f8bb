# Two commands: `make demo` and `make test`. Both create/refresh .venv when pyproject changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints-cpu.txt
STAMP := $(VENV)/.installed

.PHONY: install test demo clean bench gpu-wheels

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(BIN)/python -m pytest -q tests

# DeepSpeed compiles its CPU comm op once per extensions dir: keep it with this venv (not in a
# ~/.cache shared with other venvs, where each one would rebuild it).
demo: $(STAMP)
	DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} TORCH_EXTENSIONS_DIR=$${TORCH_EXTENSIONS_DIR:-$(abspath $(VENV))/torch_extensions} \
		$(BIN)/python -m launch.demo

bench: $(STAMP)
	$(BIN)/python bench/data.py
	$(BIN)/python bench/model.py
	$(BIN)/python bench/train.py

# The git-ignored wheelhouse bench/gpu_check.sh installs from on the GPU check machine (no network
# there): only what its Python lacks, for cp312 manylinux x86_64 (docs/benchmarks.md "GPU").
gpu-wheels: $(STAMP)
	PYTHON=$(BIN)/python bash bench/gpu_wheels.sh

clean:
	rm -rf $(VENV) data/demo runs
