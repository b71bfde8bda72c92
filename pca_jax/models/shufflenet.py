"""ShuffleNetV2 x1.0 (Flax linen) in the exact layout of torchvision/models/shufflenetv2.py.

Architecture (stem="imagenet", width=64 is torchvision's `shufflenet_v2_x1_0` exactly):
  conv1: 3x3 stride-2 conv (pad 1) 3 -> 24, BatchNorm, ReLU; 3x3 stride-2 max-pool (pad 1)
  stage2 / stage3 / stage4: 4 / 8 / 4 InvertedResidual blocks with 116 / 232 / 464 channels, the
    first of each stage stride 2 (both branches on the whole input), the others stride 1 (the
    input split in two halves by channel, the first half passed through, the second through
    branch2); the two halves are concatenated and channel-shuffled with 2 groups
  conv5: 1x1 conv -> 1024, BatchNorm, ReLU; global average pool; fc (Linear with bias)
Shapes: images [B, H, W, 3] -> conv1 [B, H/2, W/2, 24] -> max-pool [B, H/4, W/4, 24] -> stage2
[B, H/8, W/8, 116] -> stage3 [.., H/16, .., 232] -> stage4 [.., H/32, .., 464] -> conv5
[.., H/32, .., 1024] -> logits [B, num_classes] (sizes rounded up: every stride-2 op pads 1).

`stem="small"` (images of <= 64 px): conv1 has stride 1 and there is no max-pool, so the stages
see the input resolution instead of a quarter of it (16 px -> 8 / 4 / 2 in stages 2 / 3 / 4). The
parameters are the same as the imagenet stem's (conv1 is 3x3 in both), so a torchvision state_dict
loads into either; only the stride and the pool differ.

`width` scales all five of torchvision's stages_out_channels [24, 116, 232, 464, 1024] (conv1,
stage2-4, conv5) by width / 64 (see `stage_channels`): c -> max(2, 2 * floor(c * width / 128 +
1/2)), i.e. c * width / 64 rounded to the nearest even integer (halves up), at least 2. Even
counts are needed because the stride-1 blocks split their input into two equal halves. width=64
gives [24, 116, 232, 464, 1024] exactly; width=32 gives [12, 58, 116, 232, 512]. (torchvision's
own x0.5 / x1.5 / x2.0 variants keep conv1 at 24 and conv5 at 1024 or 2048, so no width equals
them; torchvision's `ShuffleNetV2([4, 8, 4], stage_channels(width))` is this model at any width.)

Differences from torchvision: none in the computation (channel shuffle reproduces torch's
view(B, 2, C/2, H, W).transpose(1, 2) order in NHWC, see `channel_shuffle`; every conv pads like
torch; BatchNorm eps 1e-5, momentum 0.1 = flax momentum 0.9). BatchNorm is
pca_jax.models.resnet.BatchNorm (per-example `weights` for the training statistics). No dropout.
Initialisation: ShuffleNetV2 sets none itself, so every conv (depthwise included) and the fc keep
PyTorch's default kaiming_uniform_(a=sqrt(5)), U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in =
in_channels / groups * kh * kw, the fc bias U(-1/sqrt(in), 1/sqrt(in)); BatchNorm scale 1, bias 0.
`dtype` is the compute dtype; parameters are float32; logits are float32.

Flax module names mirror torch's state_dict keys with "." -> "_" (conv1.0 -> conv1_0,
stage3.2.branch2.3 -> stage3_2/branch2_3, fc -> fc), so `torch_mapping` is a renaming.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from pca_jax.models.resnet import (TORCH_LINEAR_INIT, BatchNorm, materialize, max_pool_3x3_s2,
                                   torch_bn_keys, torch_linear_bias_init, torch_padded_conv)

ModuleDef = Any

NAME = "shufflenet_v2_x1_0"
STAGES_REPEATS = (4, 8, 4)
STAGES_OUT_CHANNELS = (24, 116, 232, 464, 1024)   # torchvision's shufflenet_v2_x1_0
# PyTorch's default nn.Conv2d / nn.Linear weight init, kaiming_uniform_(a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); flax's fan_in of an HWIO kernel is kh * kw * in / groups.
TORCH_DEFAULT_INIT = TORCH_LINEAR_INIT
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch's; flax's BatchNorm momentum is 1 - this


def stage_channels(width: int = 64) -> tuple[int, ...]:
  """torchvision's stages_out_channels [24, 116, 232, 464, 1024] scaled by width / 64: each c ->
  max(2, 2 * floor(c * width / 128 + 1/2)) (nearest even integer, halves up; integer arithmetic,
  so exact). width=64 -> (24, 116, 232, 464, 1024), 32 -> (12, 58, 116, 232, 512), 16 -> (6, 30,
  58, 116, 256)."""
  if width < 1:
    raise ValueError(f"model width must be >= 1, got {width}")
  return tuple(max(2, 2 * ((c * width + 64) // 128)) for c in STAGES_OUT_CHANNELS)


def channel_shuffle(x, groups: int = 2):
  """torchvision's channel_shuffle in NHWC: x [B, H, W, C] -> [B, H, W, C], output channel
  j * groups + g = input channel g * (C / groups) + j (torch: view(B, groups, C / groups, H, W),
  transpose(1, 2), view(B, C, H, W))."""
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


class InvertedResidual(nn.Module):
  """torchvision's shufflenetv2.InvertedResidual: x [B, H, W, inp] -> [B, H/s, W/s, features].

  stride 1: x split into halves x1, x2 (inp == features); out = shuffle(concat(x1, branch2(x2))).
  stride 2: out = shuffle(concat(branch1(x), branch2(x))), each branch features / 2 channels.
  branch1: depthwise 3x3 stride s, BN, 1x1 conv, BN, ReLU (torch indices 0, 1, 2, 3).
  branch2: 1x1 conv, BN, ReLU, depthwise 3x3 stride s, BN, 1x1 conv, BN, ReLU (0, 1, 3, 4, 5, 6).
  """

  features: int
  stride: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x, weights=None):
    x = materialize(x)
    half = self.features // 2
    if self.stride == 1:
      if x.shape[-1] != 2 * half:
        raise ValueError(f"stride-1 ShuffleNet block needs {2 * half} input channels, got "
                         f"{x.shape[-1]}")
      x1, x2 = jnp.split(x, 2, axis=-1)
    else:
      c = x.shape[-1]
      x1 = self.conv(c, (3, 3), (self.stride, self.stride), feature_group_count=c,
                     name="branch1_0")(x)
      x1 = self.norm(name="branch1_1")(x1, weights)
      x1 = self.conv(half, (1, 1), name="branch1_2")(x1)
      x1 = nn.relu(self.norm(name="branch1_3")(x1, weights))
      x2 = x
    y = self.conv(half, (1, 1), name="branch2_0")(x2)
    y = nn.relu(self.norm(name="branch2_1")(y, weights))
    y = self.conv(half, (3, 3), (self.stride, self.stride), feature_group_count=half,
                  name="branch2_3")(y)
    y = self.norm(name="branch2_4")(y, weights)
    y = self.conv(half, (1, 1), name="branch2_5")(y)
    y = nn.relu(self.norm(name="branch2_6")(y, weights))
    return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """ShuffleNetV2 in torchvision's layout (module docstring: stems, width, differences).

  Input: images [B, H, W, 3] float (already normalised). Output: logits [B, num_classes] float32.
  stages_repeats: blocks in stage2 / 3 / 4 (torchvision's (4, 8, 4) for every x-variant).
  """

  num_classes: int = 1000
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  stages_repeats: tuple[int, int, int] = STAGES_REPEATS

  @nn.compact
  def __call__(self, x, train: bool = True, weights=None):
    """weights: [B] example weights for train-mode BatchNorm statistics (None: all count)."""
    if self.stem not in ("imagenet", "small"):
      raise ValueError(f"unknown stem {self.stem!r}; use 'imagenet' or 'small'")
    channels = stage_channels(self.width)
    conv = functools.partial(torch_padded_conv, use_bias=False, dtype=self.dtype,
                             kernel_init=TORCH_DEFAULT_INIT)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=1 - BN_MOMENTUM,
                             epsilon=BN_EPS, dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    stride = 2 if self.stem == "imagenet" else 1
    x = conv(channels[0], (3, 3), (stride, stride), name="conv1_0")(x)
    x = nn.relu(norm(name="conv1_1")(x, weights))
    if self.stem == "imagenet":
      x = max_pool_3x3_s2(x)
    for stage, (repeats, features) in enumerate(zip(self.stages_repeats, channels[1:4])):
      for i in range(repeats):
        x = InvertedResidual(features, 2 if i == 0 else 1, conv, norm,
                             name=f"stage{stage + 2}_{i}")(x, weights)
    x = conv(channels[4], (1, 1), name="conv5_0")(materialize(x))
    x = nn.relu(norm(name="conv5_1")(x, weights))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc", kernel_init=TORCH_DEFAULT_INIT,
                 bias_init=torch_linear_bias_init(x.shape[-1]))(x)
    return jnp.asarray(x, jnp.float32)


def shufflenet_v2_x1_0(num_classes: int, width: int = 64, stem: str = "imagenet",
                       dtype: Any = jnp.float32) -> ShuffleNetV2:
  """torchvision's shufflenet_v2_x1_0 (width 64, stem "imagenet"), or its scaled / small-stem
  variant (module docstring)."""
  if stem not in ("imagenet", "small"):
    raise ValueError(f"unknown stem {stem!r}; use 'imagenet' or 'small'")
  stage_channels(width)  # raises for width < 1
  return ShuffleNetV2(num_classes=num_classes, width=width, stem=stem, dtype=dtype)


def check_image_size(model: ShuffleNetV2, size: int) -> str | None:
  """Why `model` cannot take square images of `size` px (None if it can): every stride-2 conv /
  pool pads 1, so any size >= 1 reaches the global pool with >= 1 x 1 positions (torchvision's
  min_size is (1, 1))."""
  del model
  if size < 1:
    return f"image size {size} px: ShuffleNetV2 needs images of at least 1 x 1 px"
  return None


# --- torchvision state_dict mapping (pca_jax.models.torch_weights) ---------------------------

def _torch_names(model: ShuffleNetV2) -> list[tuple[str, tuple, str]]:
  """(torch module name, flax module path, "conv" / "bn") for every conv and BatchNorm."""
  out = [("conv1.0", ("conv1_0",), "conv"), ("conv1.1", ("conv1_1",), "bn")]
  for stage, repeats in enumerate(model.stages_repeats):
    for i in range(repeats):
      block = f"stage{stage + 2}.{i}"
      layers = [("branch1", 0, "conv"), ("branch1", 1, "bn"), ("branch1", 2, "conv"),
                ("branch1", 3, "bn")] if i == 0 else []
      layers += [("branch2", 0, "conv"), ("branch2", 1, "bn"), ("branch2", 3, "conv"),
                 ("branch2", 4, "bn"), ("branch2", 5, "conv"), ("branch2", 6, "bn")]
      out += [(f"{block}.{branch}.{j}", (f"stage{stage + 2}_{i}", f"{branch}_{j}"), kind)
              for branch, j, kind in layers]
  out += [("conv5.0", ("conv5_0",), "conv"), ("conv5.1", ("conv5_1",), "bn")]
  return out


def torch_mapping(model: ShuffleNetV2, target: Mapping[str, Any]
                  ) -> list[tuple[str, str, tuple, str]]:
  """(torch state_dict key, flax collection, flax path, kind) for every variable of `model`.

  kind "conv": torch OIHW -> flax HWIO (depthwise [C, 1, 3, 3] -> [3, 3, 1, C]); "dense": fc
  [out, in] -> [in, out]; "vector": BatchNorm weight / bias / running stats and fc.bias, as is.
  target (model.init's shapes) is not needed: the names follow from stages_repeats.
  """
  del target
  out: list[tuple[str, str, tuple, str]] = []
  for torch_name, flax_path, kind in _torch_names(model):
    if kind == "conv":
      out.append((f"{torch_name}.weight", "params", (*flax_path, "kernel"), "conv"))
    else:
      out += torch_bn_keys(torch_name, flax_path)
  out += [("fc.weight", "params", ("fc", "kernel"), "dense"),
          ("fc.bias", "params", ("fc", "bias"), "vector")]
  return out


def describe_keys(keys: Sequence[str]) -> str | None:
  """What a ShuffleNetV2 state_dict is, e.g. "torchvision shufflenet_v2 (stages_repeats (4, 8,
  4))", None if the keys are not ShuffleNetV2's. The keys do not tell the x0.5 / x1.0 / x1.5 /
  x2.0 variants (or a width) apart: only the shapes do, checked when loading."""
  blocks: dict[int, set[int]] = {}
  for k in keys:
    m = re.match(r"stage(\d+)\.(\d+)\.branch[12]\.", k)
    if m:
      blocks.setdefault(int(m[1]), set()).add(int(m[2]))
  if not blocks or "conv5.0.weight" not in keys:
    return None
  repeats = tuple(len(blocks.get(i, ())) for i in range(2, max(blocks) + 1))
  return f"torchvision shufflenet_v2 (stages_repeats {repeats})"


def describe_model(model: ShuffleNetV2) -> str:
  """E.g. "shufflenet_v2_x1_0 width 64 stem 'imagenet'" (channels added at width != 64)."""
  repeats = tuple(model.stages_repeats)
  name = NAME if repeats == STAGES_REPEATS else f"shufflenet_v2 stages_repeats {repeats}"
  chans = "" if model.width == 64 else f" (channels {list(stage_channels(model.width))})"
  return f"{name} width {model.width}{chans} stem {model.stem!r}"
