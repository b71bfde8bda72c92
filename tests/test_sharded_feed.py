"""The compressed set sharded over the devices (train.shard_set): one view per image per epoch,
the layout choice, and a real training run that resumes exactly."""

import json
import math
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pca_jax import parallel, rng
from pca_jax import training as train
from pca_jax.training import feeds
from tests.helpers import colour_dataset, colour_source, tiny_config


def _indexed(n, size=4):
  """A set whose label is the image's own index (num_classes = n), and whose pixels encode it."""
  images = np.zeros((n, size, size, 3), np.uint8)
  images[..., 0] = (np.arange(n) % 256)[:, None, None]
  images[..., 1] = (np.arange(n) // 256)[:, None, None]
  return feeds.InMemoryData(images, np.arange(n), n)


def _epoch(feed, gather, epoch):
  """The (labels, weights, images) gathered over one epoch, steps concatenated; per step a check
  that device d's rows come from device d's own slots."""
  n_dev = len(jax.devices())
  b = feed.batch // n_dev
  n, slots = feed.num_examples, feed.slots_per_device
  src = feed.slot_images
  device_of_slot = np.arange(len(src)) // slots
  is_real = np.arange(len(src)) % slots < n // n_dev + (device_of_slot < n % n_dev)
  owner = np.full(n, -1)
  owner[src[is_real]] = device_of_slot[is_real]
  assert np.all(owner >= 0)
  out = []
  for step in range(epoch * feed.steps_per_epoch, (epoch + 1) * feed.steps_per_epoch):
    images, labels, weights = gather(step, *feed.args(step))
    assert images.sharding.spec == P("data") and weights.dtype == np.float32
    images, labels, weights = map(np.asarray, (images, labels, weights))
    assert labels.shape == weights.shape == (feed.batch,)
    devices = np.repeat(np.arange(n_dev), b)
    real = weights == 1
    np.testing.assert_array_equal(owner[labels[real]], devices[real])
    out.append((labels, weights, images))
  return [np.concatenate(x) for x in zip(*out)]


@pytest.mark.parametrize("n,batch", [(21, 8), (21, 16), (5, 64), (64, 16)])
def test_every_image_once_per_epoch_from_the_local_shard(n, batch):
  mesh = parallel.make_mesh()
  n_dev = mesh.devices.size
  data = _indexed(n)
  feed = feeds.make_feed(data, tiny_config(batch_size=batch, shard_set="sharded").train, mesh)
  assert isinstance(feed, feeds.ShardedMemoryFeed)
  slots = math.ceil(n / n_dev)
  assert feed.batch == min(batch, n_dev * slots)
  b = feed.batch // n_dev
  assert feed.steps_per_epoch == math.ceil(slots / b) == math.ceil(n / feed.batch)
  feed.open(0)
  stored_images, stored_labels, _, _ = feed.args(0)
  assert stored_images.shape == (n_dev * slots, 4, 4, 3)
  assert stored_images.sharding.spec == P("data")
  assert [s.data.shape[0] for s in stored_images.addressable_shards] == [slots] * n_dev
  np.testing.assert_array_equal(stored_labels, feed.slot_images)  # label = stored index
  gather = jax.jit(feed.gather)
  orders = []
  for epoch in range(3):
    labels, weights, images = _epoch(feed, gather, epoch)
    assert set(np.unique(weights)) <= {0.0, 1.0}
    real = labels[weights == 1]
    np.testing.assert_array_equal(np.sort(real), np.arange(n))  # each image exactly once
    np.testing.assert_array_equal(images, data.images[labels])  # pixels travel with the label
    orders.append(real)
  if n > n_dev:
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
  # a fresh feed (a resumed run) replays an epoch exactly
  again = feeds.ShardedMemoryFeed(data, tiny_config(batch_size=batch).train, mesh)
  again.open(2 * again.steps_per_epoch)
  np.testing.assert_array_equal(_epoch(again, gather, 2)[0], _epoch(feed, gather, 2)[0])
  feed.close()
  again.close()


def test_layout_mixes_and_balances():
  n, n_dev = 50, 8
  key = rng.stream_key(0, "data")
  src = feeds.shard_layout(n, n_dev, key)
  slots = math.ceil(n / n_dev)
  assert src.shape == (n_dev * slots,)
  real = [src[d * slots:d * slots + n // n_dev + (d < n % n_dev)] for d in range(n_dev)]
  np.testing.assert_array_equal(np.sort(np.concatenate(real)), np.arange(n))
  assert {len(r) for r in real} == {n // n_dev, n // n_dev + 1}
  labels = np.arange(n) % 4  # classes in index order: a shuffle before dealing mixes them
  assert all(len(set(labels[r])) >= 3 for r in real)
  assert not np.array_equal(src, feeds.shard_layout(n, n_dev, rng.stream_key(1, "data")))
  np.testing.assert_array_equal(src, feeds.shard_layout(n, n_dev, key))


def test_layout_choice(monkeypatch):
  mesh = parallel.make_mesh()
  data = _indexed(40)
  cfg = tiny_config().train
  assert cfg.shard_set == "auto"
  assert feeds.device_memory_limit(mesh) is None  # CPU devices report no limit
  assert isinstance(feeds.make_feed(data, cfg, mesh), feeds.MemoryFeed)
  del cfg["shard_set"]  # configs written before the field existed
  assert isinstance(feeds.make_feed(data, cfg, mesh), feeds.MemoryFeed)
  cfg = tiny_config(shard_set="replicated").train
  assert isinstance(feeds.make_feed(data, cfg, mesh), feeds.MemoryFeed)
  # auto: sharded once the set exceeds a quarter of the smallest device limit
  monkeypatch.setattr(feeds, "device_memory_limit", lambda mesh: 4 * data.nbytes - 4)
  assert feeds.set_layout(data, tiny_config().train, mesh) == "sharded"
  monkeypatch.setattr(feeds, "device_memory_limit", lambda mesh: 4 * data.nbytes)
  assert feeds.set_layout(data, tiny_config().train, mesh) == "replicated"
  for train_data in (data, colour_source(16)):  # a typo is caught for a full dataset too
    with pytest.raises(ValueError, match=r"train.shard_set 'shard'.*auto, replicated, sharded"):
      feeds.make_feed(train_data, tiny_config(shard_set="shard").train, mesh)


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r["loss"] for r in rows if "loss" in r]


def test_sharded_training_learns_and_resumes_exactly(tmp_path):
  images, labels = colour_dataset(44, 4, 8, 0)
  data = train.InMemoryData(images, labels, 4)  # 44 = 8 * 6 - 4: padding slots on 4 devices
  cfg = tiny_config(epochs=4, lr=3e-2, shard_set="sharded")
  full, m = train.train(cfg, tmp_path / "full", data, log=lambda s: None)
  total = int(full.step)
  assert total == 4 * 3 and m["batch_size"] == 16
  losses = _losses(tmp_path / "full")
  assert np.all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
  half = tiny_config(epochs=4, lr=3e-2, shard_set="sharded", max_steps=total // 2 + 1)
  s1, _ = train.train(half, tmp_path / "resumed", data, log=lambda s: None)
  assert int(s1.step) == total // 2 + 1  # stops mid-epoch
  msgs = []
  s2, _ = train.train(cfg, tmp_path / "resumed", data, log=msgs.append)
  assert any("resumed from checkpoint" in x for x in msgs)
  assert int(s2.step) == total
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _losses(tmp_path / "resumed") == _losses(tmp_path / "full")
