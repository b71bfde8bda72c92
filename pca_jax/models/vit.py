"""Flax linen Vision Transformer in torchvision's `VisionTransformer` layout: ViT-S/16.

torchvision ships no vit_s_16 builder; ViT-S/16 is its class with
`VisionTransformer(image_size, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384,
mlp_dim=1536)` (torchvision/models/vision_transformer.py, v0.28), reproduced here exactly:

  conv_proj      Conv2d(3, D, kernel = stride = patch), no padding; weight trunc_normal_(std =
                 sqrt(1 / (3 * patch * patch)), truncated at +-2 absolute, as torch), bias 0
  class_token    [1, 1, D], zeros; prepended to the (H / p) * (W / p) patch tokens (row-major)
  pos_embedding  [1, 1 + (H / p) * (W / p), D], N(0, 0.02); added, then dropout
  encoder_layer_i (pre-norm): x + Dropout(MHA(LN_1(x))), then x + MLP(LN_2(x)) with
                 MLP = Linear(D, 4D) -> exact (erf) GELU -> Dropout -> Linear(4D, D) -> Dropout
                 (Linear weights xavier_uniform, biases N(0, 1e-6));
                 MHA = nn.MultiheadAttention(D, heads): packed q/k/v projection [3D, D]
                 (xavier_uniform over the packed matrix, bias 0), softmax(q k^T / sqrt(D / heads))
                 with attention dropout on the probabilities, out_proj (torch's Linear default
                 U(+-1/sqrt(D)) weight, bias 0)
  ln             final LayerNorm (every LayerNorm: eps 1e-6, weight 1, bias 0), then the class token
  head           Linear(D, num_classes), weight and bias zero-initialised

`width`: hidden_dim D = 6 * width (64 -> 384, torchvision's ViT-S), mlp_dim = 4 * D, num_heads
(default 6) heads of D / num_heads channels (width 16 -> D 96, heads of 16).
`stem`: "imagenet" = patch 16 (torchvision exactly); "small" = patch 4 instead (images <= 64 px:
32 px -> 8 x 8 = 64 patch tokens); everything else is unchanged.
`image_size`: 0 sizes the position embedding from the input at init (then every call must have
that number of patches); > 0 fixes it for image_size x image_size inputs as torchvision's
`image_size` argument does. Loading torchvision weights needs image_size = the torchvision model's
(torch_weights builds the variable shapes at 32 px otherwise): `vit_s_16(..., image_size=224)`.

No BatchNorm: `weights` (per-example weights for BatchNorm statistics in the other families) is
accepted and ignored, since every LayerNorm normalises one token of one example, so padding filler
cannot leak into real examples; the model has no batch_stats collection (an apply with
mutable=["batch_stats"] returns {} as its updates, or {"batch_stats": {}} when the variables
passed in had an empty "batch_stats").

Differences from torchvision: none in the computation. Softmax of the attention scores runs in
float32 when dtype is bfloat16 / float16 (torch's autocast also runs softmax in float32);
non-square inputs are accepted when image_size = 0 (torchvision asserts H = W = image_size).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pca_jax.models.resnet import TORCH_LINEAR_INIT

PATCH_SIZES = {"imagenet": 16, "small": 4}
LN_EPS = 1e-6

XAVIER_UNIFORM = nn.initializers.xavier_uniform()  # flax kernels [in, out]: torch's fan_in/fan_out


def torch_trunc_normal_init(std: float, a: float = -2.0, b: float = 2.0) -> Callable:
  """torch.nn.init.trunc_normal_(std=std, a=a, b=b): N(0, std) truncated to [a, b] in ABSOLUTE
  units (flax's truncated_normal truncates at +-2 std instead)."""
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, a / std, b / std, shape, dtype)
  return init


