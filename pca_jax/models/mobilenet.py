"""Flax linen MobileNetV2 in torchvision's exact layout (torchvision/models/mobilenetv2.py, 0.28).

Same convolutions (torch padding (k - 1) // 2 on each side, depthwise convs as grouped convs),
BatchNorm (eps 1e-5, torch momentum 0.1), ReLU6, residual rule, dropout 0.2 before the classifier
and initialisation as torchvision's; `torch_mapping` names the torchvision state_dict key of every
variable, so torchvision weights load exactly (pca_jax.models.torch_weights) and export back.

`width`: 64 is torchvision's layout; otherwise torchvision's `width_mult = width / 64`, applied
as torchvision does: every stage's channels `_make_divisible(c * width_mult, 8)` (stem 32, stages
16 .. 320), the expanded channels `int(round(in * t))`, and the last conv
`_make_divisible(1280 * max(1, width_mult), 8)` (so narrower models keep 1280 there).
`stem`: "imagenet" is torchvision's; "small" (images of <= 64 px) only changes the first conv's
stride 2 to 1 (same variables and shapes, so torchvision weights still load; the total stride
is 16 instead of 32).

Also the shared building block `ConvBNAct` (conv -> BatchNorm -> activation, torchvision's
Conv2dNormActivation) and `make_divisible`, which pca_jax.models.efficientnet imports.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pca_jax.models.resnet import TORCH_CONV_INIT, BatchNorm, materialize, torch_bn_keys

ModuleDef = Any
Entry = tuple[str, str, tuple, str]  # (torch key, flax collection, flax path, kind)
STEMS = ("imagenet", "small")

# torchvision's inverted_residual_setting: (expand ratio t, channels c, blocks n, first stride s).
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """torchvision's `_make_divisible`: `value` rounded to the nearest multiple of `divisor` (at
  least `min_value`, default `divisor`), one multiple up if rounding lost more than 10 %."""
  if min_value is None:
    min_value = divisor
  new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


def check_stem(stem: str) -> None:
  if stem not in STEMS:
    raise ValueError(f"unknown stem {stem!r}; use 'imagenet' or 'small'")


def check_width(width: int) -> None:
  if not isinstance(width, int) or width < 1:
    raise ValueError(f"model width must be an integer >= 1 (64 = torchvision), got {width!r}")


class ConvBNAct(nn.Module):
  """torchvision's Conv2dNormActivation: k x k conv (no bias, padding (k - 1) // 2 on each side,
  `groups` channel groups: groups == channels is a depthwise conv) -> BatchNorm -> act (None: no
  activation). [B, H, W, C_in] -> [B, H / stride, W / stride, features]. Variables: conv/kernel
  [k, k, C_in / groups, features] and bn/{scale, bias, mean, var}."""

  features: int
  norm: ModuleDef            # functools.partial(BatchNorm, ...): eps, momentum, mode, dtype
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  act: Callable | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, weights=None):
    pad = (self.kernel_size - 1) // 2
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), (self.strides, self.strides),
                padding=((pad, pad), (pad, pad)), feature_group_count=self.groups,
                use_bias=False, dtype=self.dtype, kernel_init=TORCH_CONV_INIT, name="conv")(x)
    x = self.norm(name="bn")(x, weights)
    return x if self.act is None else self.act(x)


def conv_bn_keys(conv_key: str, bn_prefix: str, flax_path: tuple) -> list[Entry]:
  """The torchvision entries of a ConvBNAct at flax_path: its conv weight and BatchNorm."""
  return [(conv_key, "params", (*flax_path, "conv", "kernel"), "conv")] + \
      torch_bn_keys(bn_prefix, (*flax_path, "bn"))


def mobilenet_v2_layout(width: int) -> tuple[int, list[tuple[int, int, int, int]], int]:
  """(stem channels, [(expand ratio, in channels, out channels, stride)] per inverted-residual
  block, last conv channels), computed as torchvision's MobileNetV2(width_mult=width / 64)."""
  width_mult = width / 64
  stem = make_divisible(32 * width_mult, 8)
  last = make_divisible(1280 * max(1.0, width_mult), 8)
  blocks, channels = [], stem
  for t, c, n, s in MOBILENET_V2_SETTING:
    out = make_divisible(c * width_mult, 8)
    for i in range(n):
      blocks.append((t, channels, out, s if i == 0 else 1))
      channels = out
  return stem, blocks, last


