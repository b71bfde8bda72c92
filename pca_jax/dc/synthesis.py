"""sre2l and cda: images recovered from a frozen teacher (Squeeze, Recover; Relabel = soft labels).

SRe2L (Yin et al. 2023) and CDA (Yin & Shen 2023) start `ipc` images per class from Gaussian noise
(in normalised pixel space) and optimise them, with the benchmark's teacher frozen in eval mode, to
minimise

  CE(teacher(aug(x)), class) + r_bn * sum_l w_l (||mu_l(aug(x)) - running_mean_l||_2
                                                 + ||var_l(aug(x)) - running_var_l||_2)

where mu_l / var_l are the batch statistics of the INPUT of BatchNorm layer l (w = 10 for the first
layer, 1 for the others). Every iteration draws one random-resized crop + flip for the whole batch
and rolls it by a random offset of up to `jitter` pixels (32 at 224 px, scaled with the image size);
Adam (betas 0.5, 0.9), cosine learning-rate decay to 0, pixels clipped to the valid range after each
step, the last iterate kept (the published settings, VILA-Lab/SRe2L recover.sh). CDA anneals the
crop's minimum scale from 1.0 to 0.08 (synthesis.crop_scale[0]) by a cosine over the first
`cda_milestone` fraction of the iterations (easy to hard). The BatchNorm statistics are read from the Flax model itself with
`nn.intercept_methods` (no second model definition), so any Flax model with BatchNorm works.

The batch is `synthesis.batch_size` (ipc index, class) pairs in order (ImageNet: 100 classes of one
ipc index, as in the original); it is padded to a multiple of the device count with masked examples
(excluded from the statistics and the loss) and sharded over the devices.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pca_jax import augment, parallel, rng

CDA_FINAL_MIN_SCALE = 0.08


def check_synthesis_block(syn) -> None:
  """benchmark.synthesis (sre2l / cda): every number in range."""
  from pca_jax.config import (check_int_at_least, check_number, check_positive_int,
                              check_unit_interval_pair)
  check_positive_int("benchmark.synthesis.iterations", syn.iterations)
  check_positive_int("benchmark.synthesis.batch_size", syn.batch_size)
  check_int_at_least("benchmark.synthesis.jitter", syn.jitter, 0, " (pixels at 224 px)")
  for field, ok, allowed in (("lr", lambda v: v > 0, "> 0"), ("r_bn", lambda v: v >= 0, ">= 0"),
                             ("first_bn_multiplier", lambda v: v >= 0, ">= 0"),
                             ("cda_milestone", lambda v: 0 < v <= 1, "in (0, 1]")):
    check_number(f"benchmark.synthesis.{field}", syn[field], ok, allowed)
  betas = tuple(syn.betas)
  if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
    raise ValueError(f"benchmark.synthesis.betas must be two numbers in [0, 1), got {betas}")
  check_unit_interval_pair("benchmark.synthesis.crop_scale", syn.crop_scale)


def _is_batch_norm(module: Any) -> bool:
  from pca_jax.models.resnet import BatchNorm
  return isinstance(module, (BatchNorm, nn.BatchNorm))


def bn_matching_loss(apply_fn: Callable[..., jax.Array], variables: Any, images: jax.Array,
                     mask: jax.Array | None = None, first_multiplier: float = 10.0,
                     ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
  """The teacher's logits and SRe2L's BatchNorm-statistics loss on a batch.

  apply_fn(variables, images) runs the model in eval mode; every BatchNorm call inside it is
  intercepted and the per-channel mean and biased variance of its input over (N, H, W) (only the
  examples with mask True) are compared with the layer's running statistics:
  term_l = ||running_var - var||_2 + ||running_mean - mean||_2.

  Returns (logits [N, C], sum_l w_l term_l with w = first_multiplier for the first BatchNorm called
  and 1 for the others, [term_l] in call order). Raises ValueError if the model has no BatchNorm.
  """
  terms: list[jax.Array] = []
  weight = None if mask is None else jnp.asarray(mask, jnp.float32)

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and _is_batch_norm(context.module):
      x = jnp.asarray(args[0], jnp.float32)
      axes = tuple(range(x.ndim - 1))
      if weight is None:
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
      else:
        w = weight.reshape((-1,) + (1,) * (x.ndim - 1))
        count = jnp.sum(w) * math.prod(x.shape[1:-1])
        mean = jnp.sum(x * w, axes) / count
        var = jnp.sum(jnp.square(x - mean) * w, axes) / count
      running_mean = context.module.get_variable("batch_stats", "mean")
      running_var = context.module.get_variable("batch_stats", "var")
      terms.append(jnp.linalg.norm(running_var - var) + jnp.linalg.norm(running_mean - mean))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    logits = apply_fn(variables, images)
  if not terms:
    raise ValueError("sre2l/cda need a teacher with BatchNorm layers (they match its running "
                     "statistics); this teacher has none: use a ResNet teacher")
  total = first_multiplier * terms[0] + sum(terms[1:], jnp.zeros((), jnp.float32))
  return logits, total, terms


def check_batch_norm_teacher(apply_fn, variables, image_size: int) -> None:
  """Raises the one-line ValueError of bn_matching_loss up front (shapes only, nothing runs)."""
  if not isinstance(variables, dict) or not variables.get("batch_stats"):
    raise ValueError("sre2l/cda need a teacher with BatchNorm running statistics; the teacher's "
                     "variables have no batch_stats: use a ResNet teacher trained with BatchNorm")
  jax.eval_shape(lambda v: bn_matching_loss(apply_fn, v, jnp.zeros((2, image_size, image_size, 3)))
                 [1], variables)


def cda_min_scale(iteration, iterations: int, milestone: float = 1.0,
                  final: float = CDA_FINAL_MIN_SCALE):
  """CDA's curriculum: the crop's minimum scale, cosine from 1.0 (iteration 0) down to `final`
  (0.08, the published value; synthesis.crop_scale[0]) at iteration milestone x iterations, `final`
  after (recover_cda_in1k.py, easy2hard_mode="cosine")."""
  end = milestone * iterations
  it = jnp.asarray(iteration, jnp.float32)
  cos = final + (1.0 - final) * (1 + jnp.cos(jnp.pi * it / max(end, 1e-9))) / 2
  return jnp.where(it < end, cos, final)


def jitter_pixels(jitter_at_224: int, image_size: int) -> int:
  """The roll jitter scaled to the image size: 32 px at 224 -> 2 px at 16."""
  return int(round(jitter_at_224 * image_size / 224))


def _pixel_bounds(mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD):
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return jnp.asarray(-mean / std), jnp.asarray((1 - mean) / std)


def to_uint8(x: jax.Array, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD) -> jax.Array:
  """Normalised images -> uint8 as the original saves them: clamp(x * std + mean, 0, 1) * 255,
  truncated."""
  img = jnp.clip(x * jnp.asarray(std) + jnp.asarray(mean), 0.0, 1.0)
  return (img * 255.0).astype(jnp.uint8)


def initial_images(key: jax.Array, n: int, size: int) -> jax.Array:
  """The starting point of recover(key, ...): N(0, 1) noise in normalised pixel space, [n, S, S, 3].
  Example i's noise depends on (key, i) only, so padding the batch to another device count does
  not change the real examples' start."""
  k_init = jax.random.split(key)[0]
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k_init, i), (size, size, 3),
                                              jnp.float32))(jnp.arange(n))


