#!/usr/bin/env bash
# Run PCA on a Cloud TPU VM slice (v4-8 / v5e-8 or a multi-host pod slice), every worker at once.
#
# Usage:   bash launch/tpu_vm.sh create      # create the slice (once)
#          bash launch/tpu_vm.sh setup       # copy this repo to every worker and install
#          bash launch/tpu_vm.sh run         # run main on all workers (--worker=all)
#          bash launch/tpu_vm.sh delete      # delete the slice
# Data: ImageNet prepared for TFDS in ArrayRecord format in a GCS bucket (see README), e.g.
#   tfds build imagenet2012 --data_dir=gs://my-bucket/tfds --file_format=array_record
# Every worker reads its own shard (Grain + jax.process_index); jax.distributed.initialize() is
# called automatically on multi-host slices (TPU_WORKER_HOSTNAMES has several hosts).
set -euo pipefail

PROJECT="${PROJECT:-my-gcp-project}"
ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-pca-jax}"
ACCELERATOR="${ACCELERATOR:-v4-8}"            # v5litepod-8 for v5e-8, v4-32 for a 4-host slice
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"      # v5e: v2-alpha-tpuv5-lite
CONFIG="${CONFIG:-configs/ipc50.py}"
WORKDIR="${WORKDIR:-gs://my-bucket/pca_jax/ipc50}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-gs://my-bucket/tfds}"
EXTRA_ARGS="${EXTRA_ARGS:-}"                   # e.g. --config.model.dtype=bfloat16
REMOTE_DIR="pca_jax"

gc() { gcloud compute tpus tpu-vm "$@" --project="$PROJECT" --zone="$ZONE"; }

case "${1:-}" in
  create)
    gc create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ;;
  setup)
    tar czf /tmp/pca_jax_src.tgz --exclude=.venv --exclude=.git --exclude=runs .
    gc scp /tmp/pca_jax_src.tgz "$TPU_NAME":/tmp/ --worker=all
    gc ssh "$TPU_NAME" --worker=all --command="mkdir -p $REMOTE_DIR && tar xzf /tmp/pca_jax_src.tgz -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m venv .venv && . .venv/bin/activate && pip install -q -r requirements.txt && pip install -q 'jax[tpu]==0.10.2' gcsfs" ;;
  run)
    gc ssh "$TPU_NAME" --worker=all --command="cd $REMOTE_DIR && . .venv/bin/activate && python -m pca_jax.main --config=$CONFIG --workdir=$WORKDIR --config.data.data_dir=$TFDS_DATA_DIR $EXTRA_ARGS 2>&1 | tee -a run.log" ;;
  delete)
    gc delete "$TPU_NAME" --quiet ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac
