import jax
import numpy as np
import pytest

from pca_jax.selection import select_per_class


def _reference(scores, labels, ipc, hard=False):
  out = []
  for c in sorted(set(labels.tolist())):
    items = [(-s if hard else s, i) for i, (s, l) in enumerate(zip(scores, labels)) if l == c]
    out += [i for _, i in sorted(items)[:ipc]]
  return out


@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_matches_sorted_reference(mode):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 200)
  scores = rng.integers(0, 6, 200).astype(float)  # many ties: tie-break by index
  got = select_per_class(scores, labels, 7, mode)
  assert got.tolist() == _reference(scores, labels, 7, hard=(mode == "hard"))


def test_counts_order_and_semantics():
  labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
  scores = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.3, 0.1, 0.05])
  easy = select_per_class(scores, labels, 2, "easy")
  hard = select_per_class(scores, labels, 2, "hard")
  assert easy.tolist() == [7, 1, 6, 2]  # class 0 first, lowest scores first
  assert hard.tolist() == [3, 5, 0, 4]
  assert np.bincount(labels[easy]).tolist() == [2, 2]


def test_random_uses_key_and_is_class_balanced():
  labels = np.repeat(np.arange(4), 25)
  a = select_per_class(None, labels, 5, "random", key=jax.random.key(0))
  b = select_per_class(None, labels, 5, "random", key=jax.random.key(0))
  c = select_per_class(None, labels, 5, "random", key=jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert np.bincount(labels[a]).tolist() == [5] * 4
  assert len(set(a.tolist())) == 20


def test_errors_name_the_problem():
  labels = np.array([0, 0, 0, 1])
  with pytest.raises(ValueError, match="class 1 has only 1 examples"):
    select_per_class(np.zeros(4), labels, 2)
  with pytest.raises(ValueError, match="NaN/inf"):
    select_per_class(np.array([0, np.nan, 0, 0]), labels, 1)
  with pytest.raises(ValueError, match="PRNG key"):
    select_per_class(None, labels, 1, "random")
  with pytest.raises(ValueError, match="unknown selection mode"):
    select_per_class(np.zeros(4), labels, 1, "median")
  with pytest.raises(ValueError, match="class 2 has 0 examples"):
    select_per_class(np.zeros(4), labels, 1, num_classes=3)
  with pytest.raises(ValueError, match="does not match"):
    select_per_class(np.zeros(3), labels, 1)


def test_ties_in_score_are_broken_by_a_seeded_draw_not_the_file_order():
  """Forgetting counts are integers and tie massively: the easiest ipc of a class must not be
  its first files. With a key the ties are drawn (seeded: the same key, the same pick); without
  one they go to the smaller index."""
  labels = np.repeat(np.arange(2), 50)
  scores = np.zeros(100)
  scores[[3, 60]] = -1.0  # one strictly easiest example per class
  a = select_per_class(scores, labels, 5, "easy", key=jax.random.key(0))
  b = select_per_class(scores, labels, 5, "easy", key=jax.random.key(1))
  assert a[0] == 3 and a[5] == 60 and b[0] == 3 and b[5] == 60  # the score comes first
  assert a[1:5].tolist() != [0, 1, 2, 4] and a[6:].tolist() != [50, 51, 52, 53]
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, select_per_class(scores, labels, 5, "easy",
                                                    key=jax.random.key(0)))
  np.testing.assert_array_equal(select_per_class(scores, labels, 5, "easy")[:5], [3, 0, 1, 2, 4])
  hard = select_per_class(-scores, labels, 5, "hard", key=jax.random.key(0))
  np.testing.assert_array_equal(hard, a)  # hard on negated scores: the same ranking
