"""On-device, jit-able augmentations with explicit PRNG keys (the "Augment" of PCA).

All functions take a batch [N, H, W, C] (uint8 or float) and return float32, so they run inside the
jitted train step: no host round trip per batch.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pca_jax.combine import check_grid, cell_boxes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_KINDS = ("patch", "rrc", "none")


def rrc_boxes_from_uniforms(xp, u_area, u_ratio, u_top, u_left, height: int, width: int,
                            scale: Sequence[float], ratio: Sequence[float]):
  """torchvision's RandomResizedCrop box rule on given uniform draws, for numpy or jax (`xp`).

  u_area, u_ratio: [..., attempts] uniforms in [0, 1); u_top, u_left: [...]. Each example takes the
  first of its `attempts` (area, log-aspect) draws that fits inside height x width, else a centre
  crop clipped to `ratio` (torchvision's fallback). Returns [..., 4] float boxes (top, left, h, w).
  One rule serves the jitted crops on device and the host-side crops of decoded images.
  """
  area = float(height * width)
  target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
  lo, hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = xp.exp(lo + (hi - lo) * u_ratio)
  w = xp.round(xp.sqrt(target * aspect))
  h = xp.round(xp.sqrt(target / aspect))
  ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
  first = xp.argmax(ok, axis=-1)[..., None]
  found = ok.any(axis=-1)
  h = xp.take_along_axis(h, first, axis=-1)[..., 0]
  w = xp.take_along_axis(w, first, axis=-1)[..., 0]
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fw, fh = width, round(width / ratio[0])
  elif in_ratio > ratio[1]:
    fh, fw = height, round(height * ratio[1])
  else:
    fh, fw = height, width
  h = xp.where(found, h, fh)
  w = xp.where(found, w, fw)
  top = xp.floor(u_top * (height - h + 1))
  left = xp.floor(u_left * (width - w + 1))
  return xp.stack([top, left, h, w], axis=-1)


def sample_rrc_boxes(key: jax.Array, n: int, height: int, width: int,
                     scale: Sequence[float] = (0.08, 1.0),
                     ratio: Sequence[float] = (3 / 4, 4 / 3),
                     attempts: int = 10) -> jax.Array:
  """torchvision's RandomResizedCrop box sampling, vectorised over n examples (jit-able).

  Returns [n, 4] float32 boxes (top, left, h, w) in pixels of the height x width image.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  boxes = rrc_boxes_from_uniforms(
      jnp, jax.random.uniform(k_area, (n, attempts)), jax.random.uniform(k_ratio, (n, attempts)),
      jax.random.uniform(k_top, (n,)), jax.random.uniform(k_left, (n,)), height, width, scale, ratio)
  return boxes.astype(jnp.float32)


def sample_rrc_box_host(rng: np.random.Generator, height: int, width: int,
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3),
                        attempts: int = 10) -> tuple[int, int, int, int]:
  """One RandomResizedCrop box (top, left, h, w) in integer pixels of a decoded image, on the host
  (numpy; the same rule as `sample_rrc_boxes`), for crops taken before the resize to a fixed size."""
  u = rng.random(2 * attempts + 2)
  box = rrc_boxes_from_uniforms(np, u[:attempts], u[attempts:2 * attempts], u[-2], u[-1], height,
                                width, scale, ratio)
  return tuple(int(v) for v in box)


def crop_and_resize(images: jax.Array, boxes: jax.Array, out_size: Sequence[int]) -> jax.Array:
  """Crops each image to its box (top, left, h, w) and resizes to out_size (bilinear, antialiased).

  Only pixels of the source image are read. images [N, H, W, C], boxes [N, 4] -> [N, oh, ow, C] f32.
  """
  oh, ow = int(out_size[0]), int(out_size[1])
  c = images.shape[-1]

  def one(img, box):
    top, left, h, w = box[0], box[1], box[2], box[3]
    s = jnp.stack([oh / h, ow / w])
    t = jnp.stack([-top * s[0], -left * s[1]])
    return jax.image.scale_and_translate(img.astype(jnp.float32), (oh, ow, c), (0, 1), s, t,
                                         method="linear", antialias=True)
  return jax.vmap(one)(images, boxes)


