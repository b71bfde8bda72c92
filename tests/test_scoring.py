import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax import scoring


def _np_el2n(logits, labels):
  e = np.exp(logits - logits.max(1, keepdims=True))
  p = e / e.sum(1, keepdims=True)
  oh = np.eye(logits.shape[1])[labels]
  return np.sqrt(((p - oh) ** 2).sum(1))


def test_el2n_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(37, 11)).astype(np.float32) * 3
  labels = rng.integers(0, 11, 37)
  np.testing.assert_allclose(scoring.el2n(logits, labels), _np_el2n(logits, labels), rtol=1e-5,
                             atol=1e-6)


def test_el2n_extremes():
  # confident and right -> ~0; confident and wrong -> ~sqrt(2)
  logits = jnp.array([[100.0, 0.0], [100.0, 0.0]])
  s = np.asarray(scoring.el2n(logits, jnp.array([0, 1])))
  np.testing.assert_allclose(s, [0.0, np.sqrt(2)], atol=1e-5)


def test_entropy_matches_numpy_and_bounds():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(20, 7)).astype(np.float32)
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(scoring.entropy(logits), -(p * np.log(p)).sum(1), rtol=1e-5)
  np.testing.assert_allclose(scoring.entropy(jnp.zeros((1, 7))), [np.log(7)], rtol=1e-6)


def test_forgetting_counts():
  h = np.array([[1, 0, 0, 1],
                [0, 0, 1, 1],
                [1, 0, 0, 1],
                [0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(scoring.forgetting_counts(h), [2, 4, 1, 0])


def _linear_apply(variables, images):
  return images.reshape(images.shape[0], -1) @ variables["w"]


def test_el2n_scores_averages_models_arrays_and_stream():
  rng = np.random.default_rng(2)
  n, c = 21, 4  # 21 is not a multiple of the batch or of 8 devices: padding is exercised
  images = rng.normal(size=(n, 2, 2, 1)).astype(np.float32)
  labels = rng.integers(0, c, n)
  vs = [{"w": rng.normal(size=(4, c)).astype(np.float32)} for _ in range(3)]
  expected = np.mean([_np_el2n(images.reshape(n, -1) @ v["w"], labels) for v in vs], axis=0)
  got = scoring.el2n_scores(_linear_apply, vs, images, labels, batch_size=8)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  def stream():  # shuffled order, explicit indices and masks, as the Grain pipeline yields
    order = rng.permutation(n)
    for s in range(0, n, 8):
      idx = order[s:s + 8]
      pad = 8 - len(idx)
      yield {"image": images[np.concatenate([idx, np.zeros(pad, int)])],
             "label": labels[np.concatenate([idx, np.zeros(pad, int)])],
             "index": np.concatenate([idx, -np.ones(pad, int)]),
             "mask": np.arange(8) < len(idx)}
  got2 = scoring.el2n_scores(_linear_apply, vs, stream(), num_examples=n)
  np.testing.assert_allclose(got2, expected, rtol=1e-5, atol=1e-6)


def test_el2n_scores_detects_missing_examples():
  images = np.zeros((8, 2, 2, 1), np.float32)
  batch = {"image": images, "label": np.zeros(8, int), "index": np.arange(8),
           "mask": np.ones(8, bool)}
  with pytest.raises(ValueError, match="never scored"):
    scoring.el2n_scores(_linear_apply, [{"w": np.ones((4, 2), np.float32)}], [batch],
                        num_examples=10)
  with pytest.raises(ValueError, match="repeated"):
    scoring.el2n_scores(_linear_apply, [{"w": np.ones((4, 2), np.float32)}], [batch, batch],
                        num_examples=8)
