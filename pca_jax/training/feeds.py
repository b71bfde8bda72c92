"""Where a training step's batch comes from: the compressed set on device, or a full dataset.

A feed knows its batch size and epoch length, the crop the device still has to apply, and gives the
train step (training.steps.make_train_step) a `gather` function and, per step, the arrays it reads.
  * MemoryFeed: a compressed set (<= ~100k images) lives on every device as uint8; epoch e visits
    a permutation drawn once at the epoch's start from the "data" stream, one augmented view per
    stored image per epoch.
  * ShardedMemoryFeed: the same set split over the devices, each holding ceil(M / n_dev) slots
    (images dealt round-robin after a fixed seeded shuffle, so classes mix); every device permutes
    its own slots each epoch and draws its part of every batch from them, one view per stored
    image per epoch.
  * SourceFeed: a random-access source read by a Grain pipeline; the random-resized crop is taken
    on the host from the whole decoded image (torchvision semantics), the flip on device. With
    crop_on_device (several models trained on one decoded batch, each with its own crops) the host
    only resizes + centre-crops each image to image_size and the device takes every crop.
All are pure functions of (seed, step), so resuming replays the same batches.

make_feed picks the compressed set's layout from train.shard_set: "replicated" (MemoryFeed),
"sharded" (ShardedMemoryFeed), or "auto": sharded when the set (images + int32 labels) takes more
than a quarter of the smallest memory limit (memory_stats()["bytes_limit"]) of the devices of all
processes, replicated when it takes less or when a device reports no limit (CPU); every process
takes the same smallest limit, so all choose the same layout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from pca_jax import parallel, rng
from pca_jax.data import pipeline

SHARD_SET_CHOICES = ("auto", "replicated", "sharded")
AUTO_SHARD_FRACTION = 0.25  # "auto" shards a set larger than this fraction of a device's memory


@dataclasses.dataclass
class InMemoryData:
  """A compressed set held on device: images uint8 [M, H, W, 3], labels int [M]."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  @property
  def nbytes(self) -> int:
    """Bytes of the set on one device: the images plus int32 labels."""
    return int(np.asarray(self.images).nbytes) + 4 * len(self.labels)


class _DeviceSetFeed:
  """What the on-device feeds share: batch size, the "data" key, the epoch's cached order.

  Subclasses set steps_per_epoch and gather, and define _place() (the set on the devices) and
  _order(epoch) (the epoch's permutation, a jax array), both pure functions of the seed.
  """

  def __init__(self, data: InMemoryData, cfg: Any, mesh):
    n, n_dev = len(data.labels), mesh.devices.size
    self.num_examples = n
    self.batch = min(cfg.batch_size, math.ceil(n / n_dev) * n_dev)  # tiny sets: 1 batch / epoch
    self.pads = True  # batches are completed with weight-0 filler images
    self.device_crop = cfg.crop
    self._data, self._mesh = data, mesh
    # an argument of the compiled gather and permutation, never a constant in them: one program
    # (and one compilation) serves every seed
    self._host_key = rng.stream_key(cfg.seed, "data")
    self._data_key = parallel.replicate_key(self._host_key, mesh)
    self._images = self._labels = None
    self._epoch, self._perm = None, None

  def _place(self) -> tuple[jax.Array, jax.Array]:
    raise NotImplementedError

  def _order(self, epoch: int) -> jax.Array:
    raise NotImplementedError

  def open(self, start_step: int) -> None:
    del start_step  # the permutation is a function of the epoch: nothing to skip
    self._images, self._labels = self._place()

  def args(self, step: int) -> tuple:
    epoch = step // self.steps_per_epoch
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, self._order(epoch)
    return self._images, self._labels, self._perm, self._data_key

  def close(self) -> None:
    self._images = self._labels = self._perm = None
    self._epoch = None


class MemoryFeed(_DeviceSetFeed):
  """The compressed set, replicated on every device; one permutation per epoch."""

  def __init__(self, data: InMemoryData, cfg: Any, mesh):
    super().__init__(data, cfg, mesh)
    n = self.num_examples
    self.steps_per_epoch = math.ceil(n / self.batch)
    self._perm_fn = jax.jit(lambda key, e: jax.random.permutation(jax.random.fold_in(key, e), n),
                            out_shardings=parallel.replicated(mesh))
    batch, per_epoch, shard = self.batch, self.steps_per_epoch, parallel.batch_sharding(mesh)

    def gather(step, images, labels, perm, data_key):
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

  def _place(self) -> tuple[jax.Array, jax.Array]:
    return (parallel.replicate(np.asarray(self._data.images), self._mesh),
            parallel.replicate(np.asarray(self._data.labels, np.int32), self._mesh))

  def _order(self, epoch: int) -> jax.Array:
    return self._perm_fn(self._data_key, epoch)


def shard_layout(n: int, n_dev: int, key: jax.Array) -> np.ndarray:
  """Which stored image each of the n_dev * S slots holds (S = ceil(n / n_dev)): int64 [n_dev*S].

  Device d owns slots d*S .. d*S+S-1. The images, shuffled by `key`, are dealt round-robin: the
  i-th of the shuffle goes to device i % n_dev, local slot i // n_dev, so every device gets a mix
  of classes, device counts differ by at most one, and device d's real images fill its first
  n // n_dev + (d < n % n_dev) slots. The remaining (padding) slots repeat images of the shuffle
  so they hold real pixels; the feed gives them weight 0.
  """
  slots = math.ceil(n / n_dev)
  order = np.asarray(jax.random.permutation(key, n), np.int64)
  i = np.arange(n_dev * slots)
  src = np.empty(n_dev * slots, np.int64)
  src[(i % n_dev) * slots + i // n_dev] = order[i % n]
  return src


class ShardedMemoryFeed(_DeviceSetFeed):
  """The compressed set split over the "data" axis; each device permutes its own slots.

  Every device holds S = ceil(M / n_dev) slots (see shard_layout). Epoch e, device d permutes its
  S slots with fold_in(fold_in(epoch key, e), d), and step j of the epoch takes positions
  j*b .. j*b+b-1 of that permutation (b = batch / n_dev); padding slots and positions past S
  (read again from the permutation's start) get weight 0, so each stored image gets one view per
  epoch, and steps_per_epoch = ceil(S / b) (= ceil(M / batch), as replicated).
  """

  def __init__(self, data: InMemoryData, cfg: Any, mesh):
    super().__init__(data, cfg, mesh)
    n, n_dev = self.num_examples, mesh.devices.size
    parallel.check_batch_size(self.batch, mesh, "train.batch_size")
    slots, b = math.ceil(n / n_dev), self.batch // n_dev
    self.slots_per_device = slots
    self.steps_per_epoch = math.ceil(slots / b)
    layout_key, epoch_key = jax.random.split(self._host_key)
    self._epoch_key = parallel.replicate_key(epoch_key, mesh)
    self.slot_images = shard_layout(n, n_dev, layout_key)  # slot -> stored image, int64 [n_dev*S]
    axis, spec, per_epoch = parallel.DATA_AXIS, P(parallel.DATA_AXIS), self.steps_per_epoch

    def local_real(d):
      """How many of device d's slots hold a stored image (the rest are padding)."""
      return n // n_dev + (d < n % n_dev)

    def local_perm(epoch_key, epoch):
      key = jax.random.fold_in(jax.random.fold_in(epoch_key, epoch), jax.lax.axis_index(axis))
      return jax.random.permutation(key, slots).astype(jnp.int32)
    self._perm_fn = jax.jit(jax.shard_map(local_perm, mesh=mesh, in_specs=(P(), P()),
                                          out_specs=spec))

    def local_gather(j, images, labels, perm):
      pos = j * b + jnp.arange(b)
      slot = perm[pos % slots]
      valid = (pos < slots) & (slot < local_real(jax.lax.axis_index(axis)))
      return images[slot], labels[slot], valid.astype(jnp.float32)
    gather_local = jax.shard_map(local_gather, mesh=mesh, in_specs=(P(), spec, spec, spec),
                                 out_specs=spec)

    def gather(step, images, labels, perm, data_key):
      """The step's images, each device's b from its own slots: images [B, H, W, 3] uint8,
      labels [B] int32, weights [B] float32, all sharded over "data" (device d: rows d*b..)."""
      del data_key  # the order is all in perm
      return gather_local(step % per_epoch, images, labels, perm)
    self.gather = gather

  def _place(self) -> tuple[jax.Array, jax.Array]:
    """Images [n_dev*S, H, W, 3] and labels [n_dev*S], sharded: each process builds only the
    slots of its own devices."""
    src = self.slot_images
    sharding = NamedSharding(self._mesh, P(parallel.DATA_AXIS))
    images, labels = self._data.images, np.asarray(self._data.labels, np.int32)
    return (jax.make_array_from_callback((len(src), *images.shape[1:]), sharding,
                                         lambda idx: np.asarray(images[src[idx[0]]])),
            jax.make_array_from_callback((len(src),), sharding, lambda idx: labels[src[idx[0]]]))

  def _order(self, epoch: int) -> jax.Array:
    return self._perm_fn(self._epoch_key, epoch)


class SourceFeed:
  """A full dataset through Grain, read and sharded a background thread ahead of the step."""

  def __init__(self, source: Any, cfg: Any, mesh, crop_on_device: bool = False):
    if cfg.crop == "patch":
      raise ValueError("crop='patch' crops inside mosaic cells; a full dataset trains with "
                       "crop='rrc' or 'none'")
    self.num_examples = len(source.labels)
    self.batch = cfg.batch_size
    self.pads = False  # every example of every batch is real (weights all 1)
    self.steps_per_epoch = pipeline.train_steps_per_epoch(self.num_examples, self.batch)
    host_rrc = cfg.crop == "rrc" and not crop_on_device
    self.host_crop = (tuple(cfg.crop_scale), tuple(cfg.crop_ratio)) if host_rrc else None
    # the host already cropped (rrc) or centre-cropped (none); on device: the crop of each model
    self.device_crop = cfg.crop if crop_on_device else "none"
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
                               num_workers=cfg.num_workers, crop=self.host_crop,
                               prefetch_mb=cfg.get("prefetch_mb", 1024)),
        self._mesh, ("image", "label"), size=cfg.prefetch)

  def args(self, step: int) -> tuple:
    del step
    _, (images, labels) = next(self._batches)
    return images, labels

  def close(self) -> None:
    if self._batches is not None:
      self._batches.close()  # stops the prefetch thread (early stop, SIGTERM, errors)
      self._batches = None


