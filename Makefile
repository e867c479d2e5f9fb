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

PROFILES := embedded local paper
ifeq ($(filter $(PROFILE),$(PROFILES)),)
$(error PROFILE=$(PROFILE) is not a profile of this study; use one of: $(PROFILES))
endif

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

# requirements.lock: every package of the environment with its hashes, resolved from pyproject.toml by `make lock`
# (uv, pinned here, resolves in seconds; pip-compile downloads every wheel to hash it). tests/test_environment.py
# fails when pyproject.toml changed without the lock. uv also installs the lock: the same hash-checked files as
# `pip install --require-hashes`, in about 55 s where pip took 150 s (parallel downloads and unpacking, files linked
# from uv's cache). Like pip, it compiles every module's bytecode at install (--compile-bytecode): where
# PYTHONDONTWRITEBYTECODE is set (these machines set it), a module without it is compiled again in every process
# that imports it, which made a fresh `make test` take 15 min instead of 9. uv lives in a venv of its own, $(TOOLS).
LOCK := requirements.lock
UV_VERSION := 0.13.9
TOOLS := .venv-tools
UV := $(TOOLS)/bin/uv

.PHONY: env lock pipelines repro regenerate test lint unit nbval bench dry-run site site-deps site-screenshots paper paper-deps clean-env clean-deployments
env: $(VENV)/.installed

# Re-installs when the lock changes: the locked set with hash checking, then the project itself without
# dependencies, then [tool.fedpeft] install-without-dependencies.
$(VENV)/.installed: $(LOCK) pyproject.toml | $(UV)
	$(PYTHON) -m venv $(VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "$$INSTALL_WITHOUT_DEPENDENCIES"
	touch $@

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Re-resolves the lock from pyproject.toml, keeping the locked versions that still satisfy it (uv prefers the
# pins of the file it writes); `make lock UPGRADE=--upgrade` moves everything to the newest allowed versions.
lock: | $(UV)
	cp $(LOCK) $(LOCK).tmp 2>/dev/null || true
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11.5 --generate-hashes --no-header --quiet $(UPGRADE) -o $(LOCK).tmp
	$(PYTHON) tools/lockfile.py --stamp $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# DVC through fedpeft.core.supervise: it ends with make, even when make is killed with SIGKILL.
repro: env
	$(BIN)/python -m fedpeft.core.supervise $(BIN)/dvc repro $(PIPELINE)

# Render dvc.yaml and pipelines/*/dvc.yaml from the run plans in params/ and the modules each stage imports. Needed
# after adding or removing runs (seeds, partitions) or modules; tests/test_environment.py fails until it is done.
pipelines: env
	$(BIN)/python -m fedpeft.experiments.pipelines

# Every run and report of a profile afresh, one process per experiment (`dvc repro -f` starts one per run), then
# the result recorded in the profile's dvc.lock. For the embedded profile, whose runs take seconds.
regenerate: env
	$(BIN)/python -m fedpeft.reporting.notebook_stage --profile $(PROFILE) --all
	$(BIN)/python -m fedpeft.reporting.summary --profile $(PROFILE)
	$(BIN)/python -m fedpeft.experiments.site --profile $(PROFILE)
	$(BIN)/dvc commit -f $(PIPELINE)

test: lint unit nbval

# ruff (pinned in pyproject.toml, configured under [tool.ruff]) over the library, the tests and the benchmarks.
lint: env
	$(BIN)/ruff check lib tests benchmarks

unit: env
	$(BIN)/python -m pytest tests

# Re-executes each committed executed notebook of the embedded profile into a scratch folder (never over the
# committed reports) and compares its headline cells (marked NBVAL_CHECK_OUTPUT: exact-by-construction values such as
# counts, bytes and table structure); then compares every regenerated metric with the committed one within the
# tolerances of tests/metric_tolerances.yaml (trained floats differ between CPUs).
nbval: env
	scratch=$$(mktemp -d) && \
	FEDPEFT_REPORTS_DIR=$$scratch FEDPEFT_RESULTS_DIR=$$scratch/results $(BIN)/python -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p tests.nbval_stdout_only -p no:cacheprovider reports/embedded/*/*.ipynb && \
	FEDPEFT_FRESH_REPORTS=$$scratch $(BIN)/python -m pytest -p no:cacheprovider tests/test_regeneration.py

# Benchmarks measure; they never pass or fail. Results: reports/benchmarks/.
bench: env
	$(BIN)/python benchmarks/eurosat_cnn_throughput.py
	$(BIN)/python benchmarks/lora_aggregation_speed.py
	$(BIN)/python benchmarks/causal_lm_throughput.py
	$(BIN)/python benchmarks/trainer_overhead.py

# The paper profile's architectures at full size with random weights, one federated round each, on CUDA when
# present (device auto): memory and step time before a GPU is spent on the real runs. Writes reports/paper/dry_run.md.
dry-run: env
	$(BIN)/python benchmarks/paper_dry_run.py --device auto

# The offline static site of a profile (also the pipeline's last stage, rebuilt when a report changes):
# build/site/$(PROFILE)/index.html. Built from the reports and records alone, in seconds; opens from disk with no
# request to any other host (tests/test_site.py checks it).
site: env
	$(BIN)/python -m fedpeft.experiments.site --profile $(PROFILE)

# Debian's headless Chromium, for tests/test_site.py and the screenshots (root and apt only; the test skips otherwise).
site-deps:
	command -v chromium >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)

# Screenshots of the built site's front page and one experiment page, committed in site/screenshots/.
site-screenshots: site site-deps
	mkdir -p site/screenshots
	for page in index weeds_qlora_federated; do \
	  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-background-networking \
	    --disable-component-update --disable-sync --host-resolver-rules="MAP * ~NOTFOUND" --window-size=1280,1800 \
	    --screenshot=site/screenshots/$(PROFILE)-$$page.png file://$(CURDIR)/build/site/$(PROFILE)/$$page.html 2>/dev/null; \
	done

# The paper (PDF) of a profile, assembled from the reports' booktabs tables and PDF figures and built offline with
# Debian's TeX Live: reports/$(PROFILE)/paper.pdf (its sources in build/paper/$(PROFILE)/).
paper: env paper-deps
	$(BIN)/python -m fedpeft.experiments.paper --profile $(PROFILE)

paper-deps:
	command -v latexmk >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended lmodern)

clean-env:
	rm -rf $(VENV) $(TOOLS)

# What a SIGKILLed Deployment Engine run left (processes, namespaces, links, job folders); every run does this at start.
clean-deployments: env
	$(BIN)/python -m fedpeft.federated.deployment.cleanup
