#!/usr/bin/env bash
# The batch-size study of docs/results/README.md (docs/methods/gffn.md, the GFFN thesis):
# FFN (λ = 0, cross-entropy) against GFFN (λ = 1, joint likelihood with the global-batch
# partition), at 5 global batch sizes spanning 256×, 3 seeds each, on two datasets:
#
#   digits  sklearn digits 8×8, classes 8 and 9 held out as near-OOD (982 train / 173 val /
#           288 test). Batch 4, 16, 64, 256, 1024; 1024 is the whole training set (982
#           examples, padded and masked). Schedule: "until validation accuracy plateaus"
#           (the thesis' first schedule): stop when validation accuracy has not improved for
#           10 epochs, at most 150 epochs. The config's own CNN (width 16), Adam, lr 1e-3 at
#           batch 128 with square-root scaling (lr 1.8e-4 at 4 ... 2.8e-3 at 1024).
#   MNIST   ../shared/data/mnist.npz (configs/gffn.py:mnist_npz), 28×28 zero-padded to 32×32,
#           classes 8 and 9 held out as near-OOD; OOD sets: the held-out classes, sklearn
#           digits resized to 28×28, uniform and Gaussian noise, constant and inverted images
#           (2000 examples each). Batch 16, 64, 256, 1024, 4096. To fit the CPU budget: a
#           stratified 10,000-example training subset, a fixed 5 epochs (50,000 examples
#           seen at every batch size, so 3,125 steps at batch 16 but 15 at 4096), and the
#           thesis CNN at width 8 instead of 32 (136k parameters). Adam, lr 1e-3 at batch
#           128 with square-root scaling (5.7e-3 at 4096).
#           validation_size is given as the fraction 1/12 because the config's
#           `validation_size = 5000` is stored as the float 5000.0 and rejected as a
#           fraction (a bug in configs/gffn.py reported with this script).
#
# Time (measured on this shared 2-core CPU, load ≈ 3, 2026-11-22): a digits run takes
# ≈ 40–60 s (batch 4, 10 epochs: 41 s; batch 1024, 100 epochs: 48 s), so the 30 digits runs
# take ≈ 30 min. An MNIST run of this setup processes ≈ 500–700 examples/s (batch 16:
# 750 steps in 17 s; batch 256: 200 steps in ≈ 75 s) plus ≈ 45 s of start-up, compilation
# and evaluation, i.e. ≈ 1.5–2 min per run for 5 epochs of 10,000, so the 30 MNIST runs take
# ≈ 50–60 min. Whole study: ≈ 2 hours with --jobs 1 (one run uses ~1.5 cores). The points
# share a persistent XLA compilation cache, which removes most of the compile time after
# the first run of each shape.
#
# Interrupt and rerun freely: finished points are skipped, unfinished ones resume from their
# checkpoints. Each sweep ends by writing RUNS/<dataset>/aggregate/; this script then writes
# the committed copies (tables + figures) under docs/results/<dataset>/.
#
# Usage (from anywhere):  bash docs/results/run_study.sh   [RUNS=runs/study PY=.venv/bin/python]
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/study}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/.jax_cache}
status=0

"$PY" -m jaxhybrid.tools.sweep --config=configs/gffn.py:digits --workdir="$RUNS/digits" \
    --sweep batch_size=4,16,64,256,1024 --sweep objective.joint_weight=0,1 --seeds 3 \
    --config.num_epochs=150 --config.early_stopping_patience=10 \
    || status=1

"$PY" -m jaxhybrid.tools.sweep --config=configs/gffn.py:mnist_npz --workdir="$RUNS/mnist" \
    --sweep batch_size=16,64,256,1024,4096 --sweep objective.joint_weight=0,1 --seeds 3 \
    --config.num_epochs=5 --config.data.train_subset=10000 \
    --config.data.validation_size=0.0833333333 "--config.data.ood_classes=(8, 9)" \
    --config.model.width=8 "--config.model.hidden=(128,)" \
    --config.evals.ood_sets=heldout,digits,uniform_noise,gaussian_noise,constant,inverted \
    --config.evals.ood_max_examples=2000 \
    || status=1

for dataset in digits mnist; do
    "$PY" -m jaxhybrid.tools.aggregate "$RUNS/$dataset" --out "docs/results/$dataset" > /dev/null \
        || status=1
done
exit $status
