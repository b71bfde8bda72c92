"""Mosaics of whole images (the "Combine" of PCA) and the geometry of their cells."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


FITS = ("squash", "center_crop")   # a whole image into its cell: resized, or centre-cropped


def check_combine_block(config) -> None:
  """combine.fit is known and combine.grid divides data.image_size."""
  from pca_jax.config import check_choice
  check_choice("combine.fit", config.combine.fit, FITS)
  grid, size = tuple(config.combine.grid), config.data.image_size
  if len(grid) != 2 or min(grid) < 1 or max(grid) > 8:
    raise ValueError(f"combine.grid={grid} is out of range; use (rows, cols) between 1 and 8")
  try:
    check_grid(grid, (size, size))
  except ValueError:
    raise ValueError(f"combine.grid={grid} does not divide data.image_size={size}; use an "
                     f"image size that is a multiple of {grid[0]} and {grid[1]}") from None


def check_grid(grid: tuple[int, int], out_size: tuple[int, int]) -> tuple[int, int]:
  """Validates a (rows, cols) grid against an output size; returns the cell size (h, w)."""
  if len(grid) != 2 or min(grid) < 1:
    raise ValueError(f"grid must be (rows, cols) with both >= 1, got {tuple(grid)}")
  gr, gc = int(grid[0]), int(grid[1])
  oh, ow = int(out_size[0]), int(out_size[1])
  if oh % gr or ow % gc:
    raise ValueError(f"grid {gr}x{gc} does not divide the image size {oh}x{ow}; "
                     f"use an image size that is a multiple of the grid")
  return oh // gr, ow // gc


def cell_boxes(grid: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
  """Each cell's (top, left, height, width), row-major. Returns [rows * cols, 4] int32."""
  ch, cw = check_grid(grid, out_size)
  return np.array([(r * ch, c * cw, ch, cw) for r in range(grid[0]) for c in range(grid[1])],
                  np.int32)


def resize_images(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes a batch [N, H, W, C] to [N, h, w, C] (bilinear, antialiased); keeps uint8 as uint8."""
  n, _, _, c = images.shape
  out = jax.image.resize(images.astype(jnp.float32), (n, size[0], size[1], c), "linear",
                         antialias=True)
  if images.dtype == jnp.uint8:
    out = jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
  return out


@functools.partial(jax.jit, static_argnames=("grid", "out_size"))
def _mosaic(images, grid, out_size):
  gr, gc = grid
  ch, cw = out_size[0] // gr, out_size[1] // gc
  cells = resize_images(images, (ch, cw))  # [M*gr*gc, ch, cw, C]
  m = images.shape[0] // (gr * gc)
  cells = cells.reshape(m, gr, gc, ch, cw, images.shape[-1])
  return cells.transpose(0, 1, 3, 2, 4, 5).reshape(m, gr * ch, gc * cw, images.shape[-1])


def make_mosaics(images: np.ndarray | jax.Array,
                 labels: np.ndarray,
                 grid: tuple[int, int] = (2, 2),
                 out_size: tuple[int, int] | None = None) -> tuple[jax.Array, np.ndarray]:
  """Combines consecutive groups of rows*cols whole images of one class into mosaics.

  Each image is resized whole (no cropping) into one cell, filled row-major.

  Args:
    images: [N, H, W, C] uint8 or float, N divisible by rows*cols.
    labels: [N] int; every group of rows*cols consecutive labels must be one class.
    grid: (rows, cols).
    out_size: (height, width) of the mosaic, default (H, W) (same bytes as one source image).

  Returns:
    (mosaics [N / (rows*cols), out_h, out_w, C] same dtype, labels [N / (rows*cols)]).
  """
  grid = (int(grid[0]), int(grid[1]))
  out_size = tuple(int(s) for s in (out_size or images.shape[1:3]))
  check_grid(grid, out_size)
  labels = np.asarray(labels)
  cells = grid[0] * grid[1]
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
  if len(labels) != images.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {len(labels)} labels")
  if images.shape[0] % cells:
    raise ValueError(f"{images.shape[0]} images cannot be split into groups of {cells} "
                     f"(grid {grid[0]}x{grid[1]}); select a multiple of {cells} per class")
  groups = labels.reshape(-1, cells)
  mixed = np.flatnonzero((groups != groups[:, :1]).any(axis=1))
  if mixed.size:
    raise ValueError(f"mosaic {int(mixed[0])} would mix classes {sorted(set(groups[mixed[0]]))}; "
                     "order images by class with a multiple of rows*cols per class")
  return _mosaic(jnp.asarray(images), grid, out_size), groups[:, 0].copy()
