"""PCA on CIFAR-100 (TFDS), 32x32, ResNet-18 small stem. Same settings as configs/cifar10.py."""

from pca_jax.config import sibling_config

_cifar = sibling_config(__file__, "cifar10")


def get_config():
  return _cifar("cifar100")
