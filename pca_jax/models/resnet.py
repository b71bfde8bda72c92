"""Flax linen ResNets in the torchvision layout (ResNet-18/34/50, plus ResNet-10 for tests).

`stem="imagenet"`: 7x7 stride-2 conv + 3x3 stride-2 max-pool (224px inputs).
`stem="small"`: 3x3 stride-1 conv, no max-pool (CIFAR-sized inputs, 8-64px).
`width` scales every layer (64 = torchvision); narrow widths make CPU demos and tests fast.
`dtype` is the compute dtype (e.g. jnp.bfloat16); parameters are always float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any


class _Block(nn.Module):
  """Fields shared by the residual blocks."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: tuple[int, int] = (1, 1)


class ResNetBlock(_Block):
  """Basic residual block (two 3x3 convs), used by ResNet-10/18/34."""

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = self.norm()(y)
    y = nn.relu(y)
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class BottleneckResNetBlock(_Block):
  """Bottleneck block (1x1, 3x3, 1x1 with 4x expansion), used by ResNet-50."""

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1))(x)
    y = self.norm()(y)
    y = nn.relu(y)
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = self.norm()(y)
    y = nn.relu(y)
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet v1.5 (stride on the 3x3 conv), torchvision parameter layout.

  Input: images [B, H, W, C] float (already normalised). Output: logits [B, num_classes] float32.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int = 1000
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.stem not in ("imagenet", "small"):
      raise ValueError(f"unknown stem {self.stem!r}; use 'imagenet' or 'small'")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, padding="SAME")
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
      x = norm(name="bn_init")(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    else:
      x = conv(self.width, (3, 3), (1, 1), name="conv_init")(x)
      x = norm(name="bn_init")(x)
      x = nn.relu(x)
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(self.width * 2**i, strides=strides, conv=conv, norm=norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return jnp.asarray(x, jnp.float32)


ResNet10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=ResNetBlock)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)

MODELS = {"resnet10": ResNet10, "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def create_model(name: str, num_classes: int, width: int = 64, stem: str = "imagenet",
                 dtype: str = "float32") -> ResNet:
  """Builds a model by name, with a clear error for unknown names/dtypes."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
  if dtype not in DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
  if stem not in ("imagenet", "small"):
    raise ValueError(f"unknown stem {stem!r}; use 'imagenet' (224px) or 'small' (<=64px)")
  if width < 1:
    raise ValueError(f"model width must be >= 1, got {width}")
  return MODELS[name](num_classes=num_classes, width=width, stem=stem, dtype=DTYPES[dtype])
