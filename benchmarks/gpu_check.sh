#!/usr/bin/env bash
# The GPU check of the "GPU fast path" issue: one short script for a session that is lent a GPU machine.
# That machine has torch, torchvision, pandas and seaborn, but not optuna, mlflow or pycocotools: before
# the call, in the repo root here, fetch their wheels for its Python 3.12 into .whl/ (ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl $(cat benchmarks/gpu_wheels.txt)
# and run it with `.whl` carried and a timeout of about 9 minutes. $OUT (or /tmp/gpu_check) gets summary.txt,
# results.jsonl (a row per JSON line a step printed, tagged with the step and its exit code, appended as each
# step ends, so a step or a script cut short keeps what was measured) and results.tgz: every step's log, the
# MLflow and Optuna stores (refreshed after each step; a killed sweep's finished trials and kept seeds resume).
# Each step has its own time limit and the script skips what would not fit: a late failure costs
# only its own step. SMOKE=1 DEVICE=cpu runs every step at toy sizes, to check the script itself.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}; mkdir -p "$out"
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-450}  # seconds for the whole script
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=.:${PYTHONPATH:-} TINYSSD_CACHE=${TINYSSD_CACHE:-/tmp/tinyssd-cache}
# The device image's torch lives in a read-only venv without bytecode: measured on 2026-11-26, every
# process there spent ~10 s compiling .py files. A writable bytecode cache makes that a one-time cost,
# as on any normal install; the import below fills it.
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
work=$(mktemp -d); logs=$work/logs; mkdir -p "$logs"
RESUME=${RESUME:-}
if [ "$RESUME" != "${RESUME%.db}" ]; then  # the optuna.db an earlier call's answers part left in $OUT
  cp "$RESUME" "$logs/optuna.db"
elif [ -n "${RESUME:-}" ]; then  # a results.tgz of an earlier call: its stores, so its studies and kept seeds resume
  tar xzf "$RESUME" -C "$logs" ./optuna.db ./mlflow.db 2>/dev/null || tar xzf "$RESUME" -C "$logs" ./optuna.db
fi
export MLFLOW_TRACKING_URI=sqlite:///$logs/mlflow.db
tiny=(); e2e_tiny=(); bench_tiny=(); conc_tiny=(); kernel_tiny=(); roofline_tiny=(); packfit_tiny=()
if [ "${SMOKE:-0}" = 1 ]; then
  tiny=(--set image_size=64 --set train_images=16 --set val_images=8 --set epochs=2 --set batch_size=8)
  e2e_tiny=(--e2e-set image_size=64 --e2e-set train_images=16 --e2e-set val_images=8 --e2e-set epochs=2
            --e2e-set batch_size=8 --sweep-trials-per-worker 1)
  conc_tiny=(--image-size 64 --batch-size 4 --steps 2 --rounds 1)
  kernel_tiny=(--image-size 64 --batch-size 4 --steps 2)
  packfit_tiny=(--image-size 64 --batch-size 4 --steps 1 --fit-images 16 --fit-epochs 1)
  roofline_tiny=(--image-size 64 --batch-size 4)
  bench_tiny=(--image-size 64 --batch-size 4 --steps 1 --rounds 1 --decode-rounds 1 --match-rounds 1 --threads 1)
fi
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$out/summary.txt"; }
left() { echo $((BUDGET - SECONDS)); }
step() {  # step NAME LIMIT_S COMMAND...: run if it fits in what is left, never longer than LIMIT_S
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt 20 ]; then log "SKIP $name: $(left) s left"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$logs/$name.log" 2>&1; local rc=$?
  log "$name: rc $rc in $((SECONDS - t0)) s"
  tail -n 2 "$logs/$name.log" | grep -v '^{' | sed 's/^/    /' | cut -c1-300 | tee -a "$out/summary.txt"
  python3 - "$logs/$name.log" "$name" "$rc" "$((SECONDS - t0))" >> "$out/results.jsonl" <<'EOF'
import json, sys
log, name, rc, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = []
for line in open(log, errors="replace"):
    try:
        rows.append(json.loads(line)) if line.startswith("{") else None
    except ValueError:  # a line cut by the kill
        pass
for row in rows or [None]:
    print(json.dumps({"step": name, "rc": rc, "seconds": seconds, "cut_short": rc in (124, 137), "row": row}))
EOF
  python3 - "$logs/$name.log" <<'EOF' 2>&1 | tee -a "$out/summary.txt"
