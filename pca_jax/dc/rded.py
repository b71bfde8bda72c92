"""rded: Realistic, Diverse and Efficient Dataset Distillation (Sun et al. 2024), as published.

Follows LINs-lab/RDED `synthesize/` (ImageNet-1K scripts: factor 2, num_crop 5, mipc 300):

1. per class, a pool of `mipc` random real images (capped at the smallest class's size, so every
   class has the same pool);
2. from each ORIGINAL image (full decoded resolution), `num_crop` RandomResizedCrops with aspect
   ratio 1 and scale (0.08, 1), resized (antialiased) to image_size / factor;
3. each crop is zero-padded (in normalised space) to image_size, centred, and scored by the
   teacher's cross-entropy on the true class (eval mode); each image keeps its lowest-loss crop;
4. per class the ipc x factor^2 lowest-loss crops are stitched factor x factor into `ipc` images:
   cell k of image i holds the crop ranked k * ipc + i (RDED's `mix_images`).

The student then sees RandomResizedCrops of the stitched images. RDED's own evaluation also relabels
every patch with the teacher's soft labels; here that happens only in the `soft` label mode (the
teacher labels every view), and the `hard` mode gives the stitched image its class.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np
from PIL import Image

from pca_jax import rng


def rded_select(losses: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """RDED's `selector` on precomputed losses.

  losses: [P, m] the teacher's cross-entropy of crop j of pool image p.
  Returns (best crop of every image [P] (the first minimum), the n pool images whose best crop has
  the lowest loss, ascending [n]; ties to the smaller index).
  """
  losses = np.asarray(losses, np.float64)
  if losses.ndim != 2:
    raise ValueError(f"losses must be [pool images, crops], got shape {losses.shape}")
  if n > losses.shape[0]:
    raise ValueError(f"rded needs {n} pool images per class but the pool has {losses.shape[0]}; "
                     "raise benchmark.rded_mipc or lower the IPC")
  best = np.argmin(losses, axis=1)
  dist = losses[np.arange(losses.shape[0]), best]
  return best, np.argsort(dist, kind="stable")[:n]


def stitch_order(ipc: int, factor: int) -> np.ndarray:
  """[ipc * factor^2] ranks in the make_mosaics order (mosaic i, cells row-major) for RDED's
  layout, where cell k of image i holds rank k * ipc + i."""
  cells = factor * factor
  return np.asarray([k * ipc + i for i in range(ipc) for k in range(cells)], np.int64)


def random_square_crops(image: np.ndarray, generator: np.random.Generator, num_crop: int,
                        size: int) -> np.ndarray:
  """`num_crop` RandomResizedCrops (ratio 1, scale (0.08, 1), torchvision's box rule) of one
  decoded image at its own resolution, each resized (bilinear, antialiased) to size x size.
  image uint8 [H, W, 3] -> [num_crop, size, size, 3] uint8."""
  from pca_jax.augment import sample_rrc_box_host
  h, w = image.shape[:2]
  pil = Image.fromarray(image)
  out = np.empty((num_crop, size, size, 3), np.uint8)
  for j in range(num_crop):
    top, left, bh, bw = sample_rrc_box_host(generator, h, w, (0.08, 1.0), (1.0, 1.0))
    out[j] = np.asarray(pil.resize((size, size), Image.BILINEAR,
                                   box=(left, top, left + bw, top + bh)))
  return out


def make_crop_loss(apply_fn, image_size: int, crop_size: int):
  """jit: (variables, crops uint8 [B, c, c, 3], labels [B]) -> the teacher's cross-entropy [B] on
  the crops normalised and zero-padded (centred) to image_size, as RDED's `pad` + `selector`."""
  import jax
  import jax.numpy as jnp
  import optax
  from pca_jax.augment import normalize
  before = (image_size - crop_size) // 2
  after = image_size - crop_size - before

  @jax.jit
  def crop_loss(variables, crops, labels):
    x = jnp.pad(normalize(crops), ((0, 0), (before, after), (before, after), (0, 0)))
    return optax.softmax_cross_entropy_with_integer_labels(apply_fn(variables, x), labels)
  return crop_loss


def build_rded(run, teacher, ipc: int, factor: int, seed: int):
  """(images uint8 [C * ipc, S, S, 3] by class, labels, pool indices) of rded."""
  import jax
  from pca_jax.combine import make_mosaics
  from pca_jax.selection import select_per_class
  from pca_jax.training.metrics import Progress
  cfg, src = run.config, run.train_source
  bench = cfg.benchmark
  size = int(cfg.data.image_size)
  if size % factor:
    raise ValueError(f"benchmark.rded_factor={factor} does not divide data.image_size={size}")
  crop_size, num_crop = size // factor, int(bench.rded_num_crop)
  n = ipc * factor * factor
  labels = np.asarray(src.labels)
  counts = np.bincount(labels, minlength=src.num_classes)
  mipc = min(int(bench.rded_mipc), int(counts.min()))
  if mipc < n:
    raise ValueError(f"rded at IPC {ipc} needs {n} pool images per class (ipc x factor^2) but the "
                     f"pool has {mipc} (benchmark.rded_mipc={bench.rded_mipc}, smallest class "
                     f"{int(counts.min())}); raise benchmark.rded_mipc or lower the IPC")
  pool = select_per_class(None, labels, mipc, "random", num_classes=src.num_classes,
                          key=jax.random.key(rng.derive_seed(cfg.seed, "rded pool", seed)))
  crop_seed = rng.derive_seed(cfg.seed, "rded crops", seed)
  apply_fn, variables = teacher
  crop_loss = make_crop_loss(apply_fn, size, crop_size)
  chunk = 256

  def crops_of(i: int) -> np.ndarray:
    image = np.asarray(src[int(i)][0])
    return random_square_crops(image, np.random.default_rng([crop_seed, int(i)]), num_crop,
                               crop_size)

  chosen, chosen_labels = [], []
  progress = Progress(src.num_classes, 0, f"rded ipc {ipc}")
  with concurrent.futures.ThreadPoolExecutor(max(1, int(cfg.data.num_threads))) as ex:
    try:
      for c in range(src.num_classes):
        members = pool[c * mipc:(c + 1) * mipc]
        crops = np.stack(list(ex.map(crops_of, members)))          # [mipc, m, c, c, 3]
        flat = crops.reshape(-1, crop_size, crop_size, 3)
        losses = np.empty(len(flat), np.float32)
        for s in range(0, len(flat), chunk):
          part = flat[s:s + chunk]
          padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], np.uint8)])
          out = crop_loss(variables, padded, np.full(chunk, c, np.int32))
          losses[s:s + len(part)] = np.asarray(out)[:len(part)]
        best, order = rded_select(losses.reshape(mipc, num_crop), n)
        ranked = crops[order, best[order]]                          # [n, c, c, 3], lowest loss first
        chosen.append(ranked[stitch_order(ipc, factor)])
        chosen_labels.append(np.full(n, c, np.int32))
        progress.update(c + 1, 1, {}, True)
    finally:
      progress.close()
  mosaics, mosaic_labels = make_mosaics(np.concatenate(chosen), np.concatenate(chosen_labels),
                                        (factor, factor), (size, size))
  return np.asarray(mosaics), mosaic_labels, pool
