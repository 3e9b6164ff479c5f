#!/usr/bin/env bash
# One host, several devices: one process for all of them, or one process per GPU group.
#
#   launch/local_multi_gpu.sh configs/gffn.py:cifar10 runs/gffn_c10 --config.batch_size=512
#       one process drives every visible GPU (no jax.distributed)
#   PROCS=4 launch/local_multi_gpu.sh configs/gffn.py:cifar10 runs/gffn_c10 --config.batch_size=512
#       4 processes, each with its share of the visible GPUs (CUDA_VISIBLE_DEVICES), started
#       explicitly: --coordinator_address=127.0.0.1:PORT --num_processes=4 --process_id=I
#       (the multi-host code path, on one machine; nothing to auto-detect here)
#   PROCS=2 CPU_DEVICES=4 launch/local_multi_gpu.sh configs/gffn.py:smoke /tmp/mp --config.model.width=4
#       no GPU needed: 2 processes × 4 CPU devices, gloo collectives over loopback
#       (what tests/test_multiprocess.py runs)
#   CUDA_VISIBLE_DEVICES=0,1 launch/local_multi_gpu.sh ...   # a subset of the GPUs
#
# batch_size is the GLOBAL batch, split evenly over all devices of all processes (it must
# divide). PORT (default: a free one) and PYTHON (default: python) may be set. When one
# process fails, the others are stopped. Only process 0 writes to WORKDIR.
# Install once: pip install -e . 'jax[cuda13]>=0.10.2,<0.13'
set -euo pipefail
CONFIG=${1:?config}; WORKDIR=${2:?workdir}; shift 2
PROCS=${PROCS:-1}
PY=${PYTHON:-python}
[[ "$PROCS" =~ ^[1-9][0-9]*$ ]] || { echo "error: PROCS=$PROCS; give a number of processes >= 1" >&2; exit 1; }

if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$CPU_DEVICES ${XLA_FLAGS:-}"
fi
if [[ "$PROCS" == 1 ]]; then
  "$PY" -c "import jax; print('devices:', jax.devices())"
  exec "$PY" -m jaxhybrid.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
fi

GROUPS_OF=()   # CUDA_VISIBLE_DEVICES of each process
if [[ -z "${CPU_DEVICES:-}" ]]; then
  VISIBLE=${CUDA_VISIBLE_DEVICES:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, -)}
  IFS=, read -ra GPUS <<< "$VISIBLE"
  if (( ${#GPUS[@]} == 0 || ${#GPUS[@]} % PROCS )); then
    echo "error: PROCS=$PROCS does not divide the ${#GPUS[@]} visible GPU(s) (${VISIBLE:-none}); set CPU_DEVICES=N to use CPU devices instead" >&2
    exit 1
  fi
  PER=$(( ${#GPUS[@]} / PROCS ))
  for ((i = 0; i < PROCS; i++)); do
    GROUPS_OF+=("$(IFS=,; echo "${GPUS[*]:i*PER:PER}")")
  done
fi
PORT=${PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((i = 0; i < PROCS; i++)); do
  (
    [[ -n "${GROUPS_OF[i]:-}" ]] && export CUDA_VISIBLE_DEVICES="${GROUPS_OF[i]}"
    exec "$PY" -m jaxhybrid.main --config="$CONFIG" --workdir="$WORKDIR" "$@" \
      --coordinator_address="127.0.0.1:$PORT" --num_processes="$PROCS" --process_id="$i"
  ) &
  pids+=($!)
done
for ((n = 0; n < PROCS; n++)); do
  if ! wait -n; then
    echo "error: a process of the $PROCS failed; stopping the others" >&2
    exit 1
  fi
done
trap - EXIT
