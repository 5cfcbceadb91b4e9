#!/usr/bin/env bash
# Every GPU check in one run, for a machine with an NVIDIA GPU, PyTorch with CUDA and no
# registry. Build here first (needs the CUDA toolchain, see ../shared/docs/cuda.md):
#   scripts/gpu-check.sh --build      # writes gpu/ : xz-compressed CUDA binaries
# then, on the GPU machine, in the repository root with gpu/ beside it:
#   scripts/gpu-check.sh OUTDIR       # ldd, CUDA tests, benchmarks vs PyTorch, demo
#   scripts/gpu-check.sh OUTDIR tests # ldd and the CUDA tests only
#   scripts/gpu-check.sh OUTDIR profile # per-call host cost, phases of a VGG step, VGG benches
#   scripts/gpu-check.sh OUTDIR precision # bf16 and real sizes against PyTorch (f32, autocast,
#                                         # channels-last), with peak memory
#   scripts/gpu-check.sh OUTDIR inference # inference (f32 and bf16) against PyTorch, and the
#                                         # steps with FP32-only convolutions
# (`precision` and `inference` each fit in under 600 s with every step at its time limit.)
# Results: OUTDIR/summary.txt plus one log per step.
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
  for pair in "$BIN:seg-adapt" "$NN:test-seg-nn" "$AD:test-seg-adapt" "$BE:bench-train-step" "$STEP:vgg-step" "$OVER:cuda-overhead"; do
    src=${pair%%:*}; dst=${pair##*:}
    strip -o "gpu/$dst" "$src" && xz -6 -T2 "gpu/$dst"
  done
  ls -la gpu
  exit 0
fi

OUT=${1:?usage: scripts/gpu-check.sh OUTDIR | --build}
mkdir -p "$OUT"
S="$OUT/summary.txt"
say() { echo "$*" | tee -a "$S"; }
say "date: $(date -u +%FT%TZ)"
say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
say "torch: $(python3 -c 'import torch;print(torch.__version__, torch.version.cuda)' 2>&1)"
B=/tmp/seg-gpu && mkdir -p $B
for f in gpu/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; chmod +x "$B/$(basename "$f" .xz)"; done
NV=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia
# cuDNN is opened at run time (seg_cuda::cudnn), from the same Python environment as PyTorch's.
export LD_LIBRARY_PATH="$NV/cu13/lib:$NV/cublas/lib:$NV/cuda_runtime/lib:$NV/curand/lib:$NV/cudnn/lib:${LD_LIBRARY_PATH:-}"
say "cudnn: $(ls $NV/cudnn/lib/libcudnn.so.* $NV/cu13/lib/libcudnn.so.* 2>/dev/null | tr '\n' ' ')"
ldd $B/seg-adapt > "$OUT/ldd.txt" 2>&1
if grep -q "not found" "$OUT/ldd.txt"; then say "ldd: MISSING $(grep 'not found' "$OUT/ldd.txt" | tr '\n' ' ')"; else say "ldd: all libraries found"; fi
export SEG_ADAPT_BIN=$B/seg-adapt

step() { # name timeout command...
  local name=$1 t=$2; shift 2
  local t0=$(date +%s.%N)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  say "$name: rc=$rc ($(python3 -c "print(round($(date +%s.%N)-$t0,1))") s)"
  return $rc
}
export SEG_BENCH_DEVICE=cuda  # the benches and vgg-step run on the GPU
# The host's cost per call of a step's pieces, and where a VGG step's time goes (synchronised
# after each phase).
profile() {
  step cuda-overhead 60 $B/cuda-overhead; cat "$OUT/cuda-overhead.log" | tee -a "$S"
  for m in full reduced; do
    step vgg-phases-$m 60 $B/vgg-step $m 6; cat "$OUT/vgg-phases-$m.log" | tee -a "$S"
  done
}
# One round of the VGG steps, ours then PyTorch's: vgg_round SUFFIX [reference-script flags].
vgg_round() {
  local sfx=$1; shift
  step bench-ours$sfx 90 $B/bench-train-step --bench --noplot --warm-up-time 1 --measurement-time 3 'train_step/vgg[^/]*/1x3x256x512'
  grep -E "^train_step/|time:" "$OUT/bench-ours$sfx.log" | tee -a "$S"
  step bench-torch$sfx 60 python3 benches/reference/train_step_torch.py --device cuda --iters 20 "$@"
  cat "$OUT/bench-torch$sfx.log" | tee -a "$S"
}
# Mixed precision and real sizes against PyTorch on the same card: our VGG steps at 1x3x256x512,
# 1x3x512x1024 and 4x3x512x1024 in f32 and bf16, PyTorch eager f32, bf16 autocast and bf16
# autocast channels-last at the same sizes.
precision_round() {
  local sizes="--size 1x256x512 --size 1x512x1024 --size 4x512x1024"
  step bench-ours-sizes 200 $B/bench-train-step --bench --noplot --warm-up-time 1 --measurement-time 3 'train_step/vgg'
  grep -E "^train_step/|time:|^peak GPU memory|^cuDNN geometries" "$OUT/bench-ours-sizes.log" | tee -a "$S"
  step bench-torch-f32 110 python3 benches/reference/train_step_torch.py --device cuda --iters 10 $sizes
  cat "$OUT/bench-torch-f32.log" | tee -a "$S"
  step bench-torch-bf16 110 python3 benches/reference/train_step_torch.py --device cuda --iters 10 --amp bf16 $sizes
  cat "$OUT/bench-torch-bf16.log" | tee -a "$S"
  step bench-torch-bf16-cl 110 python3 benches/reference/train_step_torch.py --device cuda --iters 10 --amp bf16 --channels-last $sizes
  cat "$OUT/bench-torch-bf16-cl.log" | tee -a "$S"
}
# Full-resolution inference (forward + argmax at 1x3x1024x2048), ours and PyTorch's, in f32 and
# under bf16 autocast.
inference_round() {
  step infer-ours 90 $B/bench-train-step --bench --noplot --warm-up-time 1 --measurement-time 3 'infer/vgg'
  grep -E "^infer/|time:" "$OUT/infer-ours.log" | tee -a "$S"
  step infer-torch 90 python3 benches/reference/train_step_torch.py --device cuda --iters 10 --model vgg16-fcn8s --infer
  cat "$OUT/infer-torch.log" | tee -a "$S"
  step infer-torch-bf16 90 python3 benches/reference/train_step_torch.py --device cuda --iters 10 --model vgg16-fcn8s --infer --amp bf16
  cat "$OUT/infer-torch-bf16.log" | tee -a "$S"
}
if [ "${2:-}" = "precision" ]; then  # `scripts/gpu-check.sh OUT precision`: bf16 and real sizes
  step test-seg-nn 60 $B/test-seg-nn cuda --test-threads 1
  grep -E "^test |test result" "$OUT/test-seg-nn.log" | tee -a "$S"
  precision_round
  exit 0
fi
if [ "${2:-}" = "inference" ]; then  # `scripts/gpu-check.sh OUT inference`: inference, FP32-only convolutions
  inference_round
  SEG_CUDA_TF32=0 vgg_round -fp32 --no-tf32
  exit 0
fi
if [ "${2:-}" = "profile" ]; then  # `scripts/gpu-check.sh OUT profile`: where a VGG step's time goes
  profile
  vgg_round ""
  exit 0
fi
step test-seg-nn 60 $B/test-seg-nn cuda --test-threads 1
grep -E "^test |test result" "$OUT/test-seg-nn.log" | tee -a "$S"
step test-seg-adapt 120 $B/test-seg-adapt cuda --test-threads 1
grep -E "^test |test result" "$OUT/test-seg-adapt.log" | tee -a "$S"
# The fallback without cuDNN (candle's im2col + cuBLAS) on the same cases.
SEG_CUDNN=0 step test-seg-nn-no-cudnn 60 $B/test-seg-nn cuda --test-threads 1
grep -E "test result" "$OUT/test-seg-nn-no-cudnn.log" | tee -a "$S"
[ "${2:-}" = "tests" ] && exit 0   # `scripts/gpu-check.sh OUT tests`: the CUDA tests only
# Training step and inference, ours then PyTorch eager, same card, back to back.
step bench-ours 420 $B/bench-train-step --bench --noplot --warm-up-time 1 --measurement-time 3
grep -E "^(train_step|infer)/|time:|thrpt:" "$OUT/bench-ours.log" | tee -a "$S"
step bench-torch 90 python3 benches/reference/train_step_torch.py --device cuda --iters 20 --infer
cat "$OUT/bench-torch.log" | tee -a "$S"
# Both sides with FP32-only convolutions (no TF32 tensor cores), VGG steps only.
SEG_CUDA_TF32=0 vgg_round -fp32 --no-tf32
profile
step demo-quick 80 $B/seg-adapt demo --quick --device cuda --seeds 1 --out "$OUT/demo"
tail -15 "$OUT/demo-quick.log" | tee -a "$S"
# A second round of the VGG steps, both sides, for the spread between rounds.
vgg_round -2
