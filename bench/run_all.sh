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

# The same package code with glibc malloc told to keep freed heap memory (MALLOC_TOP_PAD_):
# by default every batch's activation buffers go back to the kernel and are page-faulted in
# again (1.6 M minor page faults in 3 s of forward passes); measured cost 1.3-2.6x (bench/README.md).
TUNED="env MALLOC_TOP_PAD_=1073741824"
$TUNED $PY bench/tsne_clean.py --tag malloc_tuned --skip-workflow-split "$@"
$TUNED $PY bench/predict_throughput.py --tag malloc_tuned "$@"
$TUNED $PY bench/train_throughput.py --tag malloc_tuned "$@"
echo "done: results in results/bench/ (full runs also copied to bench/results/)"
