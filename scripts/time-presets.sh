#!/usr/bin/env bash
# Times the GTA5 -> Cityscapes presets of configs/ on this machine, before any real dataset is
# at hand: generates the embedded benchmark at Cityscapes' full size (four images a split),
# points each preset at it (without ImageNet weights, which do not change the time), and runs
# `seg-adapt check --time-steps N`, which times N training steps at the preset's crop and batch
# after 2 + trainer.prefetch untimed warm-up steps (no checkpoint or evaluation counted). For
# the curriculum, `check` times its stage-1 steps and its training steps apart; the table gives
# the training steps' rate and the whole run with both stages.
# Prints a markdown table: seconds per step and the preset's whole run at that rate.
#
# usage: scripts/time-presets.sh [SEG_ADAPT_BINARY] [STEPS] [DEVICE]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/seg-adapt}
steps=${2:-3}
device=${3:-cpu}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" gen-toy --out "$tmp/data" --preset full --seed 5 >/dev/null
echo "| preset | s/step ($device) | whole run at that rate |"
echo "|---|---:|---:|"
for f in configs/gta5-cityscapes_*_vgg16-fcn8s.toml; do
  sed -e "s|\"data/gta5\"|\"$tmp/data/gta5\"|" \
      -e "s|\"data/cityscapes\"|\"$tmp/data/cityscapes\"|" \
      -e "/^init_weights/d" \
      "$f" > "$tmp/preset.toml"
  out=$("$bin" check "$tmp/preset.toml" --time-steps "$steps" --device "$device" 2>"$tmp/err" || true)
  line=$(grep '^timing: .* training steps' <<<"$out" || true)
  if [ -z "$line" ]; then
    echo "| $(basename "$f" .toml) | failed: $(tail -1 "$tmp/err") | |"
    continue
  fi
  per=$(sed -E 's/.*\(([0-9.]+) s\/step.*/\1/' <<<"$line")
  total=$(sed -E 's/.*: about ([0-9]+h [0-9]+min).*/\1/' <<<"$line")
  echo "| $(basename "$f" .toml) | $per | $total |"
done
