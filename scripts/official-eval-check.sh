#!/usr/bin/env bash
# Checks `seg-adapt eval` against the official Cityscapes evaluator (cityscapesscripts from
# PyPI) on generated data; see scripts/official_eval_check.py.
# Usage: scripts/official-eval-check.sh [path/to/seg-adapt]   (default: target/debug/seg-adapt)
# The virtual environment is kept in target/official-eval-venv (or $OFFICIAL_EVAL_VENV) and reused.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$repo/target/debug/seg-adapt}
venv=${OFFICIAL_EVAL_VENV:-$repo/target/official-eval-venv}
say() { echo "official-eval-check: $*" >&2; }

if [[ ! -x $bin ]]; then
    say "seg-adapt binary not found at $bin (build it first: cargo build -p seg-adapt)"
    exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

if ! "$venv/bin/python" -c 'import numpy, cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling' >/dev/null 2>&1; then
    say "creating $venv with cityscapesscripts 2.3.0"
    command -v python3 >/dev/null || { say "python3 is required"; exit 2; }
    rm -rf "$venv"
    python3 -m venv "$venv" || { say "python3 -m venv failed (install python3-venv)"; exit 2; }
    # numpy < 2.4: the official nIoU code calls np.in1d, removed in numpy 2.4.
    "$venv/bin/pip" install --quiet --disable-pip-version-check "cityscapesscripts==2.3.0" "numpy<2.4" ||
        { say "pip install cityscapesscripts failed"; exit 2; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/official-eval-check.XXXXXX")
if [[ -n ${KEEP_WORK:-} ]]; then
    say "keeping the generated data in $work"
else
    trap 'rm -rf "$work"' EXIT
fi
"$venv/bin/python" "$repo/scripts/official_eval_check.py" --bin "$bin" --work "$work"
