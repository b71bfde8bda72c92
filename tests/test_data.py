import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pca_jax.data import pipeline, store
from pca_jax.fs import atomic_dir, check_writable, save_json
from pca_jax.data.load import load_source
from pca_jax.data.sources import (ArraySource, DataError, ImageFolderSource, TfdsSource,
                                  demo_source)
import ml_collections


def _write_tree(root: Path, per_class=(3, 2, 4), size=(10, 12)):
  rng = np.random.default_rng(0)
  for c, n in enumerate(per_class):
    d = root / f"class_{c}"
    d.mkdir(parents=True)
    for i in range(n):
      img = np.full(size + (3,), 40 * c + i, np.uint8)
      img[0, 0] = rng.integers(0, 255, 3)
      Image.fromarray(img).save(d / f"img{i}.png")
  return root


def test_demo_source_is_real_split_and_deterministic():
  tr, te = demo_source("train"), demo_source("test")
  assert len(tr) + len(te) == 1797 and len(te) == 450
  img, label = tr[0]
  assert img.shape == (16, 16, 3) and img.dtype == np.uint8 and 0 <= label < 10
  assert tr.num_classes == 10 and sorted(set(tr.labels.tolist())) == list(range(10))
  assert np.bincount(te.labels).min() >= 40  # stratified
  np.testing.assert_array_equal(demo_source("train").labels, tr.labels)
  assert img.max() > 100 and img.min() == 0  # real scans: dark background, bright strokes


def test_imagefolder_order_labels_and_modes(tmp_path):
  root = _write_tree(tmp_path / "train")
  Image.fromarray(np.full((10, 12), 7, np.uint8)).save(root / "class_1" / "zz_grey.png")
  Image.fromarray(np.full((10, 12, 4), 9, np.uint8), "RGBA").save(root / "class_1" / "zz_rgba.png")
  (root / "class_1" / "notes.txt").write_text("not an image")
  src = ImageFolderSource(root)
  assert src.class_names == ["class_0", "class_1", "class_2"]
  assert src.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
  grey, lab = src[5]
  assert grey.shape == (10, 12, 3) and lab == 1 and (grey == 7).all()
  rgba, _ = src[6]
  assert rgba.shape == (10, 12, 3) and (rgba == 9).all()


def test_imagefolder_errors_and_corrupt_files(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    ImageFolderSource(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no class sub-folders"):
    ImageFolderSource(tmp_path / "empty")
  root = _write_tree(tmp_path / "t")
  (root / "class_9").mkdir()
  with pytest.raises(DataError, match="class_9 has no images"):
    ImageFolderSource(root)
  (root / "class_9" / "broken.jpg").write_bytes(b"")
  (root / "class_9" / "text.jpg").write_text("not a JPEG at all")
  good = Image.new("RGB", (8, 8))
  good.save(root / "class_9" / "trunc.jpg")
  data = (root / "class_9" / "trunc.jpg").read_bytes()
  (root / "class_9" / "trunc.jpg").write_bytes(data[:len(data) // 2])
  good.save(root / "class_9" / "ok.jpg")
  src = ImageFolderSource(root)
  i = [str(f) for f in src.files].index(str(root / "class_9" / "broken.jpg"))
  with pytest.raises(DataError, match="broken.jpg.*skip_corrupt"):
    src[i]
  skipping = ImageFolderSource(root, skip_corrupt=True)
  assert len(skipping) == len(src) - 3 and len(skipping.skipped) == 3
  assert {Path(p).name for p in skipping.skipped} == {"broken.jpg", "trunc.jpg", "text.jpg"}
  for name in ("trunc.jpg", "text.jpg"):
    with pytest.raises(DataError, match=name):
      src[[str(f) for f in src.files].index(str(root / "class_9" / name))]


def test_tfds_mock_through_grain_pipeline():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=13, policy=tfds.testing.MockPolicy.USE_CODE):
    src = TfdsSource("cifar10", "train")
    assert len(src) == 13 and src.num_classes == 10
    assert src.labels.shape == (13,) and src.labels.max() < 10
    img, label = src[3]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and label == src.labels[3]
    batches = list(pipeline.ordered_batches(src, 4, image_size=24, crop_fraction=0.875))
    assert len(batches) == 4
    idx = np.concatenate([b["index"][b["mask"]] for b in batches])
    assert idx.tolist() == list(range(13))
    assert batches[0]["image"].shape == (4, 24, 24, 3)
    np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]),
                                  src.labels)
    cfg = ml_collections.ConfigDict({"source": "tfds", "tfds_name": "cifar10",
                                     "train_split": "train", "data_dir": ""})
    assert len(load_source(cfg, "test")) == 13


