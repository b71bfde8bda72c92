"""Shared defaults (ImageNet-1K, ResNet-18, 224px, the reference benchmark's training recipe).

Other configs import this and override only what differs. See pca_jax/config.py for every field.
"""

from pca_jax.config import base_config


def get_config():
  return base_config()
