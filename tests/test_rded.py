"""rded as published (pca_jax.dc.rded) and external sets' class matching (pca_jax.dc.stages)."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax.config import base_config
from pca_jax.data.sources import ArraySource
from pca_jax.dc import rded
from pca_jax.dc.stages import external_class_ids


def test_rded_select_lowest_loss_crop_per_image_then_lowest_images():
  losses = np.array([[0.9, 0.2, 0.5],    # image 0: best crop 1 (0.2)
                     [0.1, 0.1, 0.7],    # image 1: best crop 0 (first of the tie, 0.1)
                     [0.8, 0.9, 0.6],    # image 2: best crop 2 (0.6)
                     [0.3, 0.4, 0.35]])  # image 3: best crop 0 (0.3)
  best, order = rded.rded_select(losses, 3)
  np.testing.assert_array_equal(best, [1, 0, 2, 0])
  np.testing.assert_array_equal(order, [1, 0, 3])
  with pytest.raises(ValueError, match="rded_mipc"):
    rded.rded_select(losses, 5)


def test_stitch_order_is_rdeds_mix_images_layout():
  # ipc 2, factor 2: image 0 holds ranks 0, 2, 4, 6 (cells row-major), image 1 ranks 1, 3, 5, 7
  np.testing.assert_array_equal(rded.stitch_order(2, 2), [0, 2, 4, 6, 1, 3, 5, 7])


def test_random_square_crops_are_square_and_inside_the_image():
  img = np.zeros((40, 60, 3), np.uint8)
  img[:, :30] = 200  # left half bright
  crops = rded.random_square_crops(img, np.random.default_rng(0), 5, 8)
  assert crops.shape == (5, 8, 8, 3) and crops.dtype == np.uint8
  again = rded.random_square_crops(img, np.random.default_rng(0), 5, 8)
  np.testing.assert_array_equal(crops, again)  # a pure function of the generator


def _fake_run(images, labels, mipc=6, num_crop=3):
  cfg = base_config()
  cfg.data.image_size = images.shape[1]
  cfg.data.num_threads = 2
  cfg.benchmark.rded_mipc = mipc
  cfg.benchmark.rded_num_crop = num_crop
  return types.SimpleNamespace(config=cfg, train_source=ArraySource(images, labels, ["a", "b"]))


def test_build_rded_keeps_the_crops_the_teacher_finds_easiest():
  """A teacher stub whose loss is known: logits (m, -m) with m the mean normalised pixel, so class 0
  finds bright crops easy and class 1 dark ones. Images are constant, so every crop of an image has
  that image's value: rded must stitch the brightest class-0 images (darkest class-1) in RDED's
  layout."""
  values = np.array([10, 250, 90, 170, 40, 210,  # class 0
                     200, 20, 120, 60, 240, 100], np.uint8)  # class 1
  labels = np.repeat([0, 1], 6)
  images = np.broadcast_to(values[:, None, None, None], (12, 8, 8, 3)).copy()
  run = _fake_run(images, labels)

  def apply_fn(variables, x):
    m = jnp.mean(x, axis=(1, 2, 3)) * 10.0
    return jnp.stack([m, -m], axis=1)

  mosaics, mosaic_labels, pool = rded.build_rded(run, (apply_fn, {}), ipc=1, factor=2, seed=0)
  assert mosaics.shape == (2, 8, 8, 3) and list(mosaic_labels) == [0, 1]
  assert sorted(pool[:6]) == list(range(6)) and sorted(pool[6:]) == list(range(6, 12))
  cells = [mosaics[:, :4, :4], mosaics[:, :4, 4:], mosaics[:, 4:, :4], mosaics[:, 4:, 4:]]
  got = np.array([[int(c[i].mean().round()) for c in cells] for i in range(2)])
  np.testing.assert_array_equal(got[0], [250, 210, 170, 90])   # brightest 4, by rank
  np.testing.assert_array_equal(got[1], [20, 60, 100, 120])    # darkest 4, by rank


def test_build_rded_needs_a_pool_large_enough():
  images = np.zeros((12, 8, 8, 3), np.uint8)
  run = _fake_run(images, np.repeat([0, 1], 6), mipc=3)
  with pytest.raises(ValueError, match="raise benchmark.rded_mipc"):
    rded.build_rded(run, (lambda v, x: jnp.zeros((len(x), 2)), {}), ipc=1, factor=2, seed=0)


def test_external_class_ids_match_by_name_id_or_export_folder():
  names = ["n01440764", "n01443537", "n01484850"]
  assert external_class_ids(["n01443537", "n01484850"], names, "x") == [1, 2]
  assert external_class_ids(["0_n01440764", "2_n01484850"], names, "x") == [0, 2]
  assert external_class_ids(["00000", "00002"], names, "x") == [0, 2]   # RDED's folders
  assert external_class_ids(["1", "2"], names, "x", named=False) == [1, 2]
  with pytest.raises(ValueError, match=r"class 'n09999999' is not a class of the dataset"):
    external_class_ids(["n01440764", "n09999999"], names, "x")
  with pytest.raises(ValueError, match="is not a class of the dataset"):
    external_class_ids(["1_n01484850"], names, "x")   # id and name disagree
  with pytest.raises(ValueError, match="is not a class of the dataset"):
    external_class_ids(["7"], names, "x", named=False)  # id out of range