def test_tfds_missing_data_says_how_to_prepare(tmp_path):
  with pytest.raises(DataError, match="tfds build imagenet2012"):
    TfdsSource("imagenet2012", "train", str(tmp_path / "missing"))
  with pytest.raises(DataError, match="tfds build"):
    TfdsSource("imagenet2012", "train", str(tmp_path))


def test_label_out_of_range_and_unknown_source():
  with pytest.raises(DataError, match="label 5 is out of range"):
    ArraySource(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 5]), ["a", "b"])
  with pytest.raises(DataError, match="unknown data.source"):
    load_source(ml_collections.ConfigDict({"source": "hdf5", "train_split": "train"}))


def test_two_process_sharding_covers_every_index_once():
  src = ArraySource(np.zeros((23, 4, 4, 3), np.uint8), np.arange(23) % 3, ["a", "b", "c"])
  seen = []
  counts = []
  for p in range(2):
    bs = list(pipeline.ordered_batches(src, 4, 4, process_index=p, process_count=2))
    counts.append(len(bs))
    seen += np.concatenate([b["index"][b["mask"]] for b in bs]).tolist()
  assert counts[0] == counts[1] == 3
  assert sorted(seen) == list(range(23))
  # training: per step the two processes' slices are disjoint and together form the global batch
  per_proc = [list(pipeline.train_batches(src, 8, 4, seed=1, num_epochs=2, process_index=p,
                                          process_count=2)) for p in range(2)]
  assert len(per_proc[0]) == len(per_proc[1]) == 2 * (23 // 8)
  for step in range(2):  # epoch 0: every index at most once, no overlap between processes
    a, b = per_proc[0][step]["index"], per_proc[1][step]["index"]
    assert not set(a) & set(b)
  epoch0 = np.concatenate([per_proc[p][s]["index"] for p in range(2) for s in range(2)])
  assert len(set(epoch0.tolist())) == 16


def test_train_batches_resume_and_iterator_state():
  src = ArraySource(np.zeros((20, 4, 4, 3), np.uint8), np.arange(20) % 2, ["a", "b"])
  full = [b["index"] for b in pipeline.train_batches(src, 4, 4, seed=3, num_epochs=3)]
  assert len(full) == 15
  assert sorted(np.concatenate(full[:5]).tolist()) == list(range(20))  # epoch = permutation
  assert not np.array_equal(np.concatenate(full[:5]), np.concatenate(full[5:10]))
  resumed = [b["index"] for b in pipeline.train_batches(src, 4, 4, seed=3, num_epochs=3,
                                                         start_step=7)]
  for a, b in zip(full[7:], resumed):
    np.testing.assert_array_equal(a, b)
  it = iter(pipeline.train_batches(src, 4, 4, seed=3, num_epochs=3))
  for _ in range(4):
    next(it)
  state = it.get_state()
  it2 = iter(pipeline.train_batches(src, 4, 4, seed=3, num_epochs=3))
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["index"], full[4])
  with pytest.raises(ValueError, match="larger than the dataset"):
    pipeline.train_batches(src, 64, 4, seed=0, num_epochs=1)


