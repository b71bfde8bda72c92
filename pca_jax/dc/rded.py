"""rded_like: an RDED-style distillation baseline (Sun et al. 2024, simplified; README says how).

A pool of random real images per class; random-resized crops of each are scored by the teacher's
probability of the true class; the most confident crops of each class are stitched rows x cols.
"""

from __future__ import annotations

import numpy as np

from pca_jax import rng


def rded_like_select(crops: np.ndarray, conf: np.ndarray, crop_labels: np.ndarray,
                     per_class: int) -> tuple[np.ndarray, np.ndarray]:
  """The per_class most teacher-confident crops of each class (ties: lower index), by class."""
  out_idx = []
  for c in np.unique(crop_labels):
    idx = np.flatnonzero(crop_labels == c)
    if idx.size < per_class:
      raise ValueError(f"class {int(c)} has only {idx.size} candidate crops for {per_class}; "
                       "raise benchmark.rded_crops_per_image or benchmark.rded_pool")
    order = np.lexsort((idx, -conf[idx]))
    out_idx.append(idx[order[:per_class]])
  out_idx = np.concatenate(out_idx)
  return crops[out_idx], crop_labels[out_idx]


def _most_confident_crops(run, teacher, idx, labels, seed, per_class):
  """The per_class most teacher-confident random crops of each class, from the pool `idx`.

  Two streaming passes over the pool (bounded memory at ImageNet scale): the first computes the
  teacher's p(label | crop) of every crop, the second regenerates only the chosen crops from the
  same keys. Returns (crops uint8 [C * per_class, S, S, 3], labels), by class.
  """
  import jax
  import jax.numpy as jnp
  from pca_jax import augment
  from pca_jax.data import pipeline
  bench = run.config.benchmark
  size = run.config.data.image_size
  k = int(bench.rded_crops_per_image)
  chunk = 256
  apply_fn, variables = teacher
  key = jax.random.key(rng.derive_seed(run.config.seed, "rded crops", seed))

  def crops_of(ckey, imgs):
    rep = jnp.repeat(imgs, k, axis=0)
    boxes = augment.sample_rrc_boxes(ckey, rep.shape[0], size, size, tuple(bench.rded_crop_scale))
    return augment.crop_and_resize(rep, boxes, (size, size))

  @jax.jit
  def confidence(ckey, imgs, labs):
    logits = apply_fn(variables, augment.normalize(crops_of(ckey, imgs)))
    return jax.nn.softmax(logits, -1)[jnp.arange(logits.shape[0]), jnp.repeat(labs, k)]

  crops_u8 = jax.jit(lambda ckey, imgs: jnp.clip(jnp.round(crops_of(ckey, imgs)), 0, 255)
                     .astype(jnp.uint8))

  def chunks():
    return enumerate(pipeline.iter_images(run.train_source, idx, size, chunk, fit="center_crop",
                                          num_threads=run.config.data.num_threads))

  conf = np.concatenate([np.asarray(confidence(jax.random.fold_in(key, c), imgs, lab))
                         for c, (imgs, lab) in chunks()])
  crop_labels = np.repeat(labels, k)
  chosen = rded_like_select(np.arange(len(conf)), conf, crop_labels, per_class)[0]
  out = np.zeros((len(chosen), size, size, 3), np.uint8)
  where = {int(g): i for i, g in enumerate(chosen)}  # global crop id -> output row
  per_chunk = chunk * k
  for c, (imgs, _) in chunks():
    wanted = [g for g in range(c * per_chunk, c * per_chunk + len(imgs) * k) if g in where]
    if wanted:
      crops = np.asarray(crops_u8(jax.random.fold_in(key, c), imgs))
      for g in wanted:
        out[where[g]] = crops[g - c * per_chunk]
  return out, crop_labels[chosen]


def build_rded_like(run, teacher, per_class: int, grid, seed: int):
  """(mosaics uint8 [C * per_class / cells, S, S, 3], labels, pool indices) of rded_like."""
  import jax
  from pca_jax.combine import make_mosaics
  from pca_jax.selection import select_per_class
  labels = np.asarray(run.train_source.labels)
  size = run.config.data.image_size
  pool_size = min(int(run.config.benchmark.rded_pool), int(np.bincount(labels).min()))
  pool = select_per_class(None, labels, pool_size, "random",
                          key=jax.random.key(rng.derive_seed(run.config.seed, "rded pool", seed)))
  chosen, chosen_labels = _most_confident_crops(run, teacher, pool, labels[pool], seed, per_class)
  mosaics, mosaic_labels = make_mosaics(chosen, chosen_labels, tuple(grid), (size, size))
  return np.asarray(mosaics), mosaic_labels, pool
