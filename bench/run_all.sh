#!/usr/bin/env bash
# Run every benchmark at full size on this machine, in the order that lets later ones reuse the
# normalize stage's output (results/bench/cache/). Results: results/bench/<name>.json, copied
# to bench/results/ (committed). Extra arguments go to every script (e.g. --threads 2, --quick).
#
#   bash bench/run_all.sh            # full size (first run simulates 36 904 stars: ~10 min, ~12 GiB)
#   bash bench/run_all.sh --quick    # seconds, into results/bench/ only
#
# On a GPU machine predict_throughput and predict_rss use CUDA automatically (device auto);
# train_throughput runs on CPU and, when CUDA is present, again with --device cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

$PY bench/normalize_throughput.py "$@"
$PY bench/tsne_clean.py "$@"
$PY bench/predict_throughput.py "$@"
$PY bench/train_throughput.py "$@"
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    $PY bench/train_throughput.py --device cuda "$@"
fi
$PY bench/predict_rss.py "$@"
# the simulator's realism knobs: Cramér–Rao bounds per knob (add --train for the CNN's σ)
$PY bench/realism_knobs.py "$@"

# The workflow's clean, train and predict stages set glibc's M_TOP_PAD themselves
# (starlabels.runtime.keep_freed_memory); the *_malloc_tuned.json files in bench/results/ are
# from before that change, with MALLOC_TOP_PAD_ set in the environment instead.
