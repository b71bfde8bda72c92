#!/usr/bin/env bash
# The prepared accelerator check (pca_jax/device_check.py): ResNet-18 train step (bf16 / fp32,
# batch 256 / 512), EL2N scoring, the score stage K=4 together vs one at a time, the Grain
# pipeline on photo JPEGs, and the projected wall time of configs/ipc50.py and
# configs/benchmark_imagenet.py. Writes OUT_DIR/device_check.json and OUT_DIR/device_check.md.
#
#   launch/device_check.sh [--tiny] OUT_DIR       # --tiny (or DEVICE_CHECK_TINY=1): toy sizes, CPU
#   launch/device_check.sh --fetch-wheels         # here, with network: the wheels a GPU host lacks
#
# On the GPU host nothing is downloaded. Its own python3 and JAX (with the CUDA plugin) are used
# (PYTHON=... picks another interpreter); what it lacks of requirements.txt travels as wheels in
# .whl/ (git-ignored): run `launch/device_check.sh --fetch-wheels` on a machine with network
# first (grain, array_record, ml_collections, simplejpeg, portpicker for CPython 3.12, manylinux
# x86-64: about 5 MB), carry .whl with the checkout, and this script installs them into
# /tmp/pca_jax_site before it runs. A host without JAX needs the jax[cuda] wheels brought the same
# way (several hundred MB: pip download "jax[cuda12]==0.10.2" for the host's Python).
# The default sizes fit an 8-minute slot on one H200 (--budget_s=420 skips what is left after
# 7 minutes, and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 simplejpeg==1.9.0 portpicker==1.6.0"

if [ "${1:-}" = "--fetch-wheels" ]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d .whl $WHEELS
  exit 0
fi
tiny=""
if [ "${1:-}" = "--tiny" ]; then
  tiny="--tiny"
  shift
fi
if [ "${DEVICE_CHECK_TINY:-0}" = "1" ]; then
  tiny="--tiny"
fi
out="${1:?usage: launch/device_check.sh [--tiny] OUT_DIR  (or --fetch-wheels)}"
shift
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/pca_jax_site .whl/*.whl
  export PYTHONPATH="/tmp/pca_jax_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
PYTHONUNBUFFERED=1 exec "$PY" -m pca_jax.device_check --check_out="$out" $tiny "$@"
