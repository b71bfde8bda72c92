"""Top-1/top-5 over a whole split; padding masks make every example count exactly once."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from pca_jax import parallel


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


def evaluate(eval_step: Callable[[Any, Any, Any, Any], dict], state: Any,
             batches: Iterable[dict], mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Runs eval_step(state, images, labels, mask) over host-local padded batches.

  Returns {"top1", "top5", "loss", "count"} with top1/top5 in percent.
  """
  totals = None
  for _, (images, labels, mask) in parallel.prefetch_to_device(batches, mesh,
                                                               ("image", "label", "mask")):
    m = eval_step(state, images, labels, mask)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  if totals is None:
    raise ValueError("the evaluation split is empty")
  t = {k: float(v) for k, v in jax.device_get(totals).items()}
  n = t["count"]
  return {"top1": 100.0 * t["correct1"] / n, "top5": 100.0 * t["correct5"] / n,
          "loss": t["loss"] / n, "count": int(n)}
