"""Flax linen EfficientNet (B0 .. B7) in torchvision's exact layout (torchvision 0.28,
torchvision/models/efficientnet.py); only "efficientnet_b0" is registered.

Same MBConv blocks (1x1 expand conv-BN-SiLU when the expanded channels differ from the input's,
k x k depthwise conv-BN-SiLU, squeeze-excitation with 1x1 convs fc1 (bias, SiLU) / fc2 (bias,
sigmoid) on max(1, in // 4) channels, 1x1 project conv-BN; residual when stride 1 and in == out),
torch padding (k - 1) // 2 on each side, BatchNorm eps 1e-5 / torch momentum 0.1 (B5 .. B7:
1e-3 / 0.01, as torchvision), stochastic depth ("row" mode: whole examples of a residual branch
dropped and the rest scaled by 1 / (1 - p)) with p = 0.2 * block index / block count (0 for the
first block), classifier dropout (0.2 for B0), initialisation as torchvision's. Stochastic depth
and dropout draw from the rng stream "dropout" in train mode only; in eval they are identities.

`width`: 64 is torchvision's layout; otherwise torchvision's width_mult becomes the variant's
width_mult * width / 64 (B0: width / 64), applied as torchvision does (MBConvConfig.
adjust_channels): every table channel count `_make_divisible(c * width_mult, 8)`, the expanded
channels `_make_divisible(in * expand_ratio, 8)`, the last conv 4 x the last stage's channels.
`stem`: "imagenet" is torchvision's; "small" (images of <= 64 px) only changes the first conv's
stride 2 to 1 (same variables and shapes, so torchvision weights still load; total stride 16).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pca_jax.models.mobilenet import (ConvBNAct, Entry, any_image_size, check_stem, check_width,
                                      conv_bn_keys, make_divisible)
from pca_jax.models.resnet import TORCH_CONV_INIT, BatchNorm, materialize

# torchvision's _efficientnet_conf("efficientnet_b*"): (expand ratio, kernel, first stride,
# in channels, out channels, blocks) per stage, before width_mult / depth_mult.
EFFICIENTNET_SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
                        (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                        (6, 3, 1, 192, 320, 1))


class Variant(NamedTuple):
  """torchvision's efficientnet_b* arguments."""
  width_mult: float
  depth_mult: float
  dropout: float
  bn_eps: float
  bn_momentum: float  # torch's convention: running = (1 - m) * running + m * batch


VARIANTS = {
    "b0": Variant(1.0, 1.0, 0.2, 1e-5, 0.1), "b1": Variant(1.0, 1.1, 0.2, 1e-5, 0.1),
    "b2": Variant(1.1, 1.2, 0.3, 1e-5, 0.1), "b3": Variant(1.2, 1.4, 0.3, 1e-5, 0.1),
    "b4": Variant(1.4, 1.8, 0.4, 1e-5, 0.1), "b5": Variant(1.6, 2.2, 0.4, 1e-3, 0.01),
    "b6": Variant(1.8, 2.6, 0.5, 1e-3, 0.01), "b7": Variant(2.0, 3.1, 0.5, 1e-3, 0.01),
}


class BlockConfig(NamedTuple):
  """One MBConv block: its torchvision position features.{stage}.{index} and its geometry."""
  stage: int
  index: int
  expand_ratio: int
  kernel: int
  stride: int
  in_channels: int
  out_channels: int
  stochastic_depth: float  # the probability of dropping the residual branch in training


def check_variant(variant: str) -> Variant:
  if variant not in VARIANTS:
    raise ValueError(f"unknown EfficientNet variant {variant!r}; choose one of {sorted(VARIANTS)}")
  return VARIANTS[variant]


def efficientnet_layout(variant: str, width: int, stochastic_depth: float = 0.2
                        ) -> tuple[int, list[BlockConfig], int]:
  """(stem channels, blocks, last conv channels) of torchvision's efficientnet_<variant> with
  width_mult = variant width_mult * width / 64, computed as torchvision's EfficientNet."""
  v = check_variant(variant)
  width_mult = v.width_mult * (width / 64)
  adjust = lambda c: make_divisible(c * width_mult, 8)  # noqa: E731 - MBConvConfig's
  stages = [(t, k, s, adjust(cin), adjust(cout), int(math.ceil(n * v.depth_mult)))
            for t, k, s, cin, cout, n in EFFICIENTNET_SETTING]
  total = sum(stage[-1] for stage in stages)
  blocks = []
  for stage, (t, k, s, cin, cout, n) in enumerate(stages, start=1):
    for i in range(n):
      p = stochastic_depth * float(len(blocks)) / total
      blocks.append(BlockConfig(stage, i, t, k, s if i == 0 else 1, cin if i == 0 else cout,
                                cout, p))
  return stages[0][3], blocks, 4 * stages[-1][4]


