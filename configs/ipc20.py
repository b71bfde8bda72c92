"""PCA on ImageNet-1K at IPC 20: 20 stored 224x224 images per class, each a 2x2 mosaic of 4
easiest-EL2N images (so 80 pruned images per class). Evaluation: ResNet-18 from scratch, 300
epochs, AdamW lr 1e-3 wd 0.01, cosine per epoch, batch 128, patch-constrained RRC + flip, hard labels
(the reference benchmark's hard-label recipe). Paper top-1 (ResNet-18, hard labels): see docs/pipeline.md.

  python -m pca_jax.main --config=configs/ipc20.py --workdir=gs://bucket/pca_ipc20 \
      --config.data.data_dir=$TFDS_DATA_DIR
"""

from pca_jax.config import base_config


def get_config():
  c = base_config()
  c.select.ipc = 20
  return c
