#!/usr/bin/env bash
# Every GPU check in one run, for a machine with an NVIDIA GPU, PyTorch with CUDA and no
# registry. Build here first (needs the CUDA toolchain, see ../shared/docs/cuda.md):
#   scripts/gpu-check.sh --build      # writes gpu/ (ignored by git): xz-compressed CUDA binaries
# then, on the GPU machine, in the repository root with gpu/ beside it:
#   scripts/gpu-check.sh OUTDIR       # everything below, most needed first, within the budget
#   scripts/gpu-check.sh OUTDIR tests # ldd and the CUDA tests only
#   scripts/gpu-check.sh OUTDIR precision # bf16 and real sizes against PyTorch (f32, autocast,
#                                         # channels-last), with peak memory
#   scripts/gpu-check.sh OUTDIR inference # inference (f32 and bf16) against PyTorch, and the
#                                         # steps with FP32-only convolutions
#   scripts/gpu-check.sh OUTDIR presets # the GTA5 -> Cityscapes presets' time per step
#   scripts/gpu-check.sh OUTDIR demo    # demo --quick and the whole demo on the GPU
#   scripts/gpu-check.sh OUTDIR profile # per-call host cost, phases of a VGG step, VGG benches
# The whole run stops itself after SEG_GPU_BUDGET seconds (default 560): a step starts only
# with at least 20 s left and gets at most what is left, so the run ends inside one 600 s call
# of a lent machine, with what it measured so far written. In the default order: the CUDA tests,
# bf16 and real sizes, inference, FP32-only convolutions, the presets, the demos, then the
# checks without cuDNN, the host profile and a second round of the VGG steps.
# Results: OUTDIR/summary.txt (the lines that matter) and OUTDIR/logs.txt (every step's whole
# output, one after another): two files, whatever the number of steps.
# `python3 scripts/gpu_table.py OUTDIR/summary.txt` turns the summary into the docs' tables.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--build" ]; then
  set -e
  T=target/cuda
  # One cargo invocation, so candle's CUDA kernels are compiled once for all three.
  cargo test --release -p seg-nn -p seg-adapt -p seg-benches --tests --benches --no-run \
    --features seg-nn/cuda,seg-adapt/cuda,seg-benches/cuda --target-dir $T --message-format json > $T/artifacts.json
  cargo build --release -p seg-fcn -p seg-nn --example vgg_step --example cuda_overhead --features seg-nn/cuda \
    --target-dir $T --message-format json >> $T/artifacts.json
  pick() { # the executable of target $1 of package $2; $3 = test (a test harness) or bin
    python3 -c 'import json,sys
for l in open(sys.argv[4]):
    m=json.loads(l)
    if (m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]==sys.argv[1]
            and "/"+sys.argv[2]+"#" in m["package_id"] and m["profile"]["test"]==(sys.argv[3]=="test")):
        print(m["executable"])' "$1" "$2" "$3" $T/artifacts.json | tail -1
  }
  NN=$(pick it seg-nn test); AD=$(pick it seg-adapt test); BE=$(pick train_step benches test)
  BIN=$(pick seg-adapt seg-adapt bin); STEP=$(pick vgg_step seg-fcn bin)
  OVER=$(pick cuda_overhead seg-nn bin)
  rm -rf gpu && mkdir gpu
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!gpu' || echo +changes)" > gpu/commit
  for pair in "$BIN:seg-adapt" "$NN:test-seg-nn" "$AD:test-seg-adapt" "$BE:bench-train-step" "$STEP:vgg-step" "$OVER:cuda-overhead"; do
    src=${pair%%:*}; dst=${pair##*:}
    strip -o "gpu/$dst" "$src" && xz -6 -T2 "gpu/$dst"
  done
  ls -la gpu
  du -sh gpu
  exit 0
fi

OUT=${1:?usage: scripts/gpu-check.sh OUTDIR [tests|precision|inference|presets|demo|profile] | --build}
MODE=${2:-all}
mkdir -p "$OUT"
S="$OUT/summary.txt"
LOGS="$OUT/logs.txt"
L=$(mktemp -d)  # one log per step, appended to $LOGS as each step ends
START=$(date +%s)
BUDGET=${SEG_GPU_BUDGET:-560}
say() { echo "$*" | tee -a "$S"; }
say "date: $(date -u +%FT%TZ), mode: $MODE, budget: $BUDGET s, binaries of commit $(cat gpu/commit 2>/dev/null || echo unknown)"
say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
say "torch: $(python3 -c 'import torch;print(torch.__version__, torch.version.cuda)' 2>&1)"
B=/tmp/seg-gpu && mkdir -p $B
for f in gpu/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; chmod +x "$B/$(basename "$f" .xz)"; done
NV=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia
# cuDNN is opened at run time (seg_cuda::cudnn), from the same Python environment as PyTorch's.
export LD_LIBRARY_PATH="$NV/cu13/lib:$NV/cublas/lib:$NV/cuda_runtime/lib:$NV/curand/lib:$NV/cudnn/lib:${LD_LIBRARY_PATH:-}"
say "cudnn: $(ls $NV/cudnn/lib/libcudnn.so.* $NV/cu13/lib/libcudnn.so.* 2>/dev/null | tr '\n' ' ')"
ldd $B/seg-adapt > "$L/ldd.log" 2>&1
if grep -q "not found" "$L/ldd.log"; then say "ldd: MISSING $(grep 'not found' "$L/ldd.log" | tr '\n' ' ')"; else say "ldd: all libraries found"; fi
export SEG_ADAPT_BIN=$B/seg-adapt
export PYTHONUNBUFFERED=1

# step NAME LIMIT COMMAND...: runs COMMAND with its output in $L/NAME.log, for at most LIMIT
# seconds and at most what is left of the budget (skipped with under 20 s left); rc 124: timed
# out, rc 125: skipped.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((START + BUDGET - $(date +%s) - 15))
  if [ "$left" -lt 20 ]; then
    say "$name: skipped ($left s of the budget left)"
    : > "$L/$name.log"
    return 125
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  local t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" > "$L/$name.log" 2>&1  # KILL 10 s after TERM if still there
  local rc=$?
  say "$name: rc=$rc ($(python3 -c "print(round($(date +%s.%N)-$t0,1))") s, limit $limit s)"
  { echo "===== $name (rc=$rc) ====="; cat "$L/$name.log"; } >> "$LOGS"
  return $rc
}
log() { cat "$L/$1.log"; }