def test_read_ahead_bounds_host_memory_in_bytes():
  mib = 1 << 20
  assert pipeline.image_batch_bytes(1, 224) == 150_528
  assert pipeline.image_batch_bytes(1024, 224) == 154_140_672
  # per-image elements (num_workers=0): 64 images in flight (9.6 MB at 224px) under any budget
  # of >= 64 images; a budget below that holds floor(budget / image) images, and as many threads
  image = pipeline.image_batch_bytes(1, 224)
  assert pipeline.read_ahead(image, 1024, num_threads=8) == (64, 8)
  assert pipeline.read_ahead(image, 1024, num_threads=100) == (64, 64)  # threads <= buffer
  assert pipeline.read_ahead(image, 1, num_threads=8) == (6, 6)  # 1 MiB = 6.97 images
  assert pipeline.read_ahead(image, 0, num_threads=8) == (1, 1)  # at least one
  assert pipeline.read_ahead(pipeline.image_batch_bytes(1, 32), 1024, 8) == (64, 8)
  # whole-batch elements (num_workers > 0 worker processes), 224px x 1024: 6 batches (924 MB) fit
  # 1024 MiB, where the former fixed buffer held 64 (9.9 GB); each worker gets 1/num_workers
  assert pipeline.read_ahead(154_140_672, 1024, num_threads=16) == (6, 6)
  assert pipeline.read_ahead(154_140_672, 1024, num_threads=4) == (6, 4)
  assert pipeline.read_ahead(154_140_672, 4096, num_threads=8) == (27, 8)
  assert pipeline.read_ahead(154_140_672, 10_000, num_threads=8) == (64, 8)  # capped
  assert pipeline.read_ahead(154_140_672, 1024, num_threads=8, num_workers=2) == (3, 3)
  assert pipeline.read_ahead(154_140_672, 100, num_threads=8) == (1, 1)
  assert pipeline.read_ahead(10 * mib, 100, num_threads=8) == (10, 8)  # exact fit counts
  assert pipeline.read_ahead(10 * mib, 100, num_threads=8, num_workers=4) == (2, 2)  # per worker
  with pytest.raises(ValueError, match="prefetch_mb"):
    pipeline.read_ahead(1, -1, 8)
  with pytest.raises(ValueError, match="prefetch_mb"):
    pipeline.read_ahead(1, float("nan"), 8)


def _read_options(ds) -> str:
  """The ReadOptions of the Grain prefetch stage in a pipeline's chain of datasets."""
  while ds is not None:
    if str(ds).startswith("PrefetchIterDataset("):
      return str(ds)
    ds = ds.parents[0] if ds.parents else None
  raise AssertionError("no PrefetchIterDataset in the pipeline")


def test_pipelines_pass_the_read_ahead_to_grain(monkeypatch):
  src = ArraySource(np.arange(20 * 48, dtype=np.uint8).reshape(20, 4, 4, 3), np.arange(20) % 2,
                    ["a", "b"])
  image = pipeline.image_batch_bytes(1, 4)  # 48 B per 4px image
  budget = 3 * image / (1 << 20)  # three images, in MiB
  for ds in (pipeline.ordered_batches(src, 4, 4, num_threads=8, prefetch_mb=budget),
             pipeline.train_batches(src, 4, 4, seed=0, num_epochs=2, num_threads=8,
                                    prefetch_mb=budget)):
    assert "num_threads=3, prefetch_buffer_size=3)" in _read_options(ds)  # elements are images
  assert "num_threads=8, prefetch_buffer_size=64)" in _read_options(
      pipeline.ordered_batches(src, 4, 4))
  # with worker processes an element is a whole batch (192 B): 2 workers x 3 batches of budget
  # (mp_prefetch hides its parents, so the options are caught on their way to Grain)
  made = []
  real = pipeline._read_options
  monkeypatch.setattr(pipeline, "_read_options", lambda *a: made.append(real(*a)) or made[-1])
  pipeline.ordered_batches(src, 4, 4, num_threads=8, num_workers=2,
                           prefetch_mb=6 * pipeline.image_batch_bytes(4, 4) / (1 << 20))
  assert [(o.num_threads, o.prefetch_buffer_size) for o in made] == [(3, 3)]
  # a budget below one image still reads (one at a time), in order, every example once
  small = list(pipeline.ordered_batches(src, 4, 4, prefetch_mb=0))
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in small]), np.arange(20))
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in small]), src.images)
  full = [b["index"] for b in pipeline.train_batches(src, 4, 4, seed=3, num_epochs=2)]
  tight = [b["index"] for b in pipeline.train_batches(src, 4, 4, seed=3, num_epochs=2,
                                                      prefetch_mb=0)]
  np.testing.assert_array_equal(np.stack(full), np.stack(tight))  # the bound changes no data
  chunks = list(pipeline.iter_images(src, np.arange(20), 4, 8, prefetch_mb=0))
  np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), src.images)


