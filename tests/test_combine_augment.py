import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax import augment
from pca_jax.combine import cell_boxes, make_mosaics, resize_images


def test_cell_boxes_row_major():
  np.testing.assert_array_equal(cell_boxes((2, 3), (4, 6)),
                                [[0, 0, 2, 2], [0, 2, 2, 2], [0, 4, 2, 2],
                                 [2, 0, 2, 2], [2, 2, 2, 2], [2, 4, 2, 2]])
  with pytest.raises(ValueError, match="does not divide"):
    cell_boxes((3, 3), (224, 224))


def test_mosaic_cells_are_whole_resized_sources():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  # out_size = 2x the source: each cell has the source's own size, so content is exact
  mosaics, mlabels = make_mosaics(images, labels, (2, 2), (12, 12))
  mosaics = np.asarray(mosaics)
  assert mosaics.shape == (2, 12, 12, 3) and mosaics.dtype == np.uint8
  assert mlabels.tolist() == [0, 1]
  for m in range(2):
    for k, (t, l, h, w) in enumerate(cell_boxes((2, 2), (12, 12))):
      np.testing.assert_array_equal(mosaics[m, t:t + h, l:l + w], images[4 * m + k])
  # default out_size keeps the source size: cells are the whole image downsampled
  small, _ = make_mosaics(images, labels, (2, 2))
  ref = np.asarray(resize_images(jnp.asarray(images), (3, 3)))
  np.testing.assert_array_equal(np.asarray(small)[1, 3:, :3], ref[6])
  # a 2x box-average downsample of a smooth image is close to the antialiased resize
  smooth = np.tile(np.linspace(0, 255, 6)[None, :, None], (6, 1, 3))
  box = smooth.reshape(3, 2, 3, 2, 3).mean((1, 3))
  got = np.asarray(resize_images(jnp.asarray(smooth[None]), (3, 3)))[0]
  np.testing.assert_allclose(got, box, atol=13)


def test_mosaic_errors():
  imgs = np.zeros((4, 4, 4, 3), np.uint8)
  with pytest.raises(ValueError, match="mix classes"):
    make_mosaics(imgs, np.array([0, 0, 1, 1]))
  with pytest.raises(ValueError, match="groups of 4"):
    make_mosaics(imgs[:3], np.zeros(3, int))


def _cell_coloured_mosaics(n, size=16, grid=(2, 2)):
  """Mosaics whose cells have distinct constant colours (10, 20, 30, ...)."""
  imgs = np.zeros((n, size, size, 3), np.float32)
  for k, (t, l, h, w) in enumerate(cell_boxes(grid, (size, size))):
    imgs[:, t:t + h, l:l + w] = 10.0 * (k + 1)
  return jnp.asarray(imgs)


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (1, 2)])
def test_patch_constrained_crop_stays_in_one_cell(grid):
  size = 12 if grid == (3, 3) else 16
  images = _cell_coloured_mosaics(64, size, grid)
  crops = jax.jit(augment.patch_constrained_crop, static_argnums=(2, 3))(
      jax.random.key(3), images, grid, (10, 10))
  crops = np.asarray(crops)
  assert crops.shape == (64, 10, 10, 3)
  colours = set()
  for c in crops:
    assert np.ptp(c) < 1e-3, "a crop mixes pixels from two cells"
    colours.add(round(float(c[0, 0, 0])))
  n_cells = grid[0] * grid[1]
  assert colours == {10 * (k + 1) for k in range(n_cells)}  # every cell gets picked


def test_plain_rrc_on_mosaic_straddles_cells():
  # the contrast that motivates the constraint: an unconstrained crop mixes cells
  images = _cell_coloured_mosaics(64)
  crops = np.asarray(augment.random_resized_crop(jax.random.key(0), images, (8, 8)))
  assert sum(np.ptp(c) > 1 for c in crops) > 10


def test_rrc_boxes_fit_and_follow_scale():
  boxes = np.asarray(augment.sample_rrc_boxes(jax.random.key(0), 2000, 32, 48, (0.25, 0.5)))
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= 32).all() and (left + w <= 48).all()
  area = h * w / (32 * 48)
  assert 0.2 < area.min() and area.max() < 0.56  # rounding moves the area a little
  assert 0.35 < area.mean() < 0.4


def test_rrc_full_box_is_identity():
  rng = np.random.default_rng(0)
  img = jnp.asarray(rng.uniform(0, 255, (1, 9, 7, 3)).astype(np.float32))
  out = augment.crop_and_resize(img, jnp.array([[0.0, 0.0, 9.0, 7.0]]), (9, 7))
  np.testing.assert_allclose(out, img, atol=1e-3)
  # a box of the right half, same size out: equals the slice
  out = augment.crop_and_resize(img, jnp.array([[2.0, 3.0, 4.0, 4.0]]), (4, 4))
  np.testing.assert_allclose(out[0], img[0, 2:6, 3:7], atol=1e-3)


def test_determinism_by_key_and_flip():
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)), jnp.float32)
  a = augment.patch_constrained_crop(jax.random.key(5), images, (2, 2), (8, 8))
  b = augment.patch_constrained_crop(jax.random.key(5), images, (2, 2), (8, 8))
  c = augment.patch_constrained_crop(jax.random.key(6), images, (2, 2), (8, 8))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  f = np.asarray(augment.random_flip(jax.random.key(0), images))
  for x, y in zip(f, np.asarray(images)):
    assert np.array_equal(x, y) or np.array_equal(x, y[:, ::-1])


def test_normalize_and_train_augment():
  x = jnp.full((2, 4, 4, 3), 255, jnp.uint8)
  out = augment.normalize(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  np.testing.assert_allclose(out, 2.0)
  fn = augment.make_train_augment("patch", (8, 8), grid=(2, 2))
  y = jax.jit(fn)(jax.random.key(0), jnp.zeros((3, 16, 16, 3), jnp.uint8))
  assert y.shape == (3, 8, 8, 3) and y.dtype == jnp.float32
  with pytest.raises(ValueError, match="unknown crop"):
    augment.make_train_augment("cutmix", (8, 8))
  with pytest.raises(ValueError, match="crop scale"):
    augment.make_train_augment("rrc", (8, 8), scale=(0.5, 2.0))