def make_recover(apply_fn: Callable[..., jax.Array], *, image_size: int, iterations: int,
                 lr: float = 0.25, betas: tuple[float, float] = (0.5, 0.9), r_bn: float = 0.01,
                 first_bn_multiplier: float = 10.0, jitter: int = 32,
                 crop_scale: tuple[float, float] = (0.08, 1.0), cda: bool = False,
                 cda_milestone: float = 1.0, mesh: jax.sharding.Mesh | None = None):
  """A jitted recover(variables, key, targets [B] int, mask [B] bool) -> images [B, S, S, 3] float
  (normalised), running all `iterations` in one lax.fori_loop. `jitter` is in pixels of image_size
  (see jitter_pixels). B should be a multiple of the mesh size: the batch is sharded over it."""
  lo, hi = _pixel_bounds()
  size = int(image_size)
  schedule = optax.cosine_decay_schedule(lr, iterations)
  tx = optax.adam(schedule, b1=betas[0], b2=betas[1], eps=1e-8)
  mesh = mesh or parallel.make_mesh()
  shard = parallel.batch_sharding(mesh)

  def augmented(key, x, iteration):
    k_box, k_flip, k_roll = jax.random.split(key, 3)
    min_scale = (cda_min_scale(iteration, iterations, cda_milestone, crop_scale[0]) if cda
                 else crop_scale[0])
    box = augment.sample_rrc_boxes(k_box, 1, size, size, (min_scale, crop_scale[1]))
    view = augment.crop_and_resize(x, jnp.repeat(box, x.shape[0], axis=0), (size, size))
    view = jnp.where(jax.random.bernoulli(k_flip), view[:, :, ::-1], view)
    shifts = jax.random.randint(k_roll, (2,), 0, jitter + 1)  # torch.roll by randint(0, jitter)
    return jnp.roll(view, (shifts[0], shifts[1]), axis=(1, 2))

  def loss_fn(x, variables, key, iteration, targets, mask):
    logits, bn_loss, _ = bn_matching_loss(apply_fn, variables, augmented(key, x, iteration), mask,
                                          first_bn_multiplier)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    w = mask.astype(jnp.float32)
    return jnp.sum(ce * w) / jnp.sum(w) + r_bn * bn_loss

  grad_fn = jax.grad(loss_fn)

  @jax.jit
  def recover(variables, key, targets, mask):
    x = jax.lax.with_sharding_constraint(initial_images(key, targets.shape[0], size), shard)
    k_loop = jax.random.split(key)[1]

    def body(i, carry):
      x, opt_state = carry
      g = grad_fn(x, variables, jax.random.fold_in(k_loop, i), i, targets, mask)
      updates, opt_state = tx.update(g, opt_state, x)
      x = jnp.clip(optax.apply_updates(x, updates), lo, hi)
      return jax.lax.with_sharding_constraint(x, shard), opt_state

    x, _ = jax.lax.fori_loop(0, iterations, body, (x, tx.init(x)))
    return x
  return recover


