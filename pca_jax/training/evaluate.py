"""Top-1/top-5 over a whole split; padding masks make every example count exactly once.

`evaluate(variables, source, ...)` scores saved variables on a real test/val split without the
trainer (no optimizer, no compressed set): the eval stage and the benchmark call it on the final
params. This module never imports the training loop; the loop imports it for periodic evaluations.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

from pca_jax import parallel
from pca_jax.training.views import eval_preprocess


def eval_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Sums (not means) of correct@1, correct@5, loss and count over the real (mask=True) examples."""
  mask = mask.astype(jnp.float32)
  k = min(5, logits.shape[-1])
  topk = jax.lax.top_k(logits, k)[1]
  hit = topk == labels[:, None]
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  return {"correct1": jnp.sum(hit[:, 0] * mask), "correct5": jnp.sum(hit.any(axis=1) * mask),
          "loss": jnp.sum(nll * mask), "count": jnp.sum(mask)}


def evaluate_batches(eval_step: Callable[[Any, Any, Any, Any], dict], variables: Any,
                     batches: Iterable[dict], mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Runs eval_step(variables, images, labels, mask) over host-local padded batches.

  Returns {"top1", "top5", "loss", "count"} with top1/top5 in percent.
  """
  totals = None
  for _, (images, labels, mask) in parallel.prefetch_to_device(batches, mesh,
                                                               ("image", "label", "mask")):
    m = eval_step(variables, images, labels, mask)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  if totals is None:
    raise ValueError("the evaluation split is empty")
  t = {k: float(v) for k, v in jax.device_get(totals).items()}
  n = t["count"]
  return {"top1": 100.0 * t["correct1"] / n, "top5": 100.0 * t["correct5"] / n,
          "loss": t["loss"] / n, "count": int(n)}


def make_eval_step(apply_fn: Callable, eval_size: int, blur_size: int = 0):
  """jit(variables, images uint8, labels, mask) -> summed metrics (see eval_preprocess).

  apply_fn: a flax `Module.apply` (called with train=False).
  """

  def step(variables, images, labels, mask):
    x = eval_preprocess(images, eval_size, blur_size)
    logits = apply_fn(variables, x, train=False)
    return eval_metrics(logits, labels, mask)
  return jax.jit(step)


def evaluate(variables: Any, source: Any, apply_fn: Callable, *, eval_size: int,
             blur_size: int = 0, crop_fraction: float = 1.0, batch_size: int = 256,
             num_threads: int = 8, mesh: jax.sharding.Mesh | None = None,
             eval_step: Callable | None = None) -> dict[str, float]:
  """Top-1/top-5 of `variables` on every example of `source` (a test/val split).

  Images are resized + centre-cropped to eval_size (crop_fraction 0.875 = Resize(256) +
  CenterCrop(224)); blur_size > 0 evaluates down-up resized images (train.resolution="blur").
  batch_size is global (split over the devices; rounded up to a multiple of the device count,
  parallel.forward_batch_size). Pass eval_step to reuse a compiled step.
  """
  from pca_jax.data import pipeline
  mesh = mesh or parallel.make_mesh()
  local = parallel.forward_batch_size(batch_size, mesh)
  eval_step = eval_step or make_eval_step(apply_fn, eval_size, blur_size)
  batches = pipeline.ordered_batches(source, local, eval_size, crop_fraction,
                                     num_threads=num_threads)
  return evaluate_batches(eval_step, parallel.replicate(variables, mesh), batches, mesh)