def stochastic_depth_row(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
  """torchvision.ops.stochastic_depth(x, rate, "row", training=train): each example's x [B, ...]
  is zeroed with probability `rate` and the others scaled by 1 / (1 - rate); identity in eval
  or at rate 0 (no rng drawn). Random bits from `module`'s rng stream "dropout"."""
  if not train or rate == 0.0:
    return x
  survival = 1.0 - rate
  keep = jax.random.bernoulli(module.make_rng("dropout"), survival, (x.shape[0],) +
                              (1,) * (x.ndim - 1))
  noise = keep.astype(x.dtype)
  if survival > 0.0:
    noise = noise / jnp.asarray(survival, x.dtype)
  return x * noise


class SqueezeExcitation(nn.Module):
  """torchvision.ops.SqueezeExcitation with SiLU and sigmoid: x * sigmoid(fc2(silu(fc1(mean
  over H, W of x)))), fc1 / fc2 1x1 convs with bias. [B, H, W, C] -> [B, H, W, C]."""

  squeeze_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, kernel_size=(1, 1), padding=((0, 0), (0, 0)),
                             dtype=self.dtype, kernel_init=TORCH_CONV_INIT,
                             bias_init=nn.initializers.zeros_init())
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = nn.silu(conv(self.squeeze_channels, name="fc1")(scale))
    scale = nn.sigmoid(conv(x.shape[-1], name="fc2")(scale))
    return scale * x


