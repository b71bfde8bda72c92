"""Model zoo: Flax (linen) ResNets."""

from pca_jax.models.resnet import MODELS, ResNet, ResNet10, ResNet18, ResNet34, ResNet50, create_model

__all__ = ["MODELS", "ResNet", "ResNet10", "ResNet18", "ResNet34", "ResNet50", "create_model"]