def random_resized_crop(key: jax.Array, images: jax.Array, out_size: Sequence[int],
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """Standard ImageNet RandomResizedCrop, one box per example. [N,H,W,C] -> [N,oh,ow,C] float32."""
  n, h, w, _ = images.shape
  boxes = sample_rrc_boxes(key, n, h, w, scale, ratio)
  return crop_and_resize(images, boxes, out_size)


def select_cells(key: jax.Array, images: jax.Array, grid: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Picks one mosaic cell per example uniformly. Returns (cells [N, ch, cw, C], cell ids [N])."""
  n, h, w, c = images.shape
  ch, cw = check_grid(tuple(grid), (h, w))
  boxes = jnp.asarray(cell_boxes(tuple(grid), (h, w)))
  ids = jax.random.randint(key, (n,), 0, boxes.shape[0])
  tops, lefts = boxes[ids, 0], boxes[ids, 1]
  cells = jax.vmap(lambda im, t, l: jax.lax.dynamic_slice(im, (t, l, 0), (ch, cw, c)))(
      images, tops, lefts)
  return cells, ids


def patch_constrained_crop(key: jax.Array, images: jax.Array, grid: Sequence[int],
                           out_size: Sequence[int],
                           scale: Sequence[float] = (0.08, 1.0),
                           ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """PCA's augmentation: a RandomResizedCrop that lies entirely inside one random mosaic cell.

  The cell is cut out first, so no output pixel mixes two source images; the box's area is
  `scale` times the CELL's area. images [N, H, W, C] mosaics -> [N, oh, ow, C] float32.
  grid (1, 1) is the standard RandomResizedCrop.
  """
  k_cell, k_box = jax.random.split(key)
  cells, _ = select_cells(k_cell, images, grid)
  return random_resized_crop(k_box, cells, out_size, scale, ratio)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Horizontal flip of each example with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def cutmix(key: jax.Array, images: jax.Array, alpha: float = 1.0) -> jax.Array:
  """CutMix of images only (no label mixing): each example gets a box pasted from a shuffled partner.

  Used by the soft-label protocol, where the teacher labels the mixed image itself. The box area
  fraction is 1 - lambda with lambda ~ Beta(alpha, alpha), one lambda per batch (as in the reference
  code). images [N, H, W, C] float -> same shape.
  """
  n, h, w, _ = images.shape
  k_lam, k_perm, k_y, k_x = jax.random.split(key, 4)
  lam = jax.random.beta(k_lam, alpha, alpha)
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = jnp.floor(h * cut), jnp.floor(w * cut)
  cy = jax.random.randint(k_y, (), 0, h)
  cx = jax.random.randint(k_x, (), 0, w)
  y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
  partner = images[jax.random.permutation(k_perm, n)]
  return jnp.where(inside, partner, images)


def normalize(images: jax.Array, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> jax.Array:
  """uint8-range images -> (x / 255 - mean) / std in float32; mean/std per channel in [0, 1] units."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def center_resize(images: jax.Array, out_size: Sequence[int]) -> jax.Array:
  """Resizes whole images to out_size (evaluation at another resolution). Float32 output."""
  n, h, w, c = images.shape
  if (h, w) == tuple(out_size):
    return images.astype(jnp.float32)
  return jax.image.resize(images.astype(jnp.float32), (n, out_size[0], out_size[1], c), "linear",
                          antialias=True)


def make_train_augment(crop: str, out_size: Sequence[int], grid: Sequence[int] = (1, 1),
                       scale: Sequence[float] = (0.08, 1.0),
                       ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True,
                       mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Builds (key, uint8 images) -> normalised float32 training views, for use inside jit.

  crop: "patch" (patch_constrained_crop over `grid`), "rrc" (standard RandomResizedCrop of the whole
  stored image) or "none" (resize only).
  """
  if crop not in CROP_KINDS:
    raise ValueError(f"unknown crop {crop!r}; choose one of {CROP_KINDS}")
  out_size = (int(out_size[0]), int(out_size[1]))
  grid = (int(grid[0]), int(grid[1]))
  scale = (float(scale[0]), float(scale[1]))
  ratio = (float(ratio[0]), float(ratio[1]))
  if not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
  if not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {ratio}")

  def augment(key, images):
    k_crop, k_flip = jax.random.split(key)
    if crop == "patch":
      x = patch_constrained_crop(k_crop, images, grid, out_size, scale, ratio)
    elif crop == "rrc":
      x = random_resized_crop(k_crop, images, out_size, scale, ratio)
    else:
      x = center_resize(images, out_size)
    if flip:
      x = random_flip(k_flip, x)
    return normalize(x, mean, std)
  return augment
