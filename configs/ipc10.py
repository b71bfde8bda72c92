"""PCA on ImageNet-1K at IPC 10: 10 stored 224x224 images per class, each a 2x2 mosaic of 4
easiest-EL2N images (so 40 pruned images per class). Evaluation: ResNet-18 from scratch, 300
epochs, AdamW lr 1e-3 wd 0.01, cosine per epoch, batch 128, patch-constrained RRC + flip, hard labels
(the reference benchmark's hard-label recipe). Paper top-1 (ResNet-18, hard labels): see docs/pipeline.md.

  python -m pca_jax.main --config=configs/ipc10.py --workdir=gs://bucket/pca_ipc10 \
      --config.data.data_dir=$TFDS_DATA_DIR
"""

from pca_jax.config import base_config


def get_config():
  c = base_config()
  c.select.ipc = 10
  return c