def _photo_tree(root: Path) -> ImageFolderSource:
  """11 JPEGs (and one PNG) cut from scikit-learn's two photographs at assorted sizes, 3 classes:
  at 12px some decode at 1/2 or 1/4 size (min_side 12-14), some at full size."""
  from sklearn.datasets import load_sample_images
  photos = load_sample_images().images
  sizes = [(60, 80), (45, 70), (100, 64), (33, 33), (29, 40), (200, 150), (14, 20), (57, 57),
           (80, 60), (120, 90), (31, 47)]
  for k, (h, w) in enumerate(sizes):
    d = root / f"class_{k % 3}"
    d.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(photos[k % 2]).resize((w, h), Image.BILINEAR,
                                                 box=(k * 17, k * 9, k * 17 + 400, k * 9 + 300))
    img.save(d / f"{k:02d}.{'png' if k == 4 else 'jpg'}", quality=90)
  return ImageFolderSource(root)


def _reference_ordered(source, local, size, crop_fraction, pi, pc):
  """ordered_batches as a plain loop: batch s of process p holds examples (s * pc + p) * local ..
  + local - 1, each read with min_side = the resize side, fit; zeros past the end."""
  n, out = len(source), []
  min_side = pipeline.resize_side(size, crop_fraction)
  for s in range(pipeline.num_ordered_batches(n, local, pc)):
    idx = np.arange(local) + (s * pc + pi) * local
    images = [pipeline.fit_image(pipeline.read_example(source, int(i), min_side)[0], size,
                                 crop_fraction) if i < n else np.zeros((size, size, 3), np.uint8)
              for i in idx]
    out.append({"image": np.stack(images),
                "label": np.asarray([source.labels[i] if i < n else 0 for i in idx], np.int32),
                "index": np.where(idx < n, idx, -1).astype(np.int64), "mask": idx < n})
  return out


def _reference_train(source, global_batch, size, seed, epochs, crop, pi, pc):
  """train_batches as a plain loop over steps and positions."""
  from pca_jax import rng
  n, local, out = len(source), global_batch // pc, []
  per_epoch = n // global_batch
  for step in range(per_epoch * epochs):
    epoch, j = divmod(step, per_epoch)
    idx = pipeline.epoch_order(n, seed, epoch)[j * global_batch:(j + 1) * global_batch]
    idx = idx[pi * local:(pi + 1) * local]
    images = []
    for k, i in enumerate(idx):
      if crop is None:
        images.append(pipeline.fit_image(pipeline.read_example(source, int(i), size)[0], size))
      else:
        gen = rng.host_rng(seed, "augment", step, pi * local + k)
        images.append(pipeline.random_resized_crop_host(source[int(i)][0], size, gen, *crop))
    out.append({"image": np.stack(images), "label": source.labels[idx].astype(np.int32),
                "index": idx.astype(np.int64)})
  return out


def _assert_same_batches(got, expected):
  assert len(got) == len(expected)
  for g, e in zip(got, expected):
    assert sorted(g) == sorted(e)
    for key in e:
      assert g[key].dtype == e[key].dtype and g[key].shape == e[key].shape, key
      np.testing.assert_array_equal(g[key], e[key], err_msg=key)


def test_per_image_pipelines_equal_a_reference_loop(tmp_path):
  src = _photo_tree(tmp_path / "photos")
  big = [f.name for f in src.files].index("05.jpg")  # 200 x 150 at min_side 14: decoded at
  assert src.read(big, 14)[0].shape == (19, 14, 3)     # 1/8 (25 x 19), resized to 19 x 14
  for pc in (1, 2):
    for pi in range(pc):  # 11 examples, 2 per process: the last global batch is padded
      got = list(pipeline.ordered_batches(src, 2, 12, 0.875, num_threads=3, process_index=pi,
                                          process_count=pc))
      _assert_same_batches(got, _reference_ordered(src, 2, 12, 0.875, pi, pc))
  assert not got[-1]["mask"].all() and (got[-1]["image"][~got[-1]["mask"]] == 0).all()
  crops = (None, ((0.25, 1.0), (3 / 4, 4 / 3)))
  for crop in crops:
    for pi in range(2):
      got = list(pipeline.train_batches(src, 4, 12, seed=5, num_epochs=3, num_threads=3,
                                        crop=crop, process_index=pi, process_count=2))
      expected = _reference_train(src, 4, 12, 5, 3, crop, pi, 2)
      _assert_same_batches(got, expected)
      resumed = list(pipeline.train_batches(src, 4, 12, seed=5, num_epochs=3, start_step=3,
                                            crop=crop, process_index=pi, process_count=2))
      _assert_same_batches(resumed, expected[3:])


