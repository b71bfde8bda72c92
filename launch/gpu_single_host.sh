#!/usr/bin/env bash
# Run PCA on every GPU of one machine: one process, data parallel over all local GPUs
# (jax.devices() = all GPUs; the batch is sharded on the ("data",) mesh axis).
#
# Usage: bash launch/gpu_single_host.sh [extra --config.* overrides]
set -euo pipefail

CONFIG="${CONFIG:-configs/ipc50.py}"
WORKDIR="${WORKDIR:-runs/ipc50}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}"
CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-}"   # empty = all GPUs
VENV="${VENV:-.venv}"

cd "$(dirname "$0")/.."
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r requirements.txt
  "$VENV/bin/pip" install -q "jax[cuda12]==0.10.2"
fi
[ -n "$CUDA_VISIBLE_DEVICES" ] && export CUDA_VISIBLE_DEVICES
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec "$VENV/bin/python" -m pca_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.data.data_dir="$TFDS_DATA_DIR" --config.model.dtype=bfloat16 "$@"
