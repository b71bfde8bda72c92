#!/usr/bin/env bash
# Run PCA on several GPU machines: start this script on EVERY host with its own PROCESS_ID.
# Each process drives its local GPUs; jax.distributed.initialize() reads JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID (pca_jax.parallel.maybe_initialize_distributed). Each process
# reads its own shard of the data; process 0 writes the run directory, which must be on storage all
# hosts see (NFS or gs://).
#
# Usage (2 hosts):  host0$ PROCESS_ID=0 bash launch/gpu_multi_host.sh
#                   host1$ PROCESS_ID=1 bash launch/gpu_multi_host.sh
# Under SLURM:      srun --ntasks-per-node=1 bash -c 'PROCESS_ID=$SLURM_PROCID bash launch/gpu_multi_host.sh'
set -euo pipefail

COORDINATOR="${COORDINATOR:-10.0.0.1:1234}"   # host0's address and a free port
NUM_PROCESSES="${NUM_PROCESSES:-2}"
PROCESS_ID="${PROCESS_ID:?set PROCESS_ID to the index of this host, 0..NUM_PROCESSES-1}"
CONFIG="${CONFIG:-configs/ipc100.py}"
WORKDIR="${WORKDIR:-/shared/runs/ipc100}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-/shared/tensorflow_datasets}"
VENV="${VENV:-.venv}"

cd "$(dirname "$0")/.."
export JAX_COORDINATOR_ADDRESS="$COORDINATOR"
export JAX_NUM_PROCESSES="$NUM_PROCESSES"
export JAX_PROCESS_ID="$PROCESS_ID"
exec "$VENV/bin/python" -m pca_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.data.data_dir="$TFDS_DATA_DIR" --config.model.dtype=bfloat16 "$@"
