"""Grain input pipelines for full datasets (host side: decoding and resizing on worker threads).

- `ordered_batches`: every example exactly once, in index order, with its global index and a mask
  for the padded tail; used for scoring (EL2N over the full train set) and evaluation.
- `train_batches`: shuffled per epoch with a seed, fixed-size uint8 images. For full-dataset
  training the random-resized crop is taken here, from the whole decoded image (as torchvision's
  RandomResizedCrop does), with the box rule of pca_jax.augment; flips run on device. Resumable:
  start at any step (deterministic in (seed, step)); the Grain iterator's get_state()/set_state()
  also works.
Each process reads only its shard: batches are split by jax.process_index()/process_count().

Decoding is per image: a Grain element is ONE example, read (`sources.read_example`), decoded and
resized on Grain's reader threads, and batches are stacked after, so every thread works on
every batch. Only with num_workers > 0 worker processes (`mp_prefetch`) is an element a whole
batch, so that a batch never spans workers; both are built from the same per-example loader
(`_batched`). Where the image is resized to a known shorter side (fit_image), sources may decode
JPEGs at 1/2, 1/4 or 1/8 size in the DCT domain (`sources.decode_image` with min_side).

Read-ahead is bounded in bytes: Grain decodes up to `prefetch_buffer_size` elements ahead of the
consumer (images, or whole batches with num_workers > 0: 154 MB at 224px with a local batch of
1024), so the buffer is sized from `prefetch_mb` by `read_ahead`, not fixed.
`images_decoded()` counts the examples the pipelines of this process have delivered.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import grain
import jax
import numpy as np
from PIL import Image

from pca_jax.data.sources import read_example, short_side_size


def resize_side(size: int, crop_fraction: float = 1.0) -> int:
  """The shorter side fit_image's centre crop resizes an image to: round(size / crop_fraction).
  Readers pass it as min_side (`sources.read_example`), so that a large JPEG is decoded at
  reduced size and resized to it by the source (fit_image then only crops)."""
  return int(round(size / crop_fraction))


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
  nh, nw = short_side_size(h, w, resize_side(size, crop_fraction))
  if (nh, nw) != (h, w):  # an image at that size (decode_image with min_side) is only cropped
    image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR, reducing_gap=None))
  top, left = (nh - size) // 2, (nw - size) // 2
  # compact: an image waiting in the read-ahead holds S x S x 3 bytes, not the resized whole
  return np.ascontiguousarray(image[top:top + size, left:left + size])


def _process(process_index, process_count):
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if not 0 <= pi < pc:
    raise ValueError(f"process_index {pi} out of range for {pc} processes")
  return pi, pc


MAX_PREFETCH_BUFFER = 64  # Grain elements read ahead at most (images, or batches with workers)
MIB = 1 << 20


def image_batch_bytes(batch: int, image_size: int) -> int:
  """Bytes of the decoded uint8 images of `batch` examples: batch x S x S x 3 (labels, indices
  and masks add ~13 B per example and are left out). 224px: 150,528 B per image; batch 1024:
  154,140,672 B."""
  return int(batch) * int(image_size) ** 2 * 3


def read_ahead(element_bytes: int, prefetch_mb: float, num_threads: int,
               num_workers: int = 0) -> tuple[int, int]:
  """(prefetch_buffer_size, num_threads) for Grain's ReadOptions under a host-memory budget.

  The buffer holds max(1, floor(prefetch_mb MiB / element_bytes)) decoded elements, at most
  MAX_PREFETCH_BUFFER; with num_workers > 0 processes each worker has its own buffer, so each gets
  1/num_workers of the budget. Threads are capped at the buffer size: Grain submits at most
  `buffer` elements ahead, so threads beyond it would idle. The budget counts elements waiting or
  being decoded in the buffer; the batch being stacked, the consumer's batch and
  `parallel.prefetch_to_device`'s queue (train.prefetch batches) come on top.

  Elements are single images (num_workers == 0): 64 images (9.6 MB at 224px) then stay in
  flight, which keeps up to 64 threads busy; the batch-level read-ahead is
  `parallel.prefetch_to_device`'s background thread, which stacks the next batches while the
  device step runs. A longer image buffer buys nothing and costs: Grain's prefetch iterator
  scans the buffer's ready prefix on every element (~1 us per ready element: 250 us per image
  with 256 ready, i.e. a consumer capped at 4,000 img/s). With num_workers > 0 elements are whole
  batches: at 224px x 1024 and 1024 MiB, buffer 6, threads min(num_threads, 6).
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


