"""Grain input pipelines for full datasets (host side: decoding and resizing on worker threads).

- `ordered_batches`: every example exactly once, in index order, with its global index and a mask
  for the padded tail; used for scoring (EL2N over the full train set) and evaluation.
- `train_batches`: shuffled per epoch with a seed, fixed-size uint8 images. For full-dataset
  training the random-resized crop is taken here, from the whole decoded image (as torchvision's
  RandomResizedCrop does), with the box rule of pca_jax.augment; flips run on device. Resumable:
  start at any step (deterministic in (seed, step)); the Grain iterator's get_state()/set_state()
  also works.
Each process reads only its shard: batches are split by jax.process_index()/process_count().

Read-ahead is bounded in bytes: Grain decodes up to `prefetch_buffer_size` elements ahead of the
consumer, and an element of the batch pipelines is a whole decoded batch (154 MB at 224px with a
local batch of 1024), so the buffer is sized from `prefetch_mb` by `read_ahead`, not fixed.
"""

from __future__ import annotations

import math
from typing import Any

import grain
import jax
import numpy as np
from PIL import Image


def fit_image(image: np.ndarray, size: int, crop_fraction: float = 1.0,
              fit: str = "center_crop") -> np.ndarray:
  """Brings an image to size x size uint8 RGB.

  fit="center_crop": resize the shorter side to size / crop_fraction, then centre-crop (crop_fraction
  0.875 at 224 is the standard ImageNet eval transform, Resize(256) + CenterCrop(224)).
  fit="squash": resize the WHOLE image to size x size (aspect not kept, nothing cropped); this is
  how PCA puts whole images into mosaic cells.
  """
  h, w = image.shape[:2]
  if (h, w) == (size, size) and (crop_fraction == 1.0 or fit == "squash"):
    return image
  if fit == "squash":
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR,
                                                    reducing_gap=None))
  if fit != "center_crop":
    raise ValueError(f"unknown fit {fit!r}; use center_crop or squash")
  short = int(round(size / crop_fraction))
  if h <= w:
    nh, nw = short, max(short, int(round(w * short / h)))
  else:
    nw, nh = short, max(short, int(round(h * short / w)))
  im = Image.fromarray(image).resize((nw, nh), Image.BILINEAR, reducing_gap=None)
  top, left = (nh - size) // 2, (nw - size) // 2
  return np.asarray(im)[top:top + size, left:left + size]


def _process(process_index, process_count):
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if not 0 <= pi < pc:
    raise ValueError(f"process_index {pi} out of range for {pc} processes")
  return pi, pc


MAX_PREFETCH_BUFFER = 64  # Grain elements read ahead at most (the former fixed buffer)
MIB = 1 << 20


def image_batch_bytes(batch: int, image_size: int) -> int:
  """Bytes of the decoded uint8 images of one element: batch x S x S x 3 (labels, indices and masks
  add ~13 B per example and are left out). 224px, batch 1024: 154,140,672 B."""
  return int(batch) * int(image_size) ** 2 * 3


def read_ahead(element_bytes: int, prefetch_mb: float, num_threads: int,
               num_workers: int = 0) -> tuple[int, int]:
  """(prefetch_buffer_size, num_threads) for Grain's ReadOptions under a host-memory budget.

  The buffer holds max(1, floor(prefetch_mb MiB / element_bytes)) decoded elements, at most
  MAX_PREFETCH_BUFFER; with num_workers > 0 processes each worker has its own buffer, so each gets
  1/num_workers of the budget. Threads are capped at the buffer size: Grain submits at most
  `buffer` elements ahead, so threads beyond it would idle. The budget counts elements waiting or
  being decoded in the buffer; the consumer's batch and `parallel.prefetch_to_device`'s queue
  (train.prefetch batches) come on top. E.g. 224px, local batch 1024 (154,140,672 B) at 1024 MiB:
  buffer 6, threads min(num_threads, 6).
  """
  if not (prefetch_mb >= 0 and math.isfinite(prefetch_mb)):
    raise ValueError(f"prefetch_mb must be a finite number >= 0, got {prefetch_mb}")
  if element_bytes <= 0:
    raise ValueError(f"element_bytes must be > 0, got {element_bytes}")
  budget = prefetch_mb * MIB / max(1, int(num_workers))
  buffer = min(MAX_PREFETCH_BUFFER, max(1, math.floor(budget / element_bytes)))
  return buffer, min(max(1, int(num_threads)), buffer)


