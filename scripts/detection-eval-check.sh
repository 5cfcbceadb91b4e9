#!/usr/bin/env bash
# Checks `seg-adapt eval --task detection` against py-faster-rcnn's voc_eval logic (VOC07
# 11-point and all-point AP) and pycocotools (COCO AP at IoU 0.5) on generated data; see
# scripts/detection_eval_check.py.
# Usage: scripts/detection-eval-check.sh [path/to/seg-adapt]   (default: target/debug/seg-adapt)
# The virtual environment is kept in target/detection-eval-venv (or $DETECTION_EVAL_VENV) and reused.
# KEEP_WORK=1 keeps the generated data.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$repo/target/debug/seg-adapt}
venv=${DETECTION_EVAL_VENV:-$repo/target/detection-eval-venv}
say() { echo "detection-eval-check: $*" >&2; }

if [[ ! -x $bin ]]; then
    say "seg-adapt binary not found at $bin (build it first: cargo build -p seg-adapt)"
    exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

if ! "$venv/bin/python" -c 'import numpy, PIL, cv2, pycocotools.cocoeval' >/dev/null 2>&1; then
    say "creating $venv with pycocotools 2.0.11 and OpenCV"
    command -v python3 >/dev/null || { say "python3 is required"; exit 2; }
    rm -rf "$venv"
    python3 -m venv "$venv" || { say "python3 -m venv failed (install python3-venv)"; exit 2; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "pycocotools==2.0.11" "numpy==2.4.6" "pillow==13.0.0" "opencv-python-headless==5.0.0.93" ||
        { say "pip install pycocotools numpy pillow failed"; exit 2; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/detection-eval-check.XXXXXX")
if [[ -n ${KEEP_WORK:-} ]]; then
    say "keeping the generated data in $work"
else
    trap 'rm -rf "$work"' EXIT
fi
"$venv/bin/python" "$repo/scripts/detection_eval_check.py" --bin "$bin" --work "$work"