class MBConv(nn.Module):
  """torchvision's MBConv (see the module docstring). [B, H, W, in] -> [B, H/s, W/s, out]."""

  config: BlockConfig
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, weights=None):
    c = self.config
    x = materialize(x)
    conv = functools.partial(ConvBNAct, norm=self.norm, dtype=self.dtype)
    expanded = make_divisible(c.in_channels * c.expand_ratio, 8)
    y = x
    if expanded != c.in_channels:
      y = conv(expanded, kernel_size=1, act=nn.silu, name="expand")(y, weights)
    y = conv(expanded, kernel_size=c.kernel, strides=c.stride, groups=expanded, act=nn.silu,
             name="depthwise")(y, weights)
    y = SqueezeExcitation(max(1, c.in_channels // 4), self.dtype, name="se")(y)
    y = conv(c.out_channels, kernel_size=1, name="project")(y, weights)
    if c.stride == 1 and c.in_channels == c.out_channels:
      return stochastic_depth_row(self, y, c.stochastic_depth, train) + x
    return y


class EfficientNet(nn.Module):
  """torchvision's EfficientNet B0 .. B7 (see the module docstring for `width` and `stem`).

  Input: images [B, H, W, 3] float NHWC (already normalised). Output: logits [B, num_classes]
  float32. Flax names: stem (torch features.0), stage{s}_{i} (features.{s}.{i}), head_conv
  (features.8 for B0's 7 stages), classifier (classifier.1). `stochastic_depth`: the last
  block's rate (torchvision's stochastic_depth_prob); `dropout`: the classifier's, None for the
  variant's (0.2 for B0).
  """

  num_classes: int = 1000
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  variant: str = "b0"
  stochastic_depth: float = 0.2
  dropout: float | None = None

  @nn.compact
  def __call__(self, x, train: bool = True, weights=None):
    """weights: [B] example weights for train-mode BatchNorm statistics (None: all count)."""
    check_stem(self.stem)
    v = check_variant(self.variant)
    norm = functools.partial(BatchNorm, use_running_average=not train,
                             momentum=1.0 - v.bn_momentum, epsilon=v.bn_eps, dtype=self.dtype)
    stem_channels, blocks, last = efficientnet_layout(self.variant, self.width,
                                                      self.stochastic_depth)
    x = jnp.asarray(x, self.dtype)
    x = ConvBNAct(stem_channels, norm, strides=2 if self.stem == "imagenet" else 1, act=nn.silu,
                  dtype=self.dtype, name="stem")(x, weights)
    for c in blocks:
      x = MBConv(c, norm, self.dtype, name=f"stage{c.stage}_{c.index}")(x, train, weights)
    x = ConvBNAct(last, norm, kernel_size=1, act=nn.silu, dtype=self.dtype,
                  name="head_conv")(materialize(x), weights)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(v.dropout if self.dropout is None else self.dropout,
                   deterministic=not train)(x)
    # torchvision: weight U(-1/sqrt(out_features), 1/sqrt(out_features)), bias zeros; flax's
    # variance_scaling uniform limit is sqrt(3 * scale / fan_out) = 1 / sqrt(num_classes).
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform"),
                 bias_init=nn.initializers.zeros_init(), name="classifier")(x)
    return jnp.asarray(x, jnp.float32)


def efficientnet_b0(num_classes: int, width: int = 64, stem: str = "imagenet",
                    dtype: Any = jnp.float32) -> EfficientNet:
  """torchvision's `efficientnet_b0(num_classes=...)` as a Flax module (width 64)."""
  check_stem(stem)
  check_width(width)
  return EfficientNet(num_classes=num_classes, width=width, stem=stem, dtype=dtype, variant="b0")


def check_image_size(model: nn.Module, size: int) -> str | None:
  return any_image_size(describe_model(model), size)


def torch_mapping(model: EfficientNet, target: Mapping[str, Any]) -> list[Entry]:
  """(torch key, flax collection, flax path, kind) for every variable of an EfficientNet.

  torchvision: features.0 (stem: .0 conv, .1 BN); features.{s}.{i}.block: [.0 expand], then
  depthwise (.0 conv, .1 BN), SE (.fc1 / .fc2 weight and bias), project (.0 conv, .1 BN) as
  consecutive indices; features.{stages + 1} (last conv); classifier.1 (Linear). `target` is
  only used to check the block count.
  """
  _, blocks, _ = efficientnet_layout(model.variant, model.width, model.stochastic_depth)
  found = sum(1 for k in target["params"] if k.startswith("stage"))
  if found != len(blocks):  # cannot happen for an EfficientNet built here
    raise ValueError(f"variables have {found} blocks, torchvision's efficientnet_{model.variant} "
                     f"{len(blocks)}")
  out = conv_bn_keys("features.0.0.weight", "features.0.1", ("stem",))
  for c in blocks:
    prefix, path = f"features.{c.stage}.{c.index}.block", (f"stage{c.stage}_{c.index}",)
    layers = ["depthwise", "se", "project"]
    if make_divisible(c.in_channels * c.expand_ratio, 8) != c.in_channels:
      layers.insert(0, "expand")
    for i, name in enumerate(layers):
      if name == "se":
        for fc in ("fc1", "fc2"):
          out += [(f"{prefix}.{i}.{fc}.weight", "params", (*path, "se", fc, "kernel"), "conv"),
                  (f"{prefix}.{i}.{fc}.bias", "params", (*path, "se", fc, "bias"), "vector")]
      else:
        out += conv_bn_keys(f"{prefix}.{i}.0.weight", f"{prefix}.{i}.1", (*path, name))
  last = blocks[-1].stage + 1
  out += conv_bn_keys(f"features.{last}.0.weight", f"features.{last}.1", ("head_conv",))
  out += [("classifier.1.weight", "params", ("classifier", "kernel"), "dense"),
          ("classifier.1.bias", "params", ("classifier", "bias"), "vector")]
  return out


def describe_keys(keys: Sequence[str]) -> str | None:
  """'torchvision efficientnet_b0 (blocks per stage (1, 2, 2, 3, 3, 4, 1))' for an EfficientNet
  state_dict's keys (features.{s}.{i}.block.*; 'torchvision EfficientNet' when the block counts
  are no B0 .. B7's), None for any other."""
  stages: dict[int, set[int]] = {}
  for k in keys:
    parts = k.split(".")
    if len(parts) > 3 and parts[0] == "features" and parts[3] == "block" and \
        parts[1].isdigit() and parts[2].isdigit():
      stages.setdefault(int(parts[1]), set()).add(int(parts[2]))
  if not stages:
    return None
  sizes = tuple(len(stages.get(s, ())) for s in range(1, max(stages) + 1))
  names = [f"efficientnet_{v}" for v in VARIANTS
           if tuple(int(math.ceil(n * VARIANTS[v].depth_mult))
                    for *_, n in EFFICIENTNET_SETTING) == sizes]
  name = "/".join(names) or "EfficientNet"  # b1 and b2 have the same block counts
  return f"torchvision {name} (blocks per stage {sizes})"


def describe_model(model: EfficientNet) -> str:
  return f"efficientnet_{model.variant} width {model.width} stem {model.stem!r}"
