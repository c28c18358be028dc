#!/usr/bin/env bash
# The GPU check for the "GPU fast path" issue, prepared as one short script for a session that is
# lent a GPU machine (it has torch, torchvision, pandas and seaborn, but not optuna, mlflow or
# pycocotools). Before the call, in the repo root here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pycocotools==2.0.11 optuna==5.0.0 mlflow-skinny==3.17.2 ...   # plus their missing needs
# then run it with `.whl` carried, with a timeout that leaves room to rerun it. It writes to $OUT.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}; mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=.:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# 1. training images/s and decode: the chapter's reference loop against the project, same GPU, same run
python benchmarks/run.py --device cuda --json 2>&1 | tee "$out/bench_fp32.txt"
python benchmarks/run.py --device cuda --precision bf16 --json 2>&1 | tee "$out/bench_bf16.txt"
# 2. one chapter-protocol trial end to end: data, 20 epochs, COCO evaluation, MLflow logging
start=$(date +%s.%N)
python cli.py train --profile chapter --device cuda --json 2>&1 | tail -3 | tee "$out/chapter_trial.txt"
echo "chapter trial wall s: $(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$out/chapter_trial.txt"
# 3. focal-loss sweep throughput at K workers sharing the GPU (8 trials each, chapter profile)
for k in 1 2 4; do
  start=$(date +%s.%N)
  python cli.py sweep focal-loss --profile chapter --device cuda --trials 8 --workers $k --no-prune \
    --study-name "gpu-k$k" --json 2>&1 | tail -1 > "$out/sweep_k$k.json"
  echo "K=$k: 8 trials in $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a "$out/sweeps.txt"
done