export SEG_BENCH_DEVICE=cuda  # the benches and vgg-step run on the GPU
tests() {
  step test-seg-nn 90 $B/test-seg-nn cuda --test-threads 1
  log test-seg-nn | grep -E "^test |test result|panicked|left:|right:" | tee -a "$S"
  step test-seg-adapt 120 $B/test-seg-adapt cuda --test-threads 1
  log test-seg-adapt | grep -E "^test |test result|panicked" | tee -a "$S"
}
# The fallback without cuDNN (candle's im2col + cuBLAS) on the same cases.
tests_without_cudnn() {
  SEG_CUDNN=0 step test-seg-nn-no-cudnn 60 $B/test-seg-nn cuda --test-threads 1
  log test-seg-nn-no-cudnn | grep -E "test result|panicked" | tee -a "$S"
}
# The host's cost per call of a step's pieces, and where a VGG step's time goes (synchronised
# after each phase).
profile() {
  step cuda-overhead 60 $B/cuda-overhead; log cuda-overhead | tee -a "$S"
  for m in full reduced; do
    step vgg-phases-$m 60 $B/vgg-step $m 6; log vgg-phases-$m | tee -a "$S"
  done
}
# One round of the VGG steps at 1x3x256x512, ours then PyTorch's: vgg_round SUFFIX [reference
# flags].
vgg_round() {
  local sfx=$1; shift
  step bench-ours$sfx 90 $B/bench-train-step --bench --noplot --warm-up-time 1 --measurement-time 3 'train_step/vgg[^/]*/1x3x256x512'
  log bench-ours$sfx | grep -E "^train_step/|time:" | tee -a "$S"
  step bench-torch$sfx 60 python3 benches/reference/train_step_torch.py --device cuda --iters 20 "$@"
  log bench-torch$sfx | tee -a "$S"
}
# Mixed precision and real sizes against PyTorch on the same card: our VGG steps at 1x3x256x512,
# 1x3x512x1024 and 4x3x512x1024 in f32 and bf16, PyTorch eager f32, bf16 autocast and bf16
# autocast channels-last at the same sizes.
precision_round() {
  local sizes="--size 1x256x512 --size 1x512x1024 --size 4x512x1024"
  step bench-ours-sizes 200 $B/bench-train-step --bench --noplot --warm-up-time 1 --measurement-time 3 'train_step/vgg'
  log bench-ours-sizes | grep -E "^train_step/|time:|^peak GPU memory|^cuDNN geometries" | tee -a "$S"
  step bench-torch-f32 110 python3 benches/reference/train_step_torch.py --device cuda --iters 10 $sizes
  log bench-torch-f32 | tee -a "$S"
  step bench-torch-bf16 110 python3 benches/reference/train_step_torch.py --device cuda --iters 10 --amp bf16 $sizes
  log bench-torch-bf16 | tee -a "$S"
  step bench-torch-bf16-cl 110 python3 benches/reference/train_step_torch.py --device cuda --iters 10 --amp bf16 --channels-last $sizes
  log bench-torch-bf16-cl | tee -a "$S"
}
# Full-resolution inference (forward + argmax at 1x3x1024x2048), ours and PyTorch's, in f32 and
# under bf16 autocast.
inference_round() {
  step infer-ours 90 $B/bench-train-step --bench --noplot --warm-up-time 1 --measurement-time 3 'infer/vgg'
  log infer-ours | grep -E "^infer/|time:" | tee -a "$S"
  step infer-torch 90 python3 benches/reference/train_step_torch.py --device cuda --iters 10 --model vgg16-fcn8s --infer
  log infer-torch | tee -a "$S"
  step infer-torch-bf16 90 python3 benches/reference/train_step_torch.py --device cuda --iters 10 --model vgg16-fcn8s --infer --amp bf16
  log infer-torch-bf16 | tee -a "$S"
}
# The GTA5 -> Cityscapes presets at their crop and batch: 20 timed steps each (docs/real-data.md).
presets() {
  step presets 200 bash scripts/time-presets.sh $B/seg-adapt 20 cuda
  log presets | tee -a "$S"
}
# The demos on the GPU: the quick one, then the whole one (3 seeds, every arm) with its time.
demos() {
  step demo-quick 80 $B/seg-adapt demo --quick --device cuda --seeds 1 --out "$L/demo-quick"
  log demo-quick | tail -15 | tee -a "$S"
  step demo 400 $B/seg-adapt demo --device cuda --out "$L/demo"
  log demo | tail -25 | tee -a "$S"
  [ -f "$L/demo/report.md" ] && { echo "===== demo report.md ====="; cat "$L/demo/report.md"; } >> "$LOGS"
}

case "$MODE" in
  tests) tests; tests_without_cudnn ;;
  precision) precision_round ;;
  inference) inference_round; SEG_CUDA_TF32=0 vgg_round -fp32 --no-tf32 ;;
  presets) presets ;;
  demo) demos ;;
  profile) profile; vgg_round "" ;;
  all)
    tests
    precision_round
    inference_round
    # Both sides with FP32-only convolutions (no TF32 tensor cores), VGG steps only.
    SEG_CUDA_TF32=0 vgg_round -fp32 --no-tf32
    presets
    demos
    tests_without_cudnn
    profile
    # A second round of the VGG steps, both sides, for the spread between rounds.
    vgg_round -2
    ;;
  *) echo "unknown mode $MODE: tests, precision, inference, presets, demo, profile, or none for all" >&2; exit 2 ;;
esac
say "done: $(( $(date +%s) - START )) s"