_decoded = [0]  # examples delivered by this process's pipelines (see images_decoded)
_decoded_lock = threading.Lock()


def images_decoded() -> int:
  """The number of examples the pipelines of this process have read from their sources and
  delivered (ordered_batches, train_batches, iter_images; padding not counted).

  Counted in the consuming process as each batch (iter_images: chunk) comes out, so worker
  processes (num_workers > 0) are counted too; images read ahead but never consumed (an early
  stop) are not. The difference around a stage is its decodes, e.g. epochs x N for scoring that
  reads each image once for all K models.
  """
  return _decoded[0]


def _count_decoded(n: int) -> None:
  with _decoded_lock:
    _decoded[0] += int(n)


def _counted(batch: dict) -> dict:
  _count_decoded(batch["mask"].sum() if "mask" in batch else len(batch["label"]))
  return batch


def _stack_examples(examples: list[dict]) -> dict:
  """Per-example dicts -> one batch dict, each value stacked on a new leading axis."""
  return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


def _fill_batch(load_example: Callable[[int], dict], first: int, count: int) -> dict:
  """load_example(first), ..., load_example(first + count - 1) as one batch, each example written
  into the batch arrays as it is loaded (no list of images held next to the stacked copy)."""
  batch: dict = {}
  for k in range(count):
    example = load_example(first + k)
    if not batch:
      batch = {key: np.empty((count,) + np.shape(v), np.asarray(v).dtype)
               for key, v in example.items()}
    for key, v in example.items():
      batch[key][k] = v
  return batch


def _batched(load_example: Callable[[int], dict], first_batch: int, stop_batch: int, batch: int,
             image_size: int, prefetch_mb: float, num_threads: int,
             num_workers: int) -> grain.IterDataset:
  """Batches b = first_batch .. stop_batch - 1 of examples load_example(b * batch + k), k <
  batch, stacked into {key: [batch, ...]}; load_example(j) returns one example's dict of arrays
  (its "image" uint8 [S, S, 3]).

  num_workers == 0: each Grain element is one example, loaded on the reader threads under a
  read-ahead of images (`read_ahead`), stacked into batches after. num_workers > 0: each element
  is a whole batch that one worker process fills (`_fill_batch`), so no batch spans workers.
  Either way the consuming process counts each batch's real examples (`images_decoded`).
  """
  if num_workers > 0:
    ds = grain.MapDataset.range(first_batch, stop_batch).map(
        lambda b: _fill_batch(load_example, b * batch, batch))
    it = ds.to_iter_dataset(_read_options(image_batch_bytes(batch, image_size), prefetch_mb,
                                          num_threads, num_workers))
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  else:
    ds = grain.MapDataset.range(first_batch * batch, stop_batch * batch).map(load_example)
    it = ds.to_iter_dataset(_read_options(image_batch_bytes(1, image_size), prefetch_mb,
                                          num_threads))
    it = it.batch(batch, batch_fn=_stack_examples)
  return it.map(_counted)


def num_ordered_batches(num_examples: int, local_batch: int, process_count: int = 1) -> int:
  return max(1, math.ceil(num_examples / (local_batch * process_count)))


