"""AUM (Pleiss et al. 2020) and CCS (Zheng et al. 2023): the pure functions against numpy
re-implementations, their config fields, and the score + select stages on the demo data."""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest

from pca_jax import scoring
from pca_jax.selection import ccs_budgets, ccs_per_class, ccs_strata, select_per_class

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------ AUM
def _np_margin(logits, labels):
  out = []
  for row, y in zip(logits, labels):
    others = [v for j, v in enumerate(row) if j != y]
    out.append(row[y] - max(others))
  return np.array(out)


def test_margin_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(29, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, 29)
  got = np.asarray(scoring.margin(logits, labels))
  np.testing.assert_allclose(got, _np_margin(logits, labels), rtol=1e-6, atol=1e-6)
  # > 0 exactly where the label is the top-1 prediction
  np.testing.assert_array_equal(got > 0, np.asarray(scoring.correct(logits, labels)))
  np.testing.assert_allclose(scoring.margin(np.array([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]]),
                                            np.array([1, 1])), [1.0, -5.0])


def test_aum_from_margins_is_minus_the_mean():
  rng = np.random.default_rng(1)
  m = rng.normal(size=(4, 9)).astype(np.float32)
  expected = [-sum(m[t, n] for t in range(4)) / 4 for n in range(9)]
  np.testing.assert_allclose(scoring.aum_from_margins(m), expected, rtol=1e-6, atol=1e-7)
  # sign: always learned with a large margin = easy = LOW score; never learned = hard = high
  easy_hard = scoring.aum_from_margins(np.array([[5.0, -2.0], [7.0, -1.0]]))
  np.testing.assert_allclose(easy_hard, [-6.0, 1.5])
  assert easy_hard[0] < easy_hard[1]
  with pytest.raises(ValueError, match="margins must be \\[T, N\\]"):
    scoring.aum_from_margins(np.zeros(5))


def test_aum_is_a_history_score():
  assert scoring.SCORES["aum"].fn is None and scoring.SCORES["aum"].requires == "aum"
  assert "aum" not in scoring.SELECTION_SCORES and "margin" in scoring.SCORE_FNS
  assert "negated" in scoring.SCORES["aum"].doc


def test_correct_and_margin_in_one_pass():
  rng = np.random.default_rng(2)
  n, c = 13, 3
  images = rng.normal(size=(n, 2, 2, 1)).astype(np.float32)
  labels = rng.integers(0, c, n)
  w = rng.normal(size=(4, c)).astype(np.float32)
  out = scoring.score_dataset(lambda v, x: x.reshape(x.shape[0], -1) @ v["w"], [{"w": w}],
                              images, labels, scores=("correct", "margin"), batch_size=8)
  logits = images.reshape(n, -1) @ w
  np.testing.assert_allclose(out["margin"][0], _np_margin(logits, labels), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out["correct"][0] > 0.5, logits.argmax(1) == labels)