import json, sys
lines = [l for l in open(sys.argv[1], errors="replace") if l.startswith("{")]
keys = ("val/map", "val/map50", "train/class_err", "train/bbox_mae", "train_images_per_s", "trial_seconds", "device",
        "reference_train_images_per_s", "train_speedup", "train_speedup_median", "reference_decode_ms", "decode_ms",
        "decode_speedup", "chapter_printed_examples_per_s", "project_warmup_s", "gpu", "torch", "n_complete",
        "n_failed", "best_value", "control_value",
        "first_capture_s", "later_capture_s_median", "best", "busy_ms", "eager_wall_ms", "graph_step_ms",
        "graph_images_per_s", "categories", "gflop_per_image", "mb_per_image", "saved_x2_mb_per_image", "gpus",
        "dataset", "image_size", "seeds", "mean", "seed_sd", "validation_sd", "end_of_training_sd", "test_sd",
        "paired_sd", "minimum_detectable_effect", "verdict", "delta", "delta_ci95", "seeds_needed", "scored_on")
if lines:
    d = json.loads(lines[-1])
    print("    " + json.dumps({k: round(d[k], 4) if isinstance(d[k], float) else d[k] for k in keys if k in d}))
    for name, v in d.get("variants", {}).items():
        print(f"    variant {name}: {v['images_per_s']:.0f} images/s, {v['train_speedup']:.2f}x, warm-up {v['warmup_s']:.1f} s")
    for row in d.get("rows", []) + d.get("fit", []):
        print("    " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    e2e = d.get("end_to_end", {})
    for part in [e2e.get("trial")] + e2e.get("sweeps", []):
        if part:
            print("    " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in part.items()}))