def _trunc_normal_fan_in(key, shape, dtype=jnp.float32):
  """conv_proj's init: trunc_normal_(std=sqrt(1 / fan_in)), fan_in = kh * kw * in (HWIO)."""
  fan_in = math.prod(shape[:-1])
  return torch_trunc_normal_init(math.sqrt(1.0 / fan_in))(key, shape, dtype)


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention(D, num_heads, dropout, batch_first=True), self-attention only.

  Params: in_proj (Dense D -> 3D, kernel [D, 3D] = torch in_proj_weight [3D, D] transposed, q / k /
  v packed in that order along the output axis) and out_proj (Dense D -> D). x: [B, S, D] ->
  [B, S, D]; heads are consecutive blocks of D / num_heads channels, as in torch.
  """

  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, s, d = x.shape
    h = self.num_heads
    hd = d // h
    qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=XAVIER_UNIFORM,
                   bias_init=nn.initializers.zeros_init(), name="in_proj")(x)
    q, k, v = (t.reshape(b, s, h, hd) for t in jnp.split(qkv, 3, axis=-1))
    q = q * jnp.asarray(1.0 / math.sqrt(hd), q.dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
    probs = nn.Dropout(self.dropout, deterministic=not train)(probs)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, d)
    return nn.Dense(d, dtype=self.dtype, kernel_init=TORCH_LINEAR_INIT,
                    bias_init=nn.initializers.zeros_init(), name="out_proj")(out)


class EncoderBlock(nn.Module):
  """torchvision's EncoderBlock (pre-norm): x + Dropout(MHA(LN_1(x))), then + MLP(LN_2(·))."""

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    ln = lambda name: nn.LayerNorm(LN_EPS, dtype=self.dtype, use_fast_variance=False, name=name)
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    d = x.shape[-1]
    y = ln("ln_1")(x)
    y = MultiheadAttention(self.num_heads, self.attention_dropout, self.dtype,
                           name="self_attention")(y, train)
    x = drop(y) + x
    mlp_bias = nn.initializers.normal(1e-6)
    y = ln("ln_2")(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=XAVIER_UNIFORM, bias_init=mlp_bias,
                 name="mlp_0")(y)
    y = drop(nn.gelu(y, approximate=False))
    y = nn.Dense(d, dtype=self.dtype, kernel_init=XAVIER_UNIFORM, bias_init=mlp_bias,
                 name="mlp_3")(y)
    return x + drop(y)


class VisionTransformer(nn.Module):
  """torchvision's VisionTransformer (no representation layer, patchify stem), see the module
  docstring. Input: images [B, H, W, 3] float (normalised), H and W multiples of the patch size
  (and = image_size when > 0). Output: logits [B, num_classes] float32.

  Flax names: conv_proj, class_token, pos_embedding, encoder_layer_{i}/{ln_1, self_attention/
  {in_proj, out_proj}, ln_2, mlp_0, mlp_3}, ln, head (see torch_mapping for the torch keys).
  """

  num_classes: int = 1000
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  image_size: int = 0           # 0: the position embedding is sized from the input at init
  num_layers: int = 12
  num_heads: int = 6
  dropout: float = 0.0          # torchvision's `dropout` (encoder input, attention output, MLP)
  attention_dropout: float = 0.0

  @property
  def patch_size(self) -> int:
    if self.stem not in PATCH_SIZES:
      raise ValueError(f"unknown stem {self.stem!r}; use 'imagenet' or 'small'")
    return PATCH_SIZES[self.stem]

  @property
  def hidden_dim(self) -> int:
    return 6 * self.width

  @nn.compact
  def __call__(self, x, train: bool = True, weights=None):
    """weights: ignored (no BatchNorm; LayerNorm is per token of one example)."""
    del weights
    p, d = self.patch_size, self.hidden_dim
    if d % self.num_heads:
      raise ValueError(f"hidden_dim {d} (6 * width {self.width}) is not divisible by num_heads "
                       f"{self.num_heads}")
    n, hgt, wid, _ = x.shape
    if hgt % p or wid % p:
      raise ValueError(f"vit input {hgt}x{wid} is not divisible by the patch size {p} "
                       f"(stem {self.stem!r})")
    if self.image_size and (hgt, wid) != (self.image_size, self.image_size):
      raise ValueError(f"vit built for {self.image_size}x{self.image_size} images (image_size), "
                       f"got {hgt}x{wid}")
    seq = (hgt // p) * (wid // p) + 1
    if self.has_variable("params", "pos_embedding"):
      have = self.get_variable("params", "pos_embedding").shape[1]
      if have != seq:
        raise ValueError(f"vit position embedding has {have - 1} patches, the {hgt}x{wid} input "
                         f"has {seq - 1}: use the image size the model was initialised for")
    x = jnp.asarray(x, self.dtype)
    x = nn.Conv(d, (p, p), (p, p), padding="VALID", dtype=self.dtype,
                kernel_init=_trunc_normal_fan_in, bias_init=nn.initializers.zeros_init(),
                name="conv_proj")(x)
    x = x.reshape(n, -1, d)  # row-major over (H / p, W / p), as torch's reshape of NCHW
    cls = self.param("class_token", nn.initializers.zeros_init(), (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, d)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, seq, d), jnp.float32)
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = EncoderBlock(self.num_heads, 4 * d, self.dropout, self.attention_dropout, self.dtype,
                       name=f"encoder_layer_{i}")(x, train)
    x = nn.LayerNorm(LN_EPS, dtype=self.dtype, use_fast_variance=False, name="ln")(x)
    x = x[:, 0]
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros_init(),
                 bias_init=nn.initializers.zeros_init(), name="head")(x)
    return jnp.asarray(x, jnp.float32)


