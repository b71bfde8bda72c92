"""The sizes a model trains and is evaluated at, and the evaluation preprocessing."""

from __future__ import annotations

from typing import Any

RESOLUTIONS = ("full", "patch", "blur")


def view_sizes(cfg: Any) -> tuple[int, int, int]:
  """(training view size, eval image size, blur size or 0) for cfg.resolution and cfg.grid.

  cfg: a train config block with image_size, grid, resolution, eval_image_size.
  """
  if cfg.resolution not in RESOLUTIONS:
    raise ValueError(f"unknown train.resolution {cfg.resolution!r}; choose one of {RESOLUTIONS}")
  full = cfg.image_size
  rows, cols = int(cfg.grid[0]), int(cfg.grid[1])
  if cfg.resolution == "full":
    return full, cfg.eval_image_size or full, 0
  if rows != cols:
    raise ValueError(f"train.resolution={cfg.resolution!r} needs a square grid to have square "
                     f"cells, got {rows}x{cols}; use a square grid or resolution='full'")
  if full % rows:
    raise ValueError(f"grid {rows}x{cols} does not divide image_size {full}")
  cell = full // rows
  if cell < 4:
    raise ValueError(f"train.resolution={cfg.resolution!r}: cells of {cell}px are too small to "
                     "train on; use a smaller grid or resolution='full'")
  if cfg.resolution == "patch":
    return cell, cell, 0
  return full, cfg.eval_image_size or full, cell


def eval_preprocess(images, eval_size: int, blur_size: int = 0, mean=None, std=None):
  """uint8 test images -> normalised float at eval_size; blur_size > 0 first resizes the images
  down to blur_size and back up (the "blur" evaluation: full size, patch-level detail)."""
  from pca_jax import augment
  mean = augment.IMAGENET_MEAN if mean is None else mean
  std = augment.IMAGENET_STD if std is None else std
  if blur_size:
    images = augment.center_resize(images, (blur_size, blur_size))
  return augment.normalize(augment.center_resize(images, (eval_size, eval_size)), mean, std)