def synthesis_targets(num_classes: int, ipc: int) -> np.ndarray:
  """[ipc * C] class ids in the original's order: ipc index 0 of every class, then index 1, ..."""
  return np.tile(np.arange(num_classes, dtype=np.int32), ipc)


def build_synthetic(run, teacher, ipc: int, seed: int, cda: bool) -> tuple[np.ndarray, np.ndarray,
                                                                          np.ndarray]:
  """(images uint8 [C * ipc, S, S, 3] by class, labels, no source indices) of sre2l / cda."""
  from pca_jax.training.metrics import Progress
  cfg = run.config
  syn = cfg.benchmark.synthesis
  apply_fn, variables = teacher
  size = int(cfg.data.image_size)
  check_batch_norm_teacher(apply_fn, variables, size)
  num_classes = run.train_source.num_classes
  targets = synthesis_targets(num_classes, ipc)
  mesh = parallel.make_mesh()
  ndev = mesh.devices.size
  batch = min(int(syn.batch_size), len(targets))
  padded = -(-batch // ndev) * ndev
  recover = make_recover(apply_fn, image_size=size, iterations=int(syn.iterations), lr=syn.lr,
                         betas=tuple(syn.betas), r_bn=syn.r_bn,
                         first_bn_multiplier=syn.first_bn_multiplier,
                         jitter=jitter_pixels(syn.jitter, size), crop_scale=tuple(syn.crop_scale),
                         cda=cda, cda_milestone=syn.cda_milestone, mesh=mesh)
  name = "cda" if cda else "sre2l"
  key = jax.random.key(rng.derive_seed(cfg.seed, name, seed))
  variables = parallel.replicate(variables, mesh)
  out = np.zeros((len(targets), size, size, 3), np.uint8)
  progress = Progress(len(targets), 0, f"{name} recover ipc {ipc}")
  try:
    for b, start in enumerate(range(0, len(targets), batch)):
      t = targets[start:start + batch]
      mask = np.arange(padded) < len(t)
      t_pad = np.resize(t, padded)
      t_dev, mask_dev = parallel.replicate((t_pad, mask), mesh)
      x = recover(variables, jax.random.fold_in(key, b), t_dev, mask_dev)
      out[start:start + len(t)] = parallel.to_host(to_uint8(x))[:len(t)]
      progress.update(start + len(t), len(t), {}, True)
  finally:
    progress.close()
  order = np.argsort(targets, kind="stable")  # by class, ipc index within the class
  return out[order], targets[order], np.zeros(0, np.int64)


def build_noise(run, ipc: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images uint8 [C * ipc, S, S, 3] by class, labels, no source indices) of the `noise` method:
  the paper's "pure noise" control, SRe2L's starting images with no recovery step. Per image N(0, 1)
  noise in normalised pixel space (initial_images), saved as sre2l saves its output (to_uint8:
  x * std + mean clipped to [0, 1], x 255): every pixel channel spread around the ImageNet mean,
  about a third of them clipped at 0 or 255. Labels are the classes, ipc images each; seeded by
  (config.seed, "noise", seed). With hard labels a student can only reach chance on it; with
  soft labels whatever it learns comes from the teacher."""
  cfg = run.config
  size = int(cfg.data.image_size)
  num_classes = run.train_source.num_classes
  key = jax.random.key(rng.derive_seed(cfg.seed, "noise", seed))
  images = np.asarray(jax.jit(lambda k: to_uint8(initial_images(k, num_classes * ipc, size)))(key))
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), ipc)
  return images, labels, np.zeros(0, np.int64)
