"""Model zoo (Flax linen, torchvision layouts): ResNet-10/18/34/50/101, MobileNetV2,
EfficientNet-B0, ShuffleNetV2 x1.0 and ViT-S/16, registered by name in MODELS
(pca_jax.models.registry; loaded on first use, so importing one family's module loads no other)."""

_REGISTRY = ("MODELS", "STUDENTS", "create_model", "model_from_config")
_RESNET = ("ResNet", "ResNet10", "ResNet18", "ResNet34", "ResNet50", "ResNet101")
__all__ = [*_REGISTRY, *_RESNET]


def __getattr__(name):
  if name in _REGISTRY:
    from pca_jax.models import registry
    return getattr(registry, name)
  if name in _RESNET:
    from pca_jax.models import resnet
    return getattr(resnet, name)
  raise AttributeError(f"module 'pca_jax.models' has no attribute {name!r}")