def vit_s_16(num_classes: int, width: int = 64, stem: str = "imagenet", dtype: Any = jnp.float32,
             image_size: int = 0) -> VisionTransformer:
  """ViT-S/16 (torchvision VisionTransformer(image_size, 16, 12, 6, 384, 1536) at width 64).
  image_size: 0 sizes the position embedding from the first input; set it to the torchvision
  model's image_size (e.g. 224) to load its weights."""
  if stem not in PATCH_SIZES:
    raise ValueError(f"unknown stem {stem!r}; use 'imagenet' or 'small'")
  return VisionTransformer(num_classes=num_classes, width=width, stem=stem, dtype=dtype,
                           image_size=int(image_size))


def check_image_size(model: VisionTransformer, size: int) -> str | None:
  """Why `model` cannot take square images of `size` px (None if it can)."""
  p = model.patch_size
  if size < p or size % p:
    return (f"vit_s_16 (stem {model.stem!r}) needs an image size divisible by its patch size {p}, "
            f"got {size}")
  if model.image_size and size != model.image_size:
    return f"vit_s_16 was built for {model.image_size} px images (image_size), got {size}"
  return None


def torch_mapping(model: VisionTransformer,
                  target: Mapping[str, Any]) -> list[tuple[str, str, tuple, str]]:
  """(torch key, flax collection, flax path, kind) for every variable of the ViT.

  The packed attention projection maps whole: in_proj_weight [3D, D] <-> in_proj kernel [D, 3D]
  ("dense"), in_proj_bias [3D] <-> bias. encoder.pos_embedding [1, S, D] is copied as is, so its
  S must match: build the model with the torchvision model's image_size.
  """
  params = target["params"]
  out = [("conv_proj.weight", "params", ("conv_proj", "kernel"), "conv"),
         ("conv_proj.bias", "params", ("conv_proj", "bias"), "vector"),
         ("class_token", "params", ("class_token",), "vector"),
         ("encoder.pos_embedding", "params", ("pos_embedding",), "vector")]

  def ln(torch_name, path):
    return [(f"{torch_name}.weight", "params", (*path, "scale"), "vector"),
            (f"{torch_name}.bias", "params", (*path, "bias"), "vector")]

  def dense(torch_name, path):
    return [(f"{torch_name}.weight", "params", (*path, "kernel"), "dense"),
            (f"{torch_name}.bias", "params", (*path, "bias"), "vector")]

  layers = sorted((k for k in params if re.fullmatch(r"encoder_layer_\d+", k)),
                  key=lambda k: int(k.rsplit("_", 1)[1]))
  for layer in layers:
    t = f"encoder.layers.{layer}"
    out += ln(f"{t}.ln_1", (layer, "ln_1"))
    out += [(f"{t}.self_attention.in_proj_weight", "params",
             (layer, "self_attention", "in_proj", "kernel"), "dense"),
            (f"{t}.self_attention.in_proj_bias", "params",
             (layer, "self_attention", "in_proj", "bias"), "vector")]
    out += dense(f"{t}.self_attention.out_proj", (layer, "self_attention", "out_proj"))
    out += ln(f"{t}.ln_2", (layer, "ln_2"))
    out += dense(f"{t}.mlp.0", (layer, "mlp_0"))
    out += dense(f"{t}.mlp.3", (layer, "mlp_3"))
  out += ln("encoder.ln", ("ln",))
  out += dense("heads.head", ("head",))
  return out


def describe_keys(keys: Sequence[str]) -> str | None:
  """'torchvision VisionTransformer with 12 encoder layers' for a ViT state_dict, else None."""
  layers = {m[1] for k in keys if (m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", k))}
  if not layers or "class_token" not in keys:
    return None
  return f"torchvision VisionTransformer with {len(layers)} encoder layers"


def describe_model(model: VisionTransformer) -> str:
  name = "vit_s_16" if (model.num_layers, model.num_heads) == (12, 6) else "VisionTransformer"
  size = f"image_size {model.image_size}" if model.image_size else "image_size from the input"
  return (f"{name} width {model.width} stem {model.stem!r} (hidden {6 * model.width}, "
          f"{model.num_layers} layers, {model.num_heads} heads, patch {model.patch_size}, {size})")
