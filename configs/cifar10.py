"""PCA on CIFAR-10 (TFDS), 32x32, ResNet-18 with the small-image stem; one GPU scale.

Mosaic cells are 16x16 (2x2 grid at 32px). Scoring: 4 models x 10 epochs on the full train set.
"""

from pca_jax.config import base_config


def get_config(num_classes_name="cifar10"):
  c = base_config()
  c.data.tfds_name = num_classes_name
  c.data.eval_split = "test"
  c.data.image_size = 32
  c.data.eval_crop_fraction = 1.0
  c.model.stem = "small"
  c.score.batch_size = 1024
  c.score.train.update(dict(batch_size=256, epochs=10, crop_scale=(0.35, 1.0),
                            checkpoint_every_steps=500))
  c.select.ipc = 10
  c.train.update(dict(crop_scale=(0.35, 1.0), eval_batch_size=1000))
  return c