class InvertedResidual(nn.Module):
  """MobileNetV2 block: [1x1 expand conv-BN-ReLU6 when expand_ratio != 1] -> 3x3 depthwise
  conv-BN-ReLU6 (stride) -> 1x1 project conv-BN; plus the input when stride 1 and in == out.
  Hidden channels int(round(in * expand_ratio)), as torchvision."""

  in_channels: int
  out_channels: int
  strides: int
  expand_ratio: int
  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, weights=None):
    x = materialize(x)
    conv = functools.partial(ConvBNAct, norm=self.norm, dtype=self.dtype)
    hidden = int(round(self.in_channels * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = conv(hidden, kernel_size=1, act=jax.nn.relu6, name="expand")(y, weights)
    y = conv(hidden, strides=self.strides, groups=hidden, act=jax.nn.relu6,
             name="depthwise")(y, weights)
    y = conv(self.out_channels, kernel_size=1, name="project")(y, weights)
    if self.strides == 1 and self.in_channels == self.out_channels:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """torchvision's MobileNetV2 (see the module docstring for `width` and `stem`).

  Input: images [B, H, W, 3] float NHWC (already normalised). Output: logits [B, num_classes]
  float32. Flax names: stem, block1 .. block17 (torch features.1 .. 17), head_conv (features.18),
  classifier (classifier.1). `dropout` is the classifier's (train only, rng stream "dropout").
  """

  num_classes: int = 1000
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  dropout: float = 0.2

  @nn.compact
  def __call__(self, x, train: bool = True, weights=None):
    """weights: [B] example weights for train-mode BatchNorm statistics (None: all count)."""
    check_stem(self.stem)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    stem_channels, blocks, last = mobilenet_v2_layout(self.width)
    x = jnp.asarray(x, self.dtype)
    x = ConvBNAct(stem_channels, norm, strides=2 if self.stem == "imagenet" else 1,
                  act=jax.nn.relu6, dtype=self.dtype, name="stem")(x, weights)
    for n, (t, cin, cout, s) in enumerate(blocks, start=1):
      x = InvertedResidual(cin, cout, s, t, norm, self.dtype, name=f"block{n}")(x, weights)
    x = ConvBNAct(last, norm, kernel_size=1, act=jax.nn.relu6, dtype=self.dtype,
                  name="head_conv")(materialize(x), weights)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    # torchvision: nn.init.normal_(weight, 0, 0.01), bias zeros
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                 bias_init=nn.initializers.zeros_init(), name="classifier")(x)
    return jnp.asarray(x, jnp.float32)


def mobilenet_v2(num_classes: int, width: int = 64, stem: str = "imagenet",
                 dtype: Any = jnp.float32) -> MobileNetV2:
  """torchvision's `mobilenet_v2(num_classes=..., width_mult=width / 64)` as a Flax module."""
  check_stem(stem)
  check_width(width)
  return MobileNetV2(num_classes=num_classes, width=width, stem=stem, dtype=dtype)


def any_image_size(what: str, size: int) -> str | None:
  """Why a net whose convs all pad (k - 1) // 2 cannot take size x size images (`what` names it),
  None if it can: any size >= 1 px reaches the classifier (torchvision's min_size is 1 x 1)."""
  return f"{what} needs images of at least 1 x 1 px, got {size} px" if size < 1 else None


def check_image_size(model: nn.Module, size: int) -> str | None:
  return any_image_size(describe_model(model), size)


def torch_mapping(model: MobileNetV2, target: Mapping[str, Any]) -> list[Entry]:
  """(torch key, flax collection, flax path, kind) for every variable of a MobileNetV2.

  torchvision: features.0 (stem Conv2dNormActivation: .0 conv, .1 BN), features.{n}.conv for
  block n: [.0 expand] then depthwise (Conv2dNormActivation), project conv, project BN as
  consecutive indices; features.18 (last conv), classifier.1 (Linear). `target` is only used to
  check the block count.
  """
  _, blocks, _ = mobilenet_v2_layout(model.width)
  found = sum(1 for k in target["params"] if k.startswith("block"))
  if found != len(blocks):  # cannot happen for a MobileNetV2 built here
    raise ValueError(f"variables have {found} blocks, torchvision's mobilenet_v2 {len(blocks)}")
  out = conv_bn_keys("features.0.0.weight", "features.0.1", ("stem",))
  for n, (t, *_) in enumerate(blocks, start=1):
    prefix, path, i = f"features.{n}.conv", (f"block{n}",), 0
    if t != 1:
      out += conv_bn_keys(f"{prefix}.0.0.weight", f"{prefix}.0.1", (*path, "expand"))
      i = 1
    out += conv_bn_keys(f"{prefix}.{i}.0.weight", f"{prefix}.{i}.1", (*path, "depthwise"))
    out += conv_bn_keys(f"{prefix}.{i + 1}.weight", f"{prefix}.{i + 2}", (*path, "project"))
  last = len(blocks) + 1
  out += conv_bn_keys(f"features.{last}.0.weight", f"features.{last}.1", ("head_conv",))
  out += [("classifier.1.weight", "params", ("classifier", "kernel"), "dense"),
          ("classifier.1.bias", "params", ("classifier", "bias"), "vector")]
  return out


def describe_keys(keys: Sequence[str]) -> str | None:
  """'torchvision mobilenet_v2 (17 inverted-residual blocks)' for a MobileNetV2 state_dict's
  keys (features.{n}.conv.*), None for any other."""
  blocks = {int(k.split(".")[1]) for k in keys
            if k.startswith("features.") and k.split(".")[2:3] == ["conv"]}
  if not blocks:
    return None
  return f"torchvision mobilenet_v2 ({len(blocks)} inverted-residual blocks)"


def describe_model(model: MobileNetV2) -> str:
  return f"mobilenet_v2 width {model.width} stem {model.stem!r}"
