#!/usr/bin/env bash
# Issue 10's table on one CUDA GPU, in one prepared pass (a lent GPU is short-lived):
#   bash benchmarks/gpu_table.sh OUTDIR [BUDGET_SECONDS] [WORKERS]
# Steps, most important first; each runs under `timeout` and is skipped once the budget is spent:
#   Learner vs a plain loop with fused AdamW for resnet50 and the CNN in bf16 (train_throughput.py),
#   the default job and its evaluation, the optimizer step over resnet50 (optim_step.py), eager vs
#   --compile (compile_step.py), the data stages per worker (data_throughput.py, 1 and W workers),
#   the other precision / channels-last rows, the CUDA-side test files, the user's resnet50 --ema 0.99
#   command, resnet18, the timm families suite, and `compare` over the runs made. Every line goes to OUTDIR/log.txt; run summaries
#   (no weights) to OUTDIR/runs.tgz. Uses `python3 -m mlns_fast` from the repository root.
set -u
OUT=${1:?usage: gpu_table.sh OUTDIR [BUDGET_SECONDS] [WORKERS]}
BUDGET=${2:-480}
W=${3:-8}
mkdir -p "$OUT"
R=$OUT/runs
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" MLNS_FAST_CACHE=${MLNS_FAST_CACHE:-/tmp/mlns-cache}
PY=${PYTHON:-python3}
M=("$PY" -m mlns_fast)
T0=$(date +%s)

step() {  # step NAME LIMIT_S CMD...: run CMD under a limit, print its wall time and exit status
    local name=$1 lim=$2; shift 2
    local left=$((BUDGET - ($(date +%s) - T0)))
    if ((left < 15)); then echo "=== SKIP $name (budget spent)"; return; fi
    ((lim > left)) && lim=$left
    echo "=== $name (limit ${lim}s)"
    local t=$(date +%s%N)
    timeout "$lim" "$@"
    local rc=$?
    echo "=== $name rc=$rc wall=$((($(date +%s%N) - t) / 1000000)) ms"
}

{
    echo "=== env"; nvidia-smi -L; "$PY" -c "import torch, timm, fastai; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| timm', timm.__version__, '| fastai', fastai.__version__, '| bf16', torch.cuda.is_bf16_supported())"; nproc
    # issue 21's targets first: Learner / plain loop, the default run's training time, the optimizer step
    for a in "resnet50 --precision bf16" "mlns_cnn --precision bf16"; do
        step "throughput $a" 90 "$PY" benchmarks/train_throughput.py --workers "$W" --batches 60 --arch $a
    done
    step default 150 "${M[@]}" train --quiet --workers "$W" --name default --runs-dir "$R"
    step default-eval 40 "${M[@]}" evaluate default --runs-dir "$R"
    step "optim resnet50" 60 "$PY" benchmarks/optim_step.py --arch resnet50 --steps 20
    step "compile mlns_cnn" 120 "$PY" benchmarks/compile_step.py --arch mlns_cnn --steps 30
    step "data stages" 90 "$PY" benchmarks/data_throughput.py --batches 40 --workers 1 "$W"
    step "compile resnet50" 150 "$PY" benchmarks/compile_step.py --arch resnet50 --steps 20
    for a in "resnet50 --precision fp16" "resnet50 --precision bf16 --no-channels-last" \
             "mlns_cnn --precision fp16" "mlns_cnn --precision bf16 --no-channels-last"; do
        step "throughput $a" 60 "$PY" benchmarks/train_throughput.py --workers "$W" --batches 60 --arch $a
    done
    step tests 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_train.py tests/test_callbacks.py
    step r50-ema 200 "${M[@]}" train --quiet --workers "$W" --arch resnet50 --ema 0.99 --name r50-ema --runs-dir "$R"
    step r50-ema-eval 40 "${M[@]}" evaluate r50-ema --runs-dir "$R"
    step r18 150 "${M[@]}" train --quiet --workers "$W" --arch resnet18 --name r18 --runs-dir "$R"
    step families 240 "${M[@]}" suite experiments/timm_families.toml --runs-dir "$R/families"
    step compare 30 "${M[@]}" compare --runs-dir "$R"
    echo "=== total $(($(date +%s) - T0)) s"
} 2>&1 | tee "$OUT/log.txt"
tar czf "$OUT/runs.tgz" --exclude='*.safetensors' --exclude='*.pth' --exclude='*.pt' --exclude='*.onnx' -C "$OUT" runs 2>/dev/null
rm -rf "$R"