def ordered_batches(source: Any, local_batch: int, image_size: int, crop_fraction: float = 1.0,
                    num_threads: int = 8, num_workers: int = 0,
                    process_index: int | None = None,
                    process_count: int | None = None,
                    prefetch_mb: float = 1024) -> grain.IterDataset:
  """Every example once: batches {"image" uint8 [B,S,S,3], "label" int32, "index" int64 (-1 =
  pad), "mask" bool}.

  The padded length is a multiple of local_batch * process_count so that every process yields the
  same number of batches (a requirement of multi-host jit); process p takes the p-th block of each
  global batch. Padding reads nothing: zero images, label 0. Images are resized + centre-cropped
  (fit_image), read with min_side = resize_side(S, crop_fraction) so that large JPEGs decode at
  reduced size. At most ~prefetch_mb MiB of decoded images are read ahead (see `read_ahead`).
  """
  pi, pc = _process(process_index, process_count)
  n = len(source)
  steps = num_ordered_batches(n, local_batch, pc)
  min_side = resize_side(image_size, crop_fraction)

  def load_example(j: int) -> dict:
    step, k = divmod(j, local_batch)
    i = (step * pc + pi) * local_batch + k
    if i >= n:
      return {"image": np.zeros((image_size, image_size, 3), np.uint8), "label": np.int32(0),
              "index": np.int64(-1), "mask": np.bool_(False)}
    image, label = read_example(source, i, min_side)
    return {"image": fit_image(image, image_size, crop_fraction), "label": np.int32(label),
            "index": np.int64(i), "mask": np.bool_(True)}

  return _batched(load_example, 0, steps, local_batch, image_size, prefetch_mb, num_threads,
                  num_workers)


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
  Starts at `start_step` (resume) without reading the skipped batches. crop=None reads with
  min_side = S (large JPEGs decode at reduced size); crop=(scale, ratio) decodes at full size. At
  most ~prefetch_mb MiB of decoded images are read ahead (see `read_ahead`).
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
  orders: dict[int, np.ndarray] = {}  # epoch -> its order; the last two epochs are kept

  def order_of(epoch: int) -> np.ndarray:
    order = orders.get(epoch)
    if order is None:  # reader threads may each compute an epoch once: same result
      order = orders[epoch] = epoch_order(n, seed, epoch)
      for old in [e for e in list(orders) if e < epoch - 1]:
        orders.pop(old, None)
    return order

  def load_example(j: int) -> dict:
    step, k = divmod(j, local)
    epoch, step_in_epoch = divmod(step, per_epoch)
    i = int(order_of(epoch)[step_in_epoch * global_batch + pi * local + k])
    if crop is None:
      image, label = read_example(source, i, image_size)
      image = fit_image(image, image_size)
    else:  # full size: a small box of a reduced image would be upsampled
      image, label = read_example(source, i)
      gen = rng.host_rng(seed, "augment", step, pi * local + k)
      image = random_resized_crop_host(image, image_size, gen, crop[0], crop[1])
    return {"image": image, "label": np.int32(label), "index": np.int64(i)}

  return _batched(load_example, start_step, total, local, image_size, prefetch_mb, num_threads,
                  num_workers)


def iter_images(source: Any, indices: np.ndarray, image_size: int, chunk: int,
                fit: str = "center_crop", crop_fraction: float = 1.0,
                num_threads: int = 8, prefetch_mb: float = 1024) -> Any:
  """Yields (images uint8 [<=chunk, S, S, 3], labels [<=chunk]) for `indices`, in order.

  Decoding and resizing run on Grain reader threads; only one chunk is in memory at a time, plus
  the read-ahead of single images (`read_ahead` of one S x S x 3 image: 64). Counts into
  `images_decoded`. fit="center_crop" reads with min_side = resize_side(S, crop_fraction) (DCT
  scaling); fit="squash" decodes at full size: its resize of the whole image to S x S would
  resample the longer side a second time after the source's resize to the shorter side (mean
  |difference| to full decoding up to 2.9 of 255 at 32-112px, against 1.6 for one resize of the
  reduced image), and mosaics read few images, so the saving would be small there.
  """
  indices = np.asarray(indices)
  min_side = resize_side(image_size, crop_fraction) if fit == "center_crop" else 0

  def load(i: int):
    img, label = read_example(source, int(i), min_side)
    return fit_image(img, image_size, crop_fraction, fit), label

  ds = grain.MapDataset.source(indices).map(load).to_iter_dataset(
      _read_options(image_batch_bytes(1, image_size), prefetch_mb, num_threads))
  images, labels = [], []
  for img, label in ds:
    images.append(img)
    labels.append(label)
    if len(images) == chunk:
      _count_decoded(len(images))
      yield np.stack(images), np.asarray(labels, np.int64)
      images, labels = [], []
  if images:
    _count_decoded(len(images))
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
