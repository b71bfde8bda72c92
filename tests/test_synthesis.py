"""sre2l / cda recovery (pca_jax.dc.synthesis): the BatchNorm loss, the recovery, the CDA schedule."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax.dc import synthesis
from pca_jax.models.registry import create_model
from pca_jax.models.resnet import BatchNorm


class TinyBN(nn.Module):
  """conv -> BN -> relu -> conv -> BN -> mean -> dense: two BatchNorm layers whose inputs are the
  convolutions' outputs (captured as intermediates for the numpy reference)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), name="conv_a")(x)
    x = BatchNorm(use_running_average=not train, name="bn_a")(x)
    x = nn.relu(x)
    x = nn.Conv(5, (3, 3), strides=(2, 2), name="conv_b")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn_b")(x)  # flax's own BN too
    return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


class NoBN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3)(jnp.mean(nn.Conv(4, (3, 3))(x), axis=(1, 2)))


def _tiny_teacher(seed=0):
  model = TinyBN()
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)))
  r = np.random.default_rng(seed)
  stats = jax.tree.map(lambda a: jnp.asarray(r.uniform(0.2, 1.5, a.shape), jnp.float32),
                       variables["batch_stats"])
  return model, {**variables, "batch_stats": stats}


def _numpy_bn_loss(model, variables, x, mask, first=10.0):
  _, inter = model.apply(variables, x, capture_intermediates=True)
  inter = inter["intermediates"]
  keep = np.asarray(mask, bool)
  out = []
  for conv, bn in (("conv_a", "bn_a"), ("conv_b", "bn_b")):
    a = np.asarray(inter[conv]["__call__"][0], np.float64)[keep]
    flat = a.reshape(-1, a.shape[-1])
    mean, var = flat.mean(0), flat.var(0)
    rm = np.asarray(variables["batch_stats"][bn]["mean"], np.float64)
    rv = np.asarray(variables["batch_stats"][bn]["var"], np.float64)
    out.append(np.sqrt(((rv - var) ** 2).sum()) + np.sqrt(((rm - mean) ** 2).sum()))
  return first * out[0] + out[1], out


def test_bn_matching_loss_equals_numpy():
  model, variables = _tiny_teacher()
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
  for mask in (np.ones(6, bool), np.array([1, 1, 0, 1, 0, 1], bool)):
    _, total, terms = synthesis.bn_matching_loss(
        lambda v, im: model.apply(v, im), variables, x, jnp.asarray(mask))
    ref_total, ref_terms = _numpy_bn_loss(model, variables, x, mask)
    np.testing.assert_allclose(np.asarray(terms), ref_terms, rtol=1e-4)
    np.testing.assert_allclose(float(total), ref_total, rtol=1e-4)