# ------------------------------------------------------------------------------------------ CCS
def _reference_strata(score, stratas):
  """The original stratified_sampling's bins and bin_allocate budgets, loop by loop (positive
  scores: the max * 1.0001 rule). Returns (bin of every example, budgets as a function)."""
  min_score = score.min()
  max_score = score.max() * 1.0001
  step = (max_score - min_score) / stratas
  bins = np.full(len(score), -1)
  strata_num = []
  for i in range(stratas):
    start, end = min_score + i * step, min_score + (i + 1) * step
    mask = (score >= start) & (score < end)
    bins[mask] = i
    strata_num.append(int(mask.sum()))

  def bin_allocate(num):
    sorted_index = np.argsort(strata_num, kind="stable")
    rest, budgets = num, []
    for i, k in enumerate(sorted_index):
      cur = min(strata_num[k], rest // (stratas - i))
      budgets.append(cur)
      rest -= cur
    out = np.zeros(stratas, int)
    out[sorted_index] = budgets
    return out
  return bins, np.array(strata_num), bin_allocate


def test_strata_and_budgets_match_the_original():
  rng = np.random.default_rng(3)
  for trial in range(20):
    score = rng.gamma(1.0 + trial % 3, size=200) + 0.01
    stratas = [1, 5, 50][trial % 3]
    bins, counts, allocate = _reference_strata(score, stratas)
    assert (bins >= 0).all()  # the max is in the last bin
    np.testing.assert_array_equal(ccs_strata(score, stratas), bins)
    for num in (1, 7, 60, 150, 200, 250):
      np.testing.assert_array_equal(ccs_budgets(counts, num), allocate(num))


def test_budgets_sum_to_the_request_when_the_pool_is_large_enough():
  rng = np.random.default_rng(4)
  for _ in range(300):
    counts = rng.integers(0, 30, rng.integers(1, 12))
    num = int(rng.integers(0, counts.sum() + 10))
    b = ccs_budgets(counts, num)
    assert (b <= counts).all() and (b >= 0).all()
    assert b.sum() == min(num, counts.sum())


def test_strata_edge_cases():
  neg = np.array([-5.0, -3.0, -1.0, -0.2])  # negated AUMs: max * 1.0001 would drop the max
  assert ccs_strata(neg, 4).tolist() == [0, 1, 3, 3]
  zero_max = np.array([-1.0, -0.4, 0.0])  # max * 1.0001 = 0 would drop it as well
  assert ccs_strata(zero_max, 2).tolist() == [0, 1, 1]
  assert ccs_strata(np.full(6, 0.3), 50).tolist() == [0] * 6  # all equal: one bin


def _kept(scores, idx, beta):
  order = idx[np.lexsort((idx, scores[idx]))]
  return order[:order.size - int(beta * order.size)]


@pytest.mark.parametrize("beta,strata,per_class", [(0.1, 50, 12), (0.3, 5, 20), (0.0, 10, 3)])
def test_ccs_per_class_follows_the_original_per_class(beta, strata, per_class):
  rng = np.random.default_rng(5)
  labels = rng.permutation(np.repeat(np.arange(4), [60, 45, 70, 50]))
  scores = rng.gamma(2.0, size=labels.size) + 0.01
  got = ccs_per_class(scores, labels, per_class, jax.random.key(0), beta=beta, strata=strata,
                      num_classes=4)
  assert got.dtype == np.int64 and got.shape == (4 * per_class,)
  np.testing.assert_array_equal(labels[got], np.repeat(np.arange(4), per_class))  # class order
  for c in range(4):
    picks = got[c * per_class:(c + 1) * per_class]
    assert len(set(picks.tolist())) == per_class
    assert np.all(np.diff(scores[picks]) >= 0)  # easiest first within a class
    kept = _kept(scores, np.flatnonzero(labels == c), beta)
    assert set(picks.tolist()) <= set(kept.tolist())  # nothing from the hard cutoff
    bins, _, allocate = _reference_strata(scores[kept], strata)
    bin_of = dict(zip(kept.tolist(), bins.tolist()))
    picked_bins = np.bincount([bin_of[i] for i in picks.tolist()], minlength=strata)
    np.testing.assert_array_equal(picked_bins, allocate(per_class))


def test_ccs_is_seeded_and_select_per_class_dispatches():
  rng = np.random.default_rng(6)
  labels = np.repeat(np.arange(3), 80)
  scores = rng.normal(size=240)
  a = ccs_per_class(scores, labels, 10, jax.random.key(1), beta=0.2, strata=4)
  np.testing.assert_array_equal(a, ccs_per_class(scores, labels, 10, jax.random.key(1), beta=0.2,
                                                 strata=4))
  assert not np.array_equal(a, ccs_per_class(scores, labels, 10, jax.random.key(2), beta=0.2,
                                             strata=4))
  np.testing.assert_array_equal(a, select_per_class(scores, labels, 10, "ccs",
                                                    key=jax.random.key(1), ccs_beta=0.2,
                                                    ccs_strata=4))


def test_ccs_beta_zero_keeps_the_hardest():
  scores = np.concatenate([np.linspace(0.0, 1.0, 20), [10.0]])  # one far outlier, index 20
  labels = np.zeros(21, int)
  # strata of width ~1: the outlier is alone in its bin, a small bin taken whole
  with_it = ccs_per_class(scores, labels, 5, jax.random.key(0), beta=0.0, strata=10)
  assert 20 in with_it.tolist() and with_it[-1] == 20
  without = ccs_per_class(scores, labels, 5, jax.random.key(0), beta=0.1, strata=10)
  assert 20 not in without.tolist() and 19 not in without.tolist()  # int(0.1 * 21) = 2 cut


def test_ccs_small_pool_takes_back_the_cut_easiest_first():
  rng = np.random.default_rng(7)
  labels = np.repeat([0, 1], 10)
  scores = rng.normal(size=20)
  # beta 0.5 keeps 5 of 10; 7 asked: the 5 kept and the 2 easiest dropped = the 7 easiest
  got = ccs_per_class(scores, labels, 7, jax.random.key(0), beta=0.5, strata=3)
  np.testing.assert_array_equal(got, select_per_class(scores, labels, 7, "easy"))


def test_ccs_all_equal_scores():
  from pca_jax.selection import tie_breaks
  labels = np.zeros(30, int)
  got = ccs_per_class(np.ones(30), labels, 8, jax.random.key(3), beta=0.1, strata=50)
  # the hard cutoff among ties: the last 3 of the seeded tie-break order, not of the file order
  kept = np.argsort(tie_breaks(jax.random.key(3), 30), kind="stable")[:27]
  assert len(set(got.tolist())) == 8 and set(got.tolist()) <= set(kept.tolist())
  assert set(kept.tolist()) != set(range(27))


def test_ccs_errors_name_the_problem():
  labels = np.array([0, 0, 0, 1])
  with pytest.raises(ValueError, match="class 1 has only 1 examples but ipc=2"):
    ccs_per_class(np.zeros(4), labels, 2, jax.random.key(0))
  with pytest.raises(ValueError, match="needs a PRNG key"):
    select_per_class(np.zeros(4), labels, 1, "ccs")
  with pytest.raises(ValueError, match="needs scores"):
    select_per_class(None, labels, 1, "ccs", key=jax.random.key(0))
  with pytest.raises(ValueError, match="beta must be a fraction in \\[0, 1\\), got 1.0"):
    ccs_per_class(np.zeros(4), labels, 1, jax.random.key(0), beta=1.0)
  with pytest.raises(ValueError, match="strata must be a positive integer, got 0"):
    ccs_per_class(np.zeros(4), labels, 1, jax.random.key(0), strata=0)


# ---------------------------------------------------------------------------------------- config
def _demo_config(**fields):
  sys.path.insert(0, ROOT)
  from configs import demo
  from tests.helpers import set_fields
  return set_fields(demo.get_config(), fields)


@pytest.mark.parametrize("fields,match", [
    ({"select.score": "margin"},
     "unknown select.score 'margin'; choose one of ('el2n', 'entropy', 'forgetting', 'aum')"),
    ({"select.score": "aum"}, "select.score='aum' needs --config.score.aum=True"),
    ({"select.score": "forgetting"}, "select.score='forgetting' needs --config.score.forgetting"),
    ({"select.ccs_beta": 1.0}, "select.ccs_beta must be a fraction in [0, 1)"),
    ({"select.ccs_strata": 0}, "select.ccs_strata must be a positive integer, got 0"),
    ({"select.score": "el2n", "score.scores_path": "/x.npy"}, "leave select.score empty"),
    ({"stages": "score,teacher,benchmark", "benchmark.ccs_beta": -0.1},
     "benchmark.ccs_beta must be a fraction in [0, 1)"),
    ({"stages": "score,teacher,benchmark", "benchmark.ccs_score": "auc"},
     "unknown benchmark.ccs_score 'auc'"),
    ({"select.mode": "median"}, "unknown select.mode 'median'"),
])
def test_new_fields_are_validated(fields, match):
  from pca_jax.checks import validate
  with pytest.raises(ValueError, match=match.replace("[", "\\[").replace("(", "\\(")
                     .replace(")", "\\)")):
    validate(_demo_config(**fields))


def test_valid_settings_pass():
  from pca_jax.checks import validate
  from pca_jax.config import select_score
  c = _demo_config(**{"select.mode": "ccs", "select.score": "aum", "score.aum": True})
  validate(c)
  assert select_score(c) == "aum"
  c = _demo_config(**{"select.mode": "ccs", "score.scores_path": "/x.npy"})
  validate(c)  # precomputed scores: select.score stays empty and names score.kind
  assert select_score(c) == "el2n"


def test_benchmark_ccs_methods_read_the_configured_score():
  from pca_jax.dc.methods import METHODS
  c = _demo_config()
  assert METHODS["ccs"].score_name(c) == "aum" and METHODS["pca_ccs"].score_name(c) == "aum"
  c.benchmark.ccs_score = "el2n"
  assert METHODS["ccs"].score_name(c) == "el2n" and METHODS["pca_aum"].score_name(c) == "aum"
  assert METHODS["pca_ccs"].grids == METHODS["pca_aum"].grids == "combine"
  assert METHODS["pca_ccs"].crop == "patch" and METHODS["ccs"].crop == "rrc"
  assert {"aum_easy", "aum_hard", "pca_entropy", "pca_forgetting"} <= set(METHODS)
  assert "benchmark.ccs_strata" in METHODS["ccs"].fields


def test_benchmark_ccs_needs_its_score_flag(tmp_path):
  from pca_jax import main as pca_main
  c = _demo_config(**{"stages": "score,teacher,benchmark", "benchmark.methods": "random,ccs",
                      "jax_cache_dir": ""})
  with pytest.raises(ValueError, match="benchmark method ccs ranks by aum scores, which the score "
                                       "stage computes only with --config.score.aum=True"):
    pca_main.run_pipeline(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ score + select
@pytest.mark.long
def test_score_aum_then_ccs_select_on_the_demo(tmp_path):
  from pca_jax import main as pca_main
  from pca_jax import rng as pca_rng
  c = _demo_config(**{
      "stages": "score,select,combine,store", "jax_cache_dir": "", "model.name": "resnet10",
      "model.width": 8, "score.num_models": 1, "score.train.epochs": 2,
      "score.train.batch_size": 64, "score.batch_size": 128, "score.aum": True,
      "score.together": False,
      "select.ipc": 4, "select.mode": "ccs", "select.score": "aum", "select.ccs_beta": 0.2,
      "select.ccs_strata": 5})
  wd = tmp_path / "run"
  pca_main.run_pipeline(c, wd)
  # one model alone: [1, N] per epoch (models trained together write [K, N])
  margins = np.stack([np.load(wd / "score" / "model_0" / f"margin_epoch{e}.npy")[0]
                      for e in (1, 2)])
  assert margins.shape == (2, 1347) and np.isfinite(margins).all()
  assert (wd / "score" / "model_0" / "correct_epoch2.npy").exists()
  aum = np.load(wd / "scores_aum.npy")
  np.testing.assert_allclose(aum, -margins.mean(0), rtol=1e-6, atol=1e-6)
  assert np.load(wd / "score" / "aum_per_model.npy").shape == (1, 1347)
  assert not (wd / "scores_forgetting.npy").exists()  # score.forgetting stays off
  labels = np.load(wd / "labels.npy")
  key = jax.random.key(pca_rng.derive_seed(c.seed, "select"))
  np.testing.assert_array_equal(np.load(wd / "selected.npy"),
                                ccs_per_class(aum, labels, 16, key, beta=0.2, strata=5,
                                              num_classes=10))
  manifest = json.loads((wd / "compressed" / "manifest.json").read_text())
  assert manifest["selection"] == {"mode": "ccs", "score": "aum", "num_models": 1,
                                   "scores_path": None, "ccs_beta": 0.2, "ccs_strata": 5}
  select = json.loads((wd / "stages" / "select.json").read_text())
  assert select["summary"]["score"] == "aum" and select["summary"]["mode"] == "ccs"