EOF
  [ "${SNAPSHOT:-1}" = 1 ] && cp "$out/summary.txt" "$logs/" && tar czf "$out/results.tgz" --exclude=mlartifacts -C "$logs" .
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch, torchvision, optuna, mlflow, pycocotools, cli, pipeline.training.run, pipeline.study.sweep; from mlflow.tracking import MlflowClient; print('torch', torch.__version__, 'vision', torchvision.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$out/summary.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$out/summary.txt"

# The parts, in the order of PARTS (default: all of them, in this order). A lease of 15 minutes holds
# about two calls of this script: pass the parts still missing, e.g. PARTS="profile sweeps".
part_tests() {  # the CUDA graph trains like eager steps (the GPU-only tests; on a CPU they skip)
  step tests 120 python3 -m pytest -q -p no:cacheprovider tests/training/test_step.py tests/training/test_validation.py \
    tests/model/test_pack.py; }
part_data() {  # the data sets, generated once into the cache (on all cores), not timed as part of a trial
  for dataset in ${DATASETS:-bananas}; do
    step "data_$dataset" 120 python3 cli.py data "$dataset" --preview "$work/preview_$dataset.png"
  done; }
part_bench() {  # training images/s of the chapter's loop and of the fast path with its switches, one run
  step bench 150 python3 benchmarks/run.py --device "$DEVICE" --rounds 3 --steps 30 \
    --variants "${BENCH_VARIANTS:-eager,bf16,bf16+eager,autotune}" "${bench_tiny[@]}" --json; }
part_profile() {  # one chapter-protocol trial end to end in a fresh process, under cProfile: where the host time goes
  step profile 90 python3 -m cProfile -o "$logs/trial.prof" cli.py train --profile chapter --device "$DEVICE" \
    --out-dir "$work/outputs" "${tiny[@]}" --json
  python3 -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('cumulative').print_stats(45)" \
    "$logs/trial.prof" > "$logs/profile_top.txt" 2>&1; }
part_trial() {  # the chapter trial through benchmarks/run.py --trial: default, bf16, no graph, autotuning
  for sets in ${TRIAL_SETS:-default precision=bf16 cuda_graph=false cudnn_benchmark=true}; do
    [ "$sets" = default ] && sets=""
    step "trial_${sets:-default}" 60 python3 benchmarks/run.py --device "$DEVICE" --no-micro --trial \
      ${sets:+--e2e-set $sets} "${e2e_tiny[@]}" --json
  done; }
part_sweeps() {  # focal-loss sweeps with K worker processes sharing the GPU: trials per hour
  local ks=${SWEEP_WORKERS:-1,2,4}; local parts=$(( $(tr -cd , <<< "$ks" | wc -c) + 1 ))
  step sweeps $(( parts * ${SWEEP_TIMEOUT:-100} + 30 )) python3 benchmarks/run.py --device "$DEVICE" --no-micro --sweep-workers "$ks" \
    --sweep-trials-per-worker "${SWEEP_TRIALS:-2}" --part-timeout "${SWEEP_TIMEOUT:-100}" "${e2e_tiny[@]}" --json; }
part_concurrency() {  # N trials' captured steps at once on one GPU: serial, streams, threads; capture costs
  step concurrency 90 python3 benchmarks/concurrent_steps.py --device "$DEVICE" --trials 1,2,4,8 --steps 40 \
    "${conc_tiny[@]}" --json
  step concurrency_autotune 45 python3 benchmarks/concurrent_steps.py --device "$DEVICE" --trials 1,2 --steps 40 \
    --autotune "${conc_tiny[@]}" --json; }
part_kernels() {  # where a step's GPU time goes, by kind of kernel (eager), against a graph replay's wall time
  for precision in ${KERNEL_PRECISIONS:-bf16 fp32}; do
    step "kernels_$precision" 45 python3 benchmarks/kernel_profile.py --device "$DEVICE" --precision "$precision" \
      "${kernel_tiny[@]}" --json
  done; }
part_packs() {  # seed packs of K (grouped and loop) against the fast path: summed images/s = seeds/h of training
  for precision in ${KERNEL_PRECISIONS:-bf16 fp32}; do
    step "packs_$precision" 75 python3 benchmarks/seed_packs.py --device "$DEVICE" --precision "$precision" \
      --k "${PACK_K:-1,2,4,8,16}" --steps 20 --rounds 3 "${kernel_tiny[@]}" --json
  done; }
part_packfit() {  # whole fits (validation included) of a pack of K against K single-seed fits, chapter size
  step packfit 150 python3 benchmarks/seed_packs.py --device "$DEVICE" --precision bf16 --k "${PACK_K:-1,8}" \
    --layouts grouped --steps 5 --rounds 1 --fit-images 1000 --fit-epochs "${PACK_FIT_EPOCHS:-5}" "${packfit_tiny[@]}" --json; }
part_compile() {  # what torch.compile adds on top of the graph (bf16), and what compiling costs
  step bench_compile 150 python3 benchmarks/run.py --device "$DEVICE" --rounds 2 --steps 30 --precision bf16 \
    --variants compile "${bench_tiny[@]}" --json; }
part_roofline() {  # the step's FLOPs and bytes counted on the GPU, and the GPU's bandwidth and matmul rate measured
  for precision in ${KERNEL_PRECISIONS:-bf16 fp32}; do
    step "roofline_$precision" 45 python3 benchmarks/roofline.py --device "$DEVICE" --precision "$precision" \
      "${roofline_tiny[@]}" --json
  done; }
part_noise() {  # issue 16: the noise budget of the chapter profile (256 px, 20 epochs), bananas and shapes
  for dataset in ${NOISE_DATASETS:-bananas shapes}; do  # generated first (all three splits), not timed as noise
    step "data_$dataset" 120 python3 cli.py data "$dataset" --preview "$work/preview_$dataset.png"
    step "noise_chapter_$dataset" "${NOISE_TIMEOUT:-150}" python3 cli.py noise --dataset "$dataset" --profile chapter \
      --seeds "${NOISE_SEEDS:-5}" --device "$DEVICE" "${tiny[@]}" --json
  done; }
part_precision() {  # issue 16: is bf16 equivalent to fp32 within ±0.01 mAP at the quick profile? Packs of 16 seeds
  step precision "${PRECISION_TIMEOUT:-240}" python3 cli.py sweep precision --profile quick --device "$DEVICE" \
    --storage "sqlite:///$logs/optuna.db" \
    --decide --delta 0.01 --seeds "${PRECISION_LOOK:-16}" --max-seeds "${PRECISION_MAX_SEEDS:-128}" "${tiny[@]}" --json; }
part_answers() {  # issue 26: each exercise's grid at the chapter's profile (and the quick one) against shared seeds
  # quick-winners first: the quick profile's four answers on bananas against one control, no search (a design;
  # --candidates and --trials do not apply to it), the cheapest way to the chapter's verdicts.
  # --candidates: every grid point gets its paired seeds (the transfer table compares each point's effect across
  # profiles); looks of ANSWERS_LOOK seeds as grouped packs until decided or ANSWERS_MAX_SEEDS. focal-loss searches
  # FOCAL_TRIALS trials (the quick study's 6: the same sampler seed draws the same settings). ANSWERS_PARALLEL
  # studies run at once, sharing the GPU and the store (the shared controls are trained once per profile). Measured
  # on the H200 on 2026-12-04: 10 at once made each trial 35-90 s against 9.5 s alone, so no more than 2. Each step
  # runs under ANSWERS_TIMEOUT (default: what is left of BUDGET less 30 s); the store is copied to $OUT/optuna.db
  # every 30 s and when the part ends, so a call cut short from outside keeps it too: RESUME=that optuna.db goes on.
  # (RESUME=that optuna.db restores the Optuna store only: the MLflow runs of the call before stay in its results.tgz.)
  local deadline=$(( SECONDS + ${ANSWERS_TIMEOUT:-$(( $(left) - 30 ))} )) sweeps=() tests=""
  snapshots & local snapshotter=$!
  if [ "${ANSWERS_WITH_TESTS:-0}" = 1 ]; then SNAPSHOT=0 part_tests & tests=$!; fi  # the CUDA graph's, beside them
  for profile in ${ANSWERS_PROFILES:-chapter}; do
    for variant in ${ANSWERS_VARIANTS:-quick-winners input-size-design loss-weights smooth-l1 negative-sampling focal-loss input-size}; do
      while [ "$(alive "${sweeps[@]}")" -ge "${ANSWERS_PARALLEL:-1}" ]; do sleep 1; done
      if [ $(( deadline - SECONDS )) -lt 20 ]; then log "SKIP ${profile}_$variant: $(( deadline - SECONDS )) s left"; continue; fi
      local trials=(); [ "$variant" = focal-loss ] && trials=(--trials "${FOCAL_TRIALS:-6}")
      SNAPSHOT=0 step "${profile}_$variant" $(( deadline - SECONDS )) python3 cli.py sweep "$variant" --profile "$profile" \
        --device "$DEVICE" --storage "sqlite:///$logs/optuna.db" --study-name "$variant-$profile-$DEVICE" \
        "${trials[@]}" --decide --seeds "${ANSWERS_LOOK:-5}" --max-seeds "${ANSWERS_MAX_SEEDS:-15}" \
        --delta "${ANSWERS_DELTA:-0.01}" --candidates "${ANSWERS_CANDIDATES:-6}" \
        ${ANSWERS_DATASET:+--dataset "$ANSWERS_DATASET"} "${tiny[@]}" --json &
      sweeps+=($!)
      sleep 2  # the first process creates the store's tables alone
    done
  done
  for pid in "${sweeps[@]}" $tests; do wait "$pid"; done
  kill "$snapshotter" 2>/dev/null; wait "$snapshotter" 2>/dev/null  # a snapshot under way ends first
  snapshot; }
alive() { local n=0 pid; for pid in "$@"; do kill -0 "$pid" 2>/dev/null && n=$((n + 1)); done; echo "$n"; }
snapshots() { trap 'exit 0' TERM; while true; do sleep 30 & wait $!; snapshot; done; }
snapshot() {  # the store as one consistent copy (SQLite's backup API), then the logs beside it in results.tgz; each
  # written beside its place and moved in, so a call killed mid-copy keeps the copy before
  python3 -c "import sqlite3, sys; a = sqlite3.connect(sys.argv[1], timeout=60); b = sqlite3.connect(sys.argv[2]); a.backup(b); b.close()" \
    "$logs/optuna.db" "$out/optuna.db.part" 2>/dev/null && mv "$out/optuna.db.part" "$out/optuna.db"
  cp "$out/summary.txt" "$logs/" 2>/dev/null
  tar czf "$out/results.tgz.part" --exclude=mlartifacts --exclude='optuna.db*' -C "$logs" . 2>/dev/null \
    && mv "$out/results.tgz.part" "$out/results.tgz"; }
# Not in the default list (they answer issue 16, not the fast path): PARTS="precision noise" BUDGET=560, in a call
# with a timeout of 600 s: the parts' limits add up to 780 s, but on 16 cores the data steps take seconds.
# PARTS="data answers" DATASETS="bananas shapes" answers issue 26: ANSWERS_VARIANTS picks the exercises, one step
# each, ANSWERS_PROFILES the profiles; RESUME=measurements/h200-answers.optuna.db goes on from the last call.
for part in ${PARTS:-tests data bench concurrency profile trial sweeps compile kernels packs packfit roofline}; do "part_$part"; done
log "done"