class _CountingSource:
  """A source that counts its reads (and offers only __getitem__, like a user's object)."""

  def __init__(self, source):
    self.source, self.reads = source, 0
    self.labels = source.labels

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.reads += 1
    return self.source[i]


def test_images_decoded_counts_real_examples():
  src = _CountingSource(ArraySource(np.arange(23 * 48, dtype=np.uint8).reshape(23, 4, 4, 3),
                                    np.arange(23) % 3, ["a", "b", "c"]))
  before = pipeline.images_decoded()
  for p in range(2):  # 2 x 3 batches of 4: 24 slots, 23 examples, 1 padding slot
    assert len(list(pipeline.ordered_batches(src, 4, 4, process_index=p, process_count=2))) == 3
  assert pipeline.images_decoded() - before == 23
  assert src.reads == 23  # padding reads nothing
  before = pipeline.images_decoded()
  assert len(list(pipeline.train_batches(src, 8, 4, seed=0, num_epochs=3, start_step=1))) == 5
  assert pipeline.images_decoded() - before == 5 * 8
  before = pipeline.images_decoded()
  assert sum(len(c[0]) for c in pipeline.iter_images(src, np.arange(10), 4, 4)) == 10
  assert pipeline.images_decoded() - before == 10
  before = pipeline.images_decoded()
  it = iter(pipeline.ordered_batches(src, 4, 4))
  next(it)  # counted as delivered, not as read ahead
  assert pipeline.images_decoded() - before == 4


def test_worker_processes_fill_whole_batches_and_are_counted():
  from absl import flags
  if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  src = ArraySource(np.arange(23 * 48, dtype=np.uint8).reshape(23, 4, 4, 3), np.arange(23) % 3,
                    ["a", "b", "c"])
  before = pipeline.images_decoded()
  got = list(pipeline.ordered_batches(src, 4, 4, num_workers=1))
  assert pipeline.images_decoded() - before == 23  # counted in this (the consuming) process
  _assert_same_batches([{k: np.asarray(v) for k, v in b.items()} for b in got],
                       _reference_ordered(src, 4, 4, 1.0, 0, 1))


def test_fit_image_resize_and_center_crop():
  img = np.zeros((20, 40, 3), np.uint8)
  img[:, 10:30] = 200
  out = pipeline.fit_image(img, 10)
  assert out.shape == (10, 10, 3)  # the centre of the wide image (edges blend when resampled)
  assert (out[:, 1:-1] == 200).all() and (out > 150).all()
  out = pipeline.fit_image(np.zeros((7, 5, 3), np.uint8), 8, crop_fraction=0.875)
  assert out.shape == (8, 8, 3)


def test_store_round_trip_bytes_and_preview(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  labels = np.array([0, 0, 1, 1, 2, 2])
  out = store.write_compressed(tmp_path / "set", images, labels,
                               {"method": "pca", "ipc": 2, "grid": [2, 2], "seed": 0,
                                "source_indices": np.arange(24)}, class_names=["a", "b", "c"])
  cs = store.load_compressed(out)
  np.testing.assert_array_equal(cs.images, images)
  np.testing.assert_array_equal(cs.labels, labels)
  m = cs.manifest
  assert m["bytes"] == {"images": 6 * 8 * 8 * 3, "labels": 6 * 4}
  assert m["images_per_class"] == [2, 2, 2] and m["source_indices"] == list(range(24))
  assert os.path.getsize(out / "images.npy") == 6 * 8 * 8 * 3 + 128
  prev = np.asarray(Image.open(out / "preview.png"))
  assert prev.shape[0] > 3 * 8 and prev.shape[2] == 3
  exported = store.export_imagefolder(out, tmp_path / "folder")
  assert exported["num_images"] == 6 and exported["png_bytes"] > 0
  back = ImageFolderSource(tmp_path / "folder")
  assert back.labels.tolist() == labels.tolist()  # ImageFolder's sorted order = label order
  np.testing.assert_array_equal(back[3][0], images[3])


def test_store_write_is_atomic_under_exception(tmp_path, monkeypatch):
  images = np.zeros((2, 4, 4, 3), np.uint8)
  good = store.write_compressed(tmp_path / "set", images, np.array([0, 1]), {"method": "a"})

  def boom(*a, **k):
    raise RuntimeError("disk full")
  monkeypatch.setattr(store, "save_preview", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    store.write_compressed(tmp_path / "set", images + 1, np.array([1, 0]), {"method": "b"})
  cs = store.load_compressed(good)  # previous good output intact
  assert cs.manifest["method"] == "a" and (cs.images == 0).all()
  assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temp dir left behind
  with pytest.raises(RuntimeError):
    store.write_compressed(tmp_path / "new", images, np.array([0, 1]), {"method": "c"})
  assert not (tmp_path / "new").exists()


def test_store_validation_errors(tmp_path):
  out = store.write_compressed(tmp_path / "s", np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]),
                               {"method": "x"})
  m = json.loads((out / "manifest.json").read_text())
  m["version"] = 99
  (out / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(DataError, match="manifest version 99"):
    store.load_compressed(out)
  with pytest.raises(DataError, match="does not exist"):
    store.load_compressed(tmp_path / "none")
  with pytest.raises(DataError, match="uint8"):
    store.write_compressed(tmp_path / "f", np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]), {})


