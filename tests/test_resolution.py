"""Resolution-matched PCA: train and evaluate at the patch (cell) resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax import training as train
from pca_jax.training import steps
from pca_jax.training.views import eval_preprocess, view_sizes
from pca_jax.checks import validate
from tests.helpers import colour_dataset, colour_source, tiny_config
from tests.test_main import tiny_config as pipeline_config


def test_view_sizes():
  cfg = tiny_config(image_size=224, grid=(2, 2)).train
  assert view_sizes(cfg) == (224, 224, 0)
  cfg.resolution = "patch"
  assert view_sizes(cfg) == (112, 112, 0)
  cfg.resolution = "blur"
  assert view_sizes(cfg) == (224, 224, 112)
  cfg.grid = (1, 2)
  with pytest.raises(ValueError, match="needs a square grid"):
    view_sizes(cfg)
  cfg.update(dict(grid=(8, 8), image_size=16, resolution="patch"))
  with pytest.raises(ValueError, match="cells of 2px are too small"):
    view_sizes(cfg)
  cfg.resolution = "half"
  with pytest.raises(ValueError, match="unknown train.resolution"):
    view_sizes(cfg)


def test_config_rejects_resolution_that_does_not_fit_grid():
  c = pipeline_config()
  c.train.resolution = "patch"
  validate(c)  # 2x2 grid at 16px: 8px cells
  c.combine.grid = (1, 2)
  with pytest.raises(ValueError, match="square grid.*combine.grid=\\(1, 2\\)"):
    validate(c)
  c.combine.grid = (4, 4)
  validate(c)  # 4px cells are the smallest allowed
  c.combine.grid = (8, 8)
  with pytest.raises(ValueError, match="cells of 2px are too small"):
    validate(c)


def test_patch_mode_trains_and_evaluates_at_the_cell_size(tmp_path, monkeypatch):
  images, labels = colour_dataset(32, 4, 8)
  seen_views, seen_eval = [], []
  from pca_jax import augment
  real_make = augment.make_train_augment

  def spy_make(crop, out_size, *a, **k):
    seen_views.append(tuple(out_size))
    return real_make(crop, out_size, *a, **k)
  monkeypatch.setattr(augment, "make_train_augment", spy_make)
  from pca_jax.data import pipeline
  real_ordered = pipeline.ordered_batches

  def spy_ordered(source, local, size, *a, **k):
    for b in real_ordered(source, local, size, *a, **k):
      seen_eval.append(b["image"].shape[1:3])
      yield b
  monkeypatch.setattr(pipeline, "ordered_batches", spy_ordered)
  cfg = tiny_config(epochs=2, crop="patch", grid=(2, 2), resolution="patch")
  state, m = train.train(cfg, tmp_path, train.InMemoryData(images, labels, 4), colour_source(24),
                         log=lambda s: None)
  assert seen_views == [(4, 4)] and set(seen_eval) == {(4, 4)}
  assert m["eval_count"] == 24
  # the model was built for 4x4 inputs: its first conv sees a 4x4 image
  out = state.apply_fn(train.variables_of(state), jnp.zeros((1, 4, 4, 3)), train=False)
  assert out.shape == (1, 4)


def test_blur_eval_is_down_up_resize():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
  unit = dict(mean=(0, 0, 0), std=(1 / 255,) * 3)  # identity normalisation
  full = np.asarray(eval_preprocess(img, 8, 0, **unit))
  blurred = np.asarray(eval_preprocess(img, 8, 4, **unit))
  patch = np.asarray(eval_preprocess(img, 4, 0, **unit))
  np.testing.assert_allclose(full, img, atol=1e-3)
  assert patch.shape == (2, 4, 4, 3)
  # blurred = high frequencies gone: smoother than the original, and equal to an explicit down-up
  assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(full, axis=1)).mean()
  down = jax.image.resize(img.astype(np.float32), (2, 4, 4, 3), "linear", antialias=True)
  up = jax.image.resize(down, (2, 8, 8, 3), "linear", antialias=True)
  np.testing.assert_allclose(blurred, up, atol=1e-3)
  np.testing.assert_allclose(patch, down, atol=1e-3)


def test_soft_labels_at_patch_resolution_feed_the_teacher_full_size_views():
  """The teacher labels each view at its own training resolution, the student at the cell size."""
  seen = []

  def teacher_apply(v, x):
    seen.append(x.shape)
    return jnp.zeros((x.shape[0], 4))
  spec = steps.LossSpec(4, teacher_apply=teacher_apply, teacher_size=8)
  import optax
  from pca_jax.models.registry import create_model
  model = create_model("resnet10", 4, 4, "small")
  state = steps.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (4, 4, 3))
  views = jnp.zeros((2, 4, 4, 3))
  steps.train_update(state, views, jnp.zeros(2, jnp.int32), jnp.ones(2), spec, None,
                      jax.random.key(1))
  assert seen == [(2, 8, 8, 3)]
