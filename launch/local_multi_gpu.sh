#!/usr/bin/env bash
# One host, several GPUs: a single process drives every local GPU (no jax.distributed).
#
#   launch/local_multi_gpu.sh configs/gffn.py:cifar10 runs/gffn_c10 --config.batch_size=512
#   CUDA_VISIBLE_DEVICES=0,1 launch/local_multi_gpu.sh ...   # a subset of the GPUs
#
# batch_size is the GLOBAL batch, split evenly over the visible GPUs (it must divide).
# Install once: pip install -e . 'jax[cuda13]>=0.10.2,<0.11'
set -euo pipefail
CONFIG=${1:?config}; WORKDIR=${2:?workdir}; shift 2
python -c "import jax; print('devices:', jax.devices())"
exec python -m jaxhybrid.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
