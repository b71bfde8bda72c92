"""Where a training step's batch comes from: the compressed set on device, or a full dataset.

A feed knows its batch size and epoch length, the crop the device still has to apply, and gives the
train step (training.steps.make_train_step) a `gather` function and, per step, the arrays it reads.
  * MemoryFeed: a compressed set (<= ~100k images) lives on the devices as uint8; epoch e visits a
    permutation drawn once at the epoch's start from the "data" stream, one augmented view per
    stored image per epoch.
  * SourceFeed: a random-access source read by a Grain pipeline; the random-resized crop is taken
    on the host from the whole decoded image (torchvision semantics), the flip on device.
Both are pure functions of (seed, step), so resuming replays the same batches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pca_jax import parallel, rng
from pca_jax.data import pipeline


@dataclasses.dataclass
class InMemoryData:
  """A compressed set held on device: images uint8 [M, H, W, 3], labels int [M]."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int


class MemoryFeed:
  """The compressed set, replicated on every device; one permutation per epoch."""

  def __init__(self, data: InMemoryData, cfg: Any, mesh):
    n = len(data.labels)
    n_dev = mesh.devices.size
    self.num_examples = n
    self.batch = min(cfg.batch_size, math.ceil(n / n_dev) * n_dev)  # tiny sets: 1 batch / epoch
    self.steps_per_epoch = math.ceil(n / self.batch)
    self.device_crop = cfg.crop
    self._data, self._mesh = data, mesh
    self._images = self._labels = None
    self._epoch, self._perm = None, None
    data_key = rng.stream_key(cfg.seed, "data")
    self._perm_fn = jax.jit(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), n),
                            out_shardings=parallel.replicated(mesh))
    batch, per_epoch, shard = self.batch, self.steps_per_epoch, parallel.batch_sharding(mesh)

    def gather(step, images, labels, perm):
      """The step's images: positions j*B .. j*B+B-1 of the epoch's permutation; the last batch
      of an epoch is completed with random images that get weight 0 (one view per image)."""
      epoch, j = jnp.divmod(step, per_epoch)
      pos = j * batch + jnp.arange(batch)
      valid = pos < n
      filler = jax.random.randint(jax.random.fold_in(jax.random.fold_in(data_key, epoch), j),
                                  (batch,), 0, n)
      idx = jax.lax.with_sharding_constraint(
          jnp.where(valid, perm[jnp.minimum(pos, n - 1)], filler), shard)
      return images[idx], labels[idx], valid.astype(jnp.float32)
    self.gather = gather

  def open(self, start_step: int) -> None:
    del start_step  # the permutation is a function of the epoch: nothing to skip
    self._images = parallel.replicate(np.asarray(self._data.images), self._mesh)
    self._labels = parallel.replicate(np.asarray(self._data.labels, np.int32), self._mesh)

  def args(self, step: int) -> tuple:
    epoch = step // self.steps_per_epoch
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, self._perm_fn(epoch)
    return self._images, self._labels, self._perm

  def close(self) -> None:
    self._images = self._labels = self._perm = None


class SourceFeed:
  """A full dataset through Grain, read and sharded a background thread ahead of the step."""

  def __init__(self, source: Any, cfg: Any, mesh):
    if cfg.crop == "patch":
      raise ValueError("crop='patch' crops inside mosaic cells; a full dataset trains with "
                       "crop='rrc' or 'none'")
    self.num_examples = len(source.labels)
    self.batch = cfg.batch_size
    self.steps_per_epoch = pipeline.train_steps_per_epoch(self.num_examples, self.batch)
    self.host_crop = ((tuple(cfg.crop_scale), tuple(cfg.crop_ratio))
                      if cfg.crop == "rrc" else None)
    self.device_crop = "none"  # the host already cropped (rrc) or centre-cropped (none)
    self._source, self._cfg, self._mesh = source, cfg, mesh
    self._batches = None

  @staticmethod
  def gather(step, images, labels):
    del step
    return images, labels, jnp.ones(labels.shape, jnp.float32)

  def open(self, start_step: int) -> None:
    cfg = self._cfg
    self._batches = parallel.prefetch_to_device(
        pipeline.train_batches(self._source, self.batch, cfg.image_size, cfg.seed, cfg.epochs,
                               start_step=start_step, num_threads=cfg.num_threads,
                               num_workers=cfg.num_workers, crop=self.host_crop),
        self._mesh, ("image", "label"), size=cfg.prefetch)

  def args(self, step: int) -> tuple:
    del step
    _, (images, labels) = next(self._batches)
    return images, labels

  def close(self) -> None:
    if self._batches is not None:
      self._batches.close()  # stops the prefetch thread (early stop, SIGTERM, errors)
      self._batches = None


def make_feed(train_data: Any, cfg: Any, mesh) -> MemoryFeed | SourceFeed:
  """MemoryFeed for an InMemoryData, SourceFeed for anything else with labels and __getitem__."""
  feed = MemoryFeed(train_data, cfg, mesh) if isinstance(train_data, InMemoryData) else \
      SourceFeed(train_data, cfg, mesh)
  parallel.check_batch_size(feed.batch, mesh, "train.batch_size")
  return feed