def _read_options(element_bytes: int, prefetch_mb: float, num_threads: int,
                  num_workers: int = 0) -> grain.ReadOptions:
  buffer, threads = read_ahead(element_bytes, prefetch_mb, num_threads, num_workers)
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer)


def _finish(ds: grain.MapDataset, element_bytes: int, prefetch_mb: float, num_threads: int,
            num_workers: int) -> grain.IterDataset:
  it = ds.to_iter_dataset(_read_options(element_bytes, prefetch_mb, num_threads, num_workers))
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it


def num_ordered_batches(num_examples: int, local_batch: int, process_count: int = 1) -> int:
  return max(1, math.ceil(num_examples / (local_batch * process_count)))


def ordered_batches(source: Any, local_batch: int, image_size: int, crop_fraction: float = 1.0,
                    num_threads: int = 8, num_workers: int = 0,
                    process_index: int | None = None,
                    process_count: int | None = None,
                    prefetch_mb: float = 1024) -> grain.IterDataset:
  """Every example once: batches {"image" uint8 [B,S,S,3], "label", "index" (-1 = pad), "mask"}.

  The padded length is a multiple of local_batch * process_count so that every process yields the
  same number of batches (a requirement of multi-host jit); process p takes the p-th block of each
  global batch. At most ~prefetch_mb MiB of decoded batches are read ahead (see `read_ahead`).
  """
  pi, pc = _process(process_index, process_count)
  n = len(source)
  steps = num_ordered_batches(n, local_batch, pc)

  def load(global_step: int) -> dict:
    start = (global_step * pc + pi) * local_batch
    idx = np.arange(start, start + local_batch)
    mask = idx < n
    # filled in place: a list of images plus its np.stack copy held each batch twice
    images = np.empty((local_batch, image_size, image_size, 3), np.uint8)
    labels = np.zeros(local_batch, np.int32)
    for k, (i, m) in enumerate(zip(idx, mask)):
      img, label = source[int(i) if m else 0]
      images[k] = fit_image(img, image_size, crop_fraction)
      labels[k] = label if m else 0
    return {"image": images, "label": labels,
            "index": np.where(mask, idx, -1).astype(np.int64), "mask": mask}

  return _finish(grain.MapDataset.range(steps).map(load),
                 image_batch_bytes(local_batch, image_size), prefetch_mb, num_threads, num_workers)


def train_steps_per_epoch(num_examples: int, global_batch: int) -> int:
  if global_batch > num_examples:
    raise ValueError(f"batch_size={global_batch} is larger than the dataset ({num_examples}); "
                     "lower the batch size")
  return num_examples // global_batch


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of example indices that epoch `epoch` visits: a pure function of (seed,
  epoch) drawn from the seed's "data" stream, so different seeds never share an epoch's order."""
  from pca_jax import rng
  return rng.host_rng(seed, "data", epoch).permutation(num_examples)


def random_resized_crop_host(image: np.ndarray, size: int, generator: np.random.Generator,
                             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision's RandomResizedCrop of a decoded image: a box drawn on the WHOLE image at its own
  resolution, cropped, then resized to size x size (bilinear, antialiased like PIL's resize)."""
  from pca_jax.augment import sample_rrc_box_host
  h, w = image.shape[:2]
  top, left, bh, bw = sample_rrc_box_host(generator, h, w, scale, ratio)
  crop = image[top:top + bh, left:left + bw]
  if crop.shape[:2] == (size, size):
    return crop
  return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR, reducing_gap=None))