def device_memory_limit(mesh) -> int | None:
  """The smallest memory limit (bytes) of the mesh's devices over all processes; None when a
  device reports none (CPU)."""
  limits = []
  for device in mesh.local_devices:
    stats = device.memory_stats()
    limits.append(int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else -1)
  limit = min(limits) if limits else -1
  if jax.process_count() > 1:  # every process must choose the same layout: the smallest limit
    from jax.experimental import multihost_utils
    limit = int(np.min(multihost_utils.process_allgather(np.asarray(limit, np.int64))))
  return None if limit < 0 else limit


def _shard_set(cfg: Any) -> str:
  """train.shard_set, checked ("auto" for configs written before the field existed)."""
  choice = cfg.get("shard_set", "auto")
  if choice not in SHARD_SET_CHOICES:
    raise ValueError(f"unknown train.shard_set {choice!r}; use one of "
                     f"{', '.join(SHARD_SET_CHOICES)}")
  return choice


def set_layout(data: InMemoryData, cfg: Any, mesh) -> str:
  """The compressed set's layout, "replicated" or "sharded": train.shard_set, "auto" resolved by
  the rule in the module docstring."""
  choice = _shard_set(cfg)
  if choice != "auto":
    return choice
  limit = device_memory_limit(mesh)
  return "sharded" if limit is not None and data.nbytes > AUTO_SHARD_FRACTION * limit else \
      "replicated"


def make_feed(train_data: Any, cfg: Any, mesh,
              crop_on_device: bool = False) -> MemoryFeed | ShardedMemoryFeed | SourceFeed:
  """For an InMemoryData, MemoryFeed or ShardedMemoryFeed by train.shard_set (set_layout);
  SourceFeed for anything else with labels and __getitem__ (train.shard_set is still checked;
  crop_on_device: see SourceFeed)."""
  if isinstance(train_data, InMemoryData):
    sharded = set_layout(train_data, cfg, mesh) == "sharded"
    feed = (ShardedMemoryFeed if sharded else MemoryFeed)(train_data, cfg, mesh)
  else:
    _shard_set(cfg)
    feed = SourceFeed(train_data, cfg, mesh, crop_on_device)
  parallel.check_batch_size(feed.batch, mesh, "train.batch_size")
  return feed