def test_recovery_lowers_bn_loss_and_raises_class_probability():
  model, variables = _tiny_teacher()
  apply_fn = lambda v, im: model.apply(v, im)  # noqa: E731
  targets = jnp.asarray([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)
  mask = jnp.ones(8, bool)
  key = jax.random.key(3)
  kwargs = dict(image_size=8, lr=0.25, r_bn=0.3, jitter=0, crop_scale=(1.0, 1.0))
  x0 = synthesis.initial_images(key, 8, 8)
  x1 = synthesis.make_recover(apply_fn, iterations=100, **kwargs)(variables, key, targets, mask)
  lo, hi = synthesis._pixel_bounds()
  assert bool(jnp.all(x1 >= lo - 1e-6)) and bool(jnp.all(x1 <= hi + 1e-6))  # clipped every step

  def stats(x):
    logits, bn, _ = synthesis.bn_matching_loss(apply_fn, variables, x, mask)
    p = jax.nn.softmax(logits)[jnp.arange(8), targets]
    return float(bn), np.asarray(p)
  bn0, p0 = stats(jnp.clip(x0, lo, hi))
  bn1, p1 = stats(x1)
  assert bn1 < 0.8 * bn0, (bn0, bn1)
  assert p1.mean() > p0.mean() + 0.1 and (p1 > p0).all(), (p0, p1)
  u8 = synthesis.to_uint8(x1)
  assert u8.dtype == jnp.uint8 and u8.shape == (8, 8, 8, 3)


def test_recovery_is_sharded_and_masked_examples_do_not_matter():
  """8 devices: a padded batch gives the same real images whatever the padded examples are."""
  model, variables = _tiny_teacher()
  apply_fn = lambda v, im: model.apply(v, im)  # noqa: E731
  recover = synthesis.make_recover(apply_fn, image_size=8, iterations=5, jitter=1)
  mask = jnp.asarray([1, 1, 1, 1, 1, 0, 0, 0], bool)
  a = recover(variables, jax.random.key(0), jnp.asarray([0, 1, 2, 0, 1, 0, 0, 0]), mask)
  b = recover(variables, jax.random.key(0), jnp.asarray([0, 1, 2, 0, 1, 2, 2, 1]), mask)
  assert len(a.sharding.device_set) == jax.device_count()
  np.testing.assert_allclose(np.asarray(a[:5]), np.asarray(b[:5]), atol=1e-5)


def test_cda_schedule_endpoints():
  n = 1000
  assert float(synthesis.cda_min_scale(0, n)) == pytest.approx(1.0)
  assert float(synthesis.cda_min_scale(n // 2, n)) == pytest.approx(0.08 + 0.92 / 2)
  assert float(synthesis.cda_min_scale(n - 1, n)) == pytest.approx(0.08, abs=1e-4)
  assert float(synthesis.cda_min_scale(n, n)) == pytest.approx(0.08)
  vals = np.asarray([float(synthesis.cda_min_scale(i, n)) for i in range(0, n, 50)])
  assert (np.diff(vals) < 0).all()
  # milestone 0.5: already at 0.08 halfway
  assert float(synthesis.cda_min_scale(n // 2, n, 0.5)) == pytest.approx(0.08)
  assert synthesis.jitter_pixels(32, 224) == 32 and synthesis.jitter_pixels(32, 16) == 2


def test_teacher_without_batch_norm_is_refused():
  model = NoBN()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="teacher with BatchNorm"):
    synthesis.check_batch_norm_teacher(lambda v, x: model.apply(v, x), variables, 8)
  with pytest.raises(ValueError, match="teacher with BatchNorm"):
    synthesis.bn_matching_loss(lambda v, x: model.apply(v, x), variables, jnp.zeros((2, 8, 8, 3)))
  resnet = create_model("resnet10", 3, width=4, stem="small")
  v = resnet.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  synthesis.check_batch_norm_teacher(lambda v, x: resnet.apply(v, x, train=False), v, 8)


def test_synthesis_targets_order():
  np.testing.assert_array_equal(synthesis.synthesis_targets(3, 2), [0, 1, 2, 0, 1, 2])


def test_noise_sets_are_seeded_gaussian_images_at_the_budget():
  """The `noise` method: C x ipc images of the stored size, labels by class, N(0, 1) in normalised
  space saved like sre2l's output (uint8, clipped), the same for the same seed, another for
  another seed or config.seed."""
  from types import SimpleNamespace
  from pca_jax.augment import IMAGENET_MEAN, IMAGENET_STD
  from pca_jax.dc.methods import METHODS

  def run(config_seed=0):
    return SimpleNamespace(config=SimpleNamespace(seed=config_seed,
                                                  data=SimpleNamespace(image_size=32)),
                           train_source=SimpleNamespace(num_classes=5))
  images, labels, source = METHODS["noise"].build(run(), None, 4, (1, 1), 0)
  assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat(np.arange(5), 4))
  assert source.size == 0
  x = images.astype(np.float64) / 255.0
  np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), IMAGENET_MEAN, atol=0.01)
  # the std of a clipped (and truncated) normal is a little under the unclipped one
  spread = x.std(axis=(0, 1, 2))
  assert np.all(spread < np.asarray(IMAGENET_STD)) and np.all(spread > 0.9 * np.asarray(IMAGENET_STD))
  clipped = np.mean((images == 0) | (images == 255))
  assert 0.01 < clipped < 0.06
  again, _, _ = METHODS["noise"].build(run(), None, 4, (1, 1), 0)
  np.testing.assert_array_equal(images, again)
  other, _, _ = METHODS["noise"].build(run(), None, 4, (1, 1), 1)
  assert np.mean(other != images) > 0.9
  other_config, _, _ = METHODS["noise"].build(run(config_seed=1), None, 4, (1, 1), 0)
  assert np.mean(other_config != images) > 0.9
  assert METHODS["noise"].seeded and not METHODS["noise"].teacher and not METHODS["noise"].score
