"""Flax linen ResNets in the torchvision layout (ResNet-18/34/50/101, plus ResNet-10 for tests).

`stem="imagenet"`: 7x7 stride-2 conv + 3x3 stride-2 max-pool (224px inputs).
`stem="small"`: 3x3 stride-1 conv, no max-pool (CIFAR-sized inputs, 8-64px).
`width` scales every layer (64 = torchvision); narrow widths make CPU demos and tests fast.
`dtype` is the compute dtype (e.g. jnp.bfloat16); parameters are always float32.
Every convolution pads like torch.nn.Conv2d(padding=k // 2): k // 2 on each side ("SAME" would
pad (0, 1) in the stride-2 3x3 convs and shift them one pixel), so torchvision weights load
exactly (pca_jax.models.torch_weights). `padding="same"` (config model.padding) keeps flax's
"SAME", the layout of checkpoints written before; the field is part of every fingerprint that
covers the model, so runs made under the old layout are never resumed under the new one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ModuleDef = Any


def materialize(x):
  """Returns x unchanged, as one stored buffer on XLA:CPU (a no-op elsewhere).

  On CPU, XLA duplicates cheap elementwise chains (BatchNorm + residual add + ReLU) into
  every consumer. The weight-gradient convolutions read their input transposed, so each one
  recomputed the whole residual chain of the stage through strided reads: 0.5 s of a 2.1 s
  ResNet-18 step at 32px. Dividing by a 1 that XLA cannot prove to be 1 (0 * a converted
  bool + 1) is an "expensive" op that XLA will not duplicate, so the activation is computed
  once and the transposes read one buffer. Exact: x / 1 == x.
  """
  if jax.default_backend() != "cpu" or x.ndim == 0:
    return x
  flag = lax.stop_gradient(jnp.isfinite(x.reshape(-1)[0])).astype(x.dtype)
  return x / (flag * 0 + 1)


def _pool_taps(x):
  """The 9 strided windows of a 3x3 stride-2 pool with padding 1 (-inf), and the output size."""
  n, h, w, c = x.shape
  ho, wo = (h + 1) // 2, (w + 1) // 2
  xp = jnp.pad(x, ((0, 0), (1, 2 * ho - h), (1, 2 * wo - w), (0, 0)), constant_values=-jnp.inf)
  return [lax.slice(xp, (0, i, j, 0), (n, i + 2 * ho - 1, j + 2 * wo - 1, c), (1, 2, 2, 1))
          for i in range(3) for j in range(3)], (ho, wo)


@jax.custom_vjp
def max_pool_3x3_s2(x):
  """3x3 stride-2 max-pool with padding 1 (torchvision's stem pool).

  Same values as `nn.max_pool(x, (3, 3), (2, 2), [(1, 1), (1, 1)])`; the gradient goes to the
  first maximum in window order (PyTorch's rule). Written out because lax.reduce_window's
  gradient (select-and-scatter) on XLA:CPU cost more than the stem convolution it follows.
  """
  return _max_pool_fwd(x)[0]


def _max_pool_fwd(x):
  taps, _ = _pool_taps(x)
  best, idx = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
  for k, win in enumerate(taps[1:], start=1):
    upd = win > best
    best = jnp.where(upd, win, best)
    idx = jnp.where(upd, jnp.int8(k), idx)
  return best, (idx, x.shape)


def _max_pool_bwd(res, g):
  """Scatters g to the argmax of each window without select-and-scatter: the padded input grid
  splits into 4 parity phases; each phase is a sum of 1-4 shifted, masked copies of g."""
  idx, (n, h, w, c) = res
  phases = {}
  for i in range(3):
    for j in range(3):
      part = jnp.where(idx == 3 * i + j, g, jnp.zeros((), g.dtype))
      p, q = i % 2, j % 2
      part = jnp.pad(part, ((0, 0), (i // 2, 1 - p - i // 2), (j // 2, 1 - q - j // 2), (0, 0)))
      phases[p, q] = part if (p, q) not in phases else phases[p, q] + part

  def interleave(even, odd, axis):  # even has one more entry than odd along axis
    pad = [(0, 0)] * even.ndim
    pad[axis] = (0, 1)
    both = jnp.stack([even, jnp.pad(odd, pad)], axis=axis + 1)
    shape = list(even.shape)
    shape[axis] = 2 * even.shape[axis]
    return lax.slice_in_dim(both.reshape(shape), 0, 2 * even.shape[axis] - 1, axis=axis)

  rows0 = interleave(phases[0, 0], phases[0, 1], 2)
  rows1 = interleave(phases[1, 0], phases[1, 1], 2)
  grid = interleave(rows0, rows1, 1)  # [n, 2ho+1, 2wo+1, c], padded coordinates
  return (grid[:, 1:1 + h, 1:1 + w],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def _bn_stats(x):
  """Batch mean and (biased) variance per channel, in float32: E[x^2] - E[x]^2 like flax's
  default fast variance, so the two reductions read x in one sweep each."""
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axes)
  return mean, jnp.maximum(jnp.mean(xf * xf, axes) - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, dtype):
  """Training-mode BatchNorm over all but the last axis: (y, batch mean, batch variance).

  Same values as flax's `nn.BatchNorm(use_running_average=False)`; the gradient is written in
  closed form (two per-channel sums, then one elementwise pass), where autodiff of the flax
  version gave XLA more reductions and passes: ResNet-18 steps 4-9 % faster on CPU.
  """
  return _bn_fwd(x, scale, bias, epsilon, dtype)[0]


def _bn_fwd(x, scale, bias, epsilon, dtype):
  mean, var = _bn_stats(x)
  inv = lax.rsqrt(var + epsilon)
  a = scale * inv
  y = (x.astype(jnp.float32) * a + (bias - mean * a)).astype(dtype)
  return (y, mean, var), (x, mean, inv, scale)


def _bn_bwd(epsilon, dtype, res, cts):
  del epsilon, dtype
  x, mean, inv, scale = res
  g, g_mean, g_var = cts  # g_mean / g_var: cotangents of the returned statistics (usually 0)
  axes = tuple(range(x.ndim - 1))
  m = x.size // x.shape[-1]
  xf, gf = x.astype(jnp.float32), g.astype(jnp.float32)
  s1 = jnp.sum(gf, axes)                       # d bias
  t = inv * (jnp.sum(gf * xf, axes) - mean * s1)  # d scale = sum(g * x_hat)
  a = scale * inv
  k = -a * inv * t / m + 2.0 * g_var / m
  c = -a * s1 / m - k * mean + g_mean / m
  dx = (gf * a + xf * k + c).astype(x.dtype)
  return dx, t.astype(scale.dtype), s1.astype(scale.dtype)


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


def _example_weights(weights, x):
  """[N] example weights -> [N, 1, ..., 1] float32, broadcastable against x [N, ...]."""
  return weights.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))


def _weighted_bn_stats(x, weights):
  """Per-channel mean and (biased) variance of the examples, each counted `weights` times (a
  padding example with weight 0 does not count), and the per-position factor w / count."""
  axes = tuple(range(x.ndim - 1))
  xf, w = x.astype(jnp.float32), _example_weights(weights, x)
  count = jnp.maximum(jnp.sum(w) * (x.size // x.shape[0] // x.shape[-1]), 1e-12)
  mean = jnp.sum(w * xf, axes) / count
  var = jnp.maximum(jnp.sum(w * xf * xf, axes) / count - mean * mean, 0.0)
  return mean, var, w / count


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def batch_norm_train_weighted(x, weights, scale, bias, epsilon: float, dtype):
  """batch_norm_train with the batch statistics over the examples of weight > 0 only, e.g. a
  compressed set's last batch of an epoch, completed with weight-0 filler images: the filler is
  normalised with the real images' statistics and enters neither the statistics nor (through
  them) any real image's output, so the step equals one on the real images alone (the
  reference trains on a shorter last batch). weights: [N] (0/1 masks or any non-negative);
  returns (y, mean, var); no gradient flows to the weights."""
  return _bnw_fwd(x, weights, scale, bias, epsilon, dtype)[0]


def _bnw_fwd(x, weights, scale, bias, epsilon, dtype):
  mean, var, r = _weighted_bn_stats(x, weights)
  inv = lax.rsqrt(var + epsilon)
  a = scale * inv
  y = (x.astype(jnp.float32) * a + (bias - mean * a)).astype(dtype)
  return (y, mean, var), (x, weights, r, mean, inv, scale)


def _bnw_bwd(epsilon, dtype, res, cts):
  """d x_j = a g_j + r_j (-a S1 - a inv t (x_j - mean) + g_mean + 2 g_var (x_j - mean)), with
  r_j = w_j / count, S1 = sum g, t = inv sum g (x - mean) (the unweighted form has r = 1 / m)."""
  del epsilon, dtype
  x, weights, r, mean, inv, scale = res
  g, g_mean, g_var = cts
  axes = tuple(range(x.ndim - 1))
  xc, gf = x.astype(jnp.float32) - mean, g.astype(jnp.float32)
  s1 = jnp.sum(gf, axes)                  # d bias
  t = inv * jnp.sum(gf * xc, axes)        # d scale = sum(g * x_hat)
  a = scale * inv
  dx = gf * a + r * (xc * (2.0 * g_var - a * inv * t) + (g_mean - a * s1))
  return dx.astype(x.dtype), jnp.zeros_like(weights), t.astype(scale.dtype), s1.astype(scale.dtype)


batch_norm_train_weighted.defvjp(_bnw_fwd, _bnw_bwd)


class BatchNorm(nn.Module):
  """Drop-in for `nn.BatchNorm` as the ResNets use it (same parameter and batch_stats names, so
  checkpoints are interchangeable), with `batch_norm_train`'s closed-form gradient.

  Statistics are over all axes but the last; under `jax.jit` with a batch-sharded input they are
  global over the devices, as with flax's. Running averages: m * running + (1 - m) * batch.
  """

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  scale_init: Callable = nn.initializers.ones_init()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x, weights=None):
    """weights: [N] example weights for the training statistics (None: every example counts;
    see batch_norm_train_weighted); unused with running averages."""
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", self.bias_init, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    dtype = self.dtype or jnp.result_type(x.dtype, jnp.float32)
    if self.use_running_average:
      y = (x.astype(jnp.float32) - ra_mean.value) * (scale * lax.rsqrt(ra_var.value + self.epsilon))
      return (y + bias).astype(dtype)
    if weights is None:
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, dtype)
    else:
      y, mean, var = batch_norm_train_weighted(x, weights, scale, bias, self.epsilon, dtype)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
    return y


_TORCH_BN = (("weight", "params", "scale"), ("bias", "params", "bias"),
              ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))


def torch_bn_keys(torch_name: str, flax_module: tuple) -> list[tuple[str, str, tuple, str]]:
  """The torchvision state_dict entries of a BatchNorm at flax path flax_module: (torch key, flax
  collection, flax path, "vector") for weight / bias (params scale / bias) and running_mean /
  running_var (batch_stats mean / var); num_batches_tracked is not a variable here
  (pca_jax.models.torch_weights)."""
  return [(f"{torch_name}.{suffix}", collection, (*flax_module, leaf), "vector")
          for suffix, collection, leaf in _TORCH_BN]


def torch_padded_conv(features: int, kernel_size: Sequence[int],
                      strides: Sequence[int] = (1, 1), **kwargs: Any) -> nn.Conv:
  """nn.Conv padded like torchvision, (k // 2, k // 2) per spatial axis, unless `padding` is given.

  Flax's "SAME" pads (0, 1) where torch pads (1, 1) when a 3x3 stride-2 conv meets an even input,
  which shifts the output by one pixel and makes torchvision weights give other logits. Returns
  a plain nn.Conv (auto-named Conv_<n> in the calling module), so parameter names are unchanged.
  """
  kwargs.setdefault("padding", tuple((k // 2, k // 2) for k in kernel_size))
  return nn.Conv(features, tuple(kernel_size), tuple(strides), **kwargs)


class _Block(nn.Module):
  """Fields shared by the residual blocks."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: tuple[int, int] = (1, 1)
  zero_init_last: bool = False   # the last BatchNorm scale starts at 0 (block = identity at init)

  def last_norm(self):
    return self.norm(scale_init=nn.initializers.zeros_init()) if self.zero_init_last else self.norm()


class ResNetBlock(_Block):
  """Basic residual block (two 3x3 convs), used by ResNet-10/18/34."""

  @nn.compact
  def __call__(self, x, weights=None):
    x = materialize(x)
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = self.norm()(y, weights)
    y = materialize(nn.relu(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.last_norm()(y, weights)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual, weights)
    return nn.relu(residual + y)


class BottleneckResNetBlock(_Block):
  """Bottleneck block (1x1, 3x3, 1x1 with 4x expansion), used by ResNet-50."""

  @nn.compact
  def __call__(self, x, weights=None):
    x = materialize(x)
    residual = x
    y = self.conv(self.filters, (1, 1))(x)
    y = self.norm()(y, weights)
    y = materialize(nn.relu(y))
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = self.norm()(y, weights)
    y = materialize(nn.relu(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.last_norm()(y, weights)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual, weights)
    return nn.relu(residual + y)


# torchvision's ResNet initialisation: convolutions kaiming_normal_(mode="fan_out",
# nonlinearity="relu"), i.e. N(0, 2 / (kh * kw * out_channels)); BatchNorm scale 1, bias 0; the
# final nn.Linear keeps PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
TORCH_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> Callable:
  """PyTorch's nn.Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class ResNet(nn.Module):
  """ResNet v1.5 (stride on the 3x3 conv), torchvision parameter layout and initialisation.

  Input: images [B, H, W, C] float (already normalised). Output: logits [B, num_classes] float32.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int = 1000
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  act: Callable = nn.relu
  zero_init_residual: bool = False
  # "torch": every conv pads k // 2 on each side (torchvision); "same": flax's "SAME", the layout
  # of checkpoints written before issue 17 (shifted stride-2 3x3 convs), kept to evaluate them.
  padding: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = True, weights=None):
    """weights: [B] example weights for train-mode BatchNorm statistics (None: all count)."""
    if self.stem not in ("imagenet", "small"):
      raise ValueError(f"unknown stem {self.stem!r}; use 'imagenet' or 'small'")
    if self.padding not in PADDINGS:
      raise ValueError(f"unknown padding {self.padding!r}; choose one of {PADDINGS}")
    conv = functools.partial(torch_padded_conv if self.padding == "torch" else nn.Conv,
                             **({} if self.padding == "torch" else {"padding": "SAME"}),
                             use_bias=False, dtype=self.dtype, kernel_init=TORCH_CONV_INIT)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
      x = norm(name="bn_init")(x, weights)
      x = nn.relu(x)
      x = max_pool_3x3_s2(x)
    else:
      x = conv(self.width, (3, 3), (1, 1), name="conv_init")(x)
      x = norm(name="bn_init")(x, weights)
      x = nn.relu(x)
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(self.width * 2**i, strides=strides, conv=conv, norm=norm,
                           zero_init_last=self.zero_init_residual)(x, weights)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head", kernel_init=TORCH_LINEAR_INIT,
                 bias_init=torch_linear_bias_init(x.shape[-1]))(x)
    return jnp.asarray(x, jnp.float32)


ResNet10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=ResNetBlock)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)

ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckResNetBlock)

PADDINGS = ("torch", "same")
RESNETS = {"resnet10": ResNet10, "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50,
           "resnet101": ResNet101}