def test_atomic_helpers(tmp_path):
  save_json(tmp_path / "a.json", {"x": np.float32(1.5), "y": np.arange(2)})
  assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "y": [0, 1]}
  with pytest.raises(ValueError):
    with atomic_dir(tmp_path / "d") as d:
      (d / "f").write_text("partial")
      raise ValueError("stop")
  assert not (tmp_path / "d").exists()
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  try:
    import os
    if os.geteuid() != 0:  # root ignores permission bits
      with pytest.raises(ValueError, match="cannot write"):
        check_writable(ro / "sub")
  finally:
    ro.chmod(0o700)
  with pytest.raises(ValueError, match="cannot write"):
    check_writable("/proc/pca_jax_cannot_write_here")


def test_eval_split_with_other_classes_is_refused_before_anything_runs(tmp_path):
  """An ImageFolder val split missing one class folder would shift every later label by one:
  refused up front, naming the class."""
  from pca_jax.main import run_pipeline
  from tests.test_main import tiny_config
  _write_tree(tmp_path / "data" / "train", per_class=(3, 3, 3))
  _write_tree(tmp_path / "data" / "val", per_class=(2, 2, 2))
  import shutil
  shutil.rmtree(tmp_path / "data" / "val" / "class_1")
  c = tiny_config(**{"data.source": "imagefolder", "data.data_dir": str(tmp_path / "data"),
                     "data.eval_split": "val", "data.image_size": 8, "stages": "eval"})
  with pytest.raises(DataError, match="the val split has 2 classes and the train split 3: class "
                                      "'class_1' of the train split is missing from it"):
    run_pipeline(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  from pca_jax.data.load import check_same_classes
  with pytest.raises(DataError, match="class 0 is 'a' in the train split but 'b' in the test"):
    check_same_classes(["a", "b"], ["b", "a"], "train", "test")
  check_same_classes(["a", "b"], ["a", "b"], "train", "test")


def test_object_store_settings_and_bounded_waits(monkeypatch):
  """A gs:// run directory with STORAGE_EMULATOR_HOST but not the clients' other variables: one
  line naming them (it used to wait silently for minutes); a store that does not answer: one
  line after the bounded wait."""
  import time
  from pca_jax import fs
  for k in fs.EMULATOR_VARIABLES:
    monkeypatch.delenv(k, raising=False)
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
  monkeypatch.setenv("FSSPEC_GCS_TOKEN", "anon")
  with pytest.raises(ValueError, match="points at a local GCS emulator, but "
                                       "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT, TENSORSTORE_GCS_HTTP_URL, "
                                       "GOOGLE_AUTH_TOKEN_FOR_TESTING are not set"):
    fs.check_store_settings("gs://bucket/run")
  fs.check_store_settings("/local/run")  # local paths: nothing to check
  monkeypatch.delenv("STORAGE_EMULATOR_HOST")
  fs.check_store_settings("gs://bucket/run")  # the real service: its own credentials
  t = time.time()
  with pytest.raises(ValueError, match="the object store holding gs://b/x did not answer within "
                                       "1 s: check the bucket name, the credentials"):
    fs.within(1.0, lambda: time.sleep(30), "the object store holding gs://b/x")
  assert time.time() - t < 5
  with pytest.raises(KeyError):  # the probe's own errors come through unchanged
    fs.within(5.0, lambda: {}["x"], "a probe")
