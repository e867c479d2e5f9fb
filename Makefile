# The study's two commands:
#   make repro [PROFILE=embedded|local|paper]   run the pipeline (creates the environment if missing)
#   make test                                    lint, unit tests, nbval on the committed executed notebooks
#   make bench                                   throughput benchmarks (measurements, not pass/fail)
PROFILE ?= embedded
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin

# Offline settings (see ../shared/STUDY_DESIGN.md); papermill and dvc need the venv's bin on PATH.
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE ?= 1
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := false
export DVC_NO_ANALYTICS := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_USAGE_STATS_ENABLED := 0
export MPLBACKEND := Agg
export PYDEVD_DISABLE_FILE_VALIDATION := 1

ifeq ($(PROFILE),embedded)
PIPELINE := dvc.yaml
else
PIPELINE := pipelines/$(PROFILE)/dvc.yaml
endif

# pyproject.toml's [tool.fedpeft] install-without-dependencies, installed with pip --no-deps.
define INSTALL_WITHOUT_DEPENDENCIES
import subprocess, sys, tomllib
pkgs = tomllib.load(open("pyproject.toml", "rb"))["tool"]["fedpeft"]["install-without-dependencies"]
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *pkgs])
endef
export INSTALL_WITHOUT_DEPENDENCIES

.PHONY: env repro test lint unit nbval bench clean-env
env: $(VENV)/.installed

# Re-installs when pyproject.toml (the one dependency list) changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -c "$$INSTALL_WITHOUT_DEPENDENCIES"
	touch $@

repro: env
	$(BIN)/dvc repro $(PIPELINE)

test: lint unit nbval

# ruff (pinned in pyproject.toml, configured under [tool.ruff]) over the library, the tests and the benchmarks.
lint: env
	$(BIN)/ruff check lib tests benchmarks

unit: env
	$(BIN)/python -m pytest tests

# Re-executes each committed executed notebook of the embedded profile and compares its headline cells
# (marked NBVAL_CHECK_OUTPUT). Outputs go to a scratch folder, never over the committed reports.
nbval: env
	FEDPEFT_REPORTS_DIR=$$(mktemp -d) $(BIN)/python -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider reports/embedded/*/*.ipynb

# Benchmarks measure; they never pass or fail. Results: reports/benchmarks/.
bench: env
	$(BIN)/python benchmarks/eurosat_cnn_throughput.py
	$(BIN)/python benchmarks/lora_aggregation_speed.py
	$(BIN)/python benchmarks/causal_lm_throughput.py
	$(BIN)/python benchmarks/trainer_overhead.py

clean-env:
	rm -rf $(VENV)