def train_batches(source: Any, global_batch: int, image_size: int, seed: int, num_epochs: int,
                  start_step: int = 0, num_threads: int = 8, num_workers: int = 0,
                  crop: tuple[tuple[float, float], tuple[float, float]] | None = None,
                  process_index: int | None = None,
                  process_count: int | None = None,
                  prefetch_mb: float = 1024) -> grain.IterDataset:
  """Shuffled training batches {"image" uint8 [b,S,S,3], "label" [b], "index" [b]} for this process.

  Epoch e visits `epoch_order(N, seed, e)`; global batches of `global_batch` indices are cut from
  it (the tail of an epoch is dropped) and process p loads the p-th slice of each. crop=None: each
  image is resized + centre-cropped to S (the device then augments); crop=(scale, ratio): a
  random-resized crop of the decoded image, drawn from the seed's "augment" stream at (step,
  position in the global batch), so it is deterministic and independent of the process count.
  Starts at `start_step` (resume) without reading the skipped batches. At most ~prefetch_mb MiB of
  decoded batches are read ahead (see `read_ahead`).
  """
  from pca_jax import rng
  pi, pc = _process(process_index, process_count)
  if global_batch % pc:
    raise ValueError(f"batch_size={global_batch} is not divisible by {pc} processes")
  local = global_batch // pc
  n = len(source)
  per_epoch = train_steps_per_epoch(n, global_batch)
  total = per_epoch * num_epochs
  if not 0 <= start_step <= total:
    raise ValueError(f"start_step {start_step} outside [0, {total}]")
  cache: dict[str, tuple[int, np.ndarray]] = {}  # the current epoch's order, one slot

  def order_of(epoch: int) -> np.ndarray:
    held = cache.get("order")  # reader threads may each compute an epoch once: same result
    if held is None or held[0] != epoch:
      held = (epoch, epoch_order(n, seed, epoch))
      cache["order"] = held
    return held[1]

  def load(step: int) -> dict:
    epoch, j = divmod(step, per_epoch)
    first = j * global_batch + pi * local
    idx = order_of(epoch)[first:first + local]
    images = np.empty((len(idx), image_size, image_size, 3), np.uint8)  # filled in place
    labels = np.zeros(len(idx), np.int32)
    for k, i in enumerate(idx):
      img, label = source[int(i)]
      if crop is None:
        images[k] = fit_image(img, image_size)
      else:
        gen = rng.host_rng(seed, "augment", step, pi * local + k)
        images[k] = random_resized_crop_host(img, image_size, gen, crop[0], crop[1])
      labels[k] = label
    return {"image": images, "label": labels, "index": np.asarray(idx, np.int64)}

  return _finish(grain.MapDataset.range(start_step, total).map(load),
                 image_batch_bytes(local, image_size), prefetch_mb, num_threads, num_workers)


def iter_images(source: Any, indices: np.ndarray, image_size: int, chunk: int,
                fit: str = "center_crop", crop_fraction: float = 1.0,
                num_threads: int = 8, prefetch_mb: float = 1024) -> Any:
  """Yields (images uint8 [<=chunk, S, S, 3], labels [<=chunk]) for `indices`, in order.

  Decoding and resizing run on Grain reader threads; only one chunk is in memory at a time, plus
  the read-ahead of single images (`read_ahead` of one S x S x 3 image: 64 at 224px).
  """
  indices = np.asarray(indices)

  def load(i: int):
    img, label = source[int(i)]
    return fit_image(img, image_size, crop_fraction, fit), label

  ds = grain.MapDataset.source(indices).map(load).to_iter_dataset(
      _read_options(image_batch_bytes(1, image_size), prefetch_mb, num_threads))
  images, labels = [], []
  for img, label in ds:
    images.append(img)
    labels.append(label)
    if len(images) == chunk:
      yield np.stack(images), np.asarray(labels, np.int64)
      images, labels = [], []
  if images:
    yield np.stack(images), np.asarray(labels, np.int64)


def mosaics_from_source(source: Any, indices: np.ndarray, grid: tuple[int, int], image_size: int,
                        fit: str = "squash", num_threads: int = 8,
                        out: np.ndarray | None = None,
                        prefetch_mb: float = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Loads source[indices] (grouped by class, rows*cols per mosaic) and combines them.

  Returns (mosaics uint8 [len/cells, S, S, 3], labels int32). `out` may be a preallocated
  (memory-mapped) array to fill, so ImageNet-sized sets never sit in memory at once.
  """
  from pca_jax.combine import make_mosaics
  cells = int(grid[0]) * int(grid[1])
  m = len(indices) // cells
  if out is None:
    out = np.zeros((m, image_size, image_size, 3), np.uint8)
  labels = np.zeros(m, np.int32)
  pos = 0
  chunk = cells * max(1, 256 // cells)
  for images, lab in iter_images(source, indices, image_size, chunk, fit=fit,
                                 num_threads=num_threads, prefetch_mb=prefetch_mb):
    mosaics, mosaic_labels = make_mosaics(images, lab, tuple(grid), (image_size, image_size))
    out[pos:pos + len(mosaics)] = np.asarray(mosaics)
    labels[pos:pos + len(mosaics)] = mosaic_labels
    pos += len(mosaics)
  if pos != m:
    raise ValueError(f"built {pos} mosaics, expected {m}; the source changed while reading")
  return out, labels
