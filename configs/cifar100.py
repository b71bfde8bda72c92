"""PCA on CIFAR-100 (TFDS), 32x32, ResNet-18 small stem. Same settings as configs/cifar10.py."""

from configs.cifar10 import get_config as _cifar


def get_config():
  return _cifar("cifar100")
