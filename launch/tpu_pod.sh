#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (multi-host).
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#   e.g. launch/tpu_pod.sh my-v5e-32 us-west4-a configs/gffn.py:cifar10 gs://bucket/runs/gffn_c10 \
#          --config.batch_size=4096
#
# Every host runs the same command; JAXHYBRID_DISTRIBUTED=1 makes jaxhybrid call
# jax.distributed.initialize(), which auto-detects the coordinator on TPU VMs.
# The config's batch_size is the GLOBAL batch over all chips of all hosts and must
# be divisible by the total chip count (the trainer refuses it otherwise). Each host
# reads only its share of every global batch. WORKDIR must be visible to every host
# (a gs:// bucket for orbax; TFDS data_dir likewise, e.g. --config.data.data_dir=gs://...).
#
# One-time setup of the workers (copies this checkout and installs it):
#   launch/tpu_pod.sh TPU_NAME ZONE --setup
set -euo pipefail
TPU_NAME=${1:?TPU name}; ZONE=${2:?zone}; shift 2
REPO_DIR=${REPO_DIR:-jaxhybrid}

if [[ "${1:-}" == "--setup" ]]; then
  gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
    "$(cd "$(dirname "$0")/.." && pwd)" "$TPU_NAME:~/$REPO_DIR"
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
    cd ~/$REPO_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip &&
    .venv/bin/pip install -q -e . && .venv/bin/pip install -q -U 'jax[tpu]>=0.10.2,<0.13'"
  exit 0
fi

CONFIG=${1:?config, e.g. configs/gffn.py:cifar10}; WORKDIR=${2:?workdir}; shift 2
EXTRA="$*"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd ~/$REPO_DIR && JAXHYBRID_DISTRIBUTED=1 .venv/bin/python -m jaxhybrid.main \
    --config=$CONFIG --workdir=$WORKDIR $EXTRA 2>&1 | tee -a ~/jaxhybrid_\$(hostname).log"
