"""Budget-aware PCA: difficulty windows, the validation split, the tune stage and its search."""

import json
import re
from fractions import Fraction

import jax
import numpy as np
import pytest

from pca_jax import main as pca_main
from pca_jax.selection import (held_out_counts, select_from_pool, select_per_class,
                               validation_split, window_count, window_mask)
from tests.test_main import tiny_config


# ------------------------------------------------------------------------- windows (selection)
def _held_ranks(n, window):
  """Ranks r of n held by `window`, with exact rationals: lo <= (2r + 1) / 2n < hi, the bounds
  read as the decimals they were written as."""
  lo, hi = (Fraction(str(w)) for w in window)
  return [r for r in range(n) if lo <= Fraction(2 * r + 1, 2 * n) < hi]


def _window_reference(scores, labels, ipc, window):
  """Easiest-first inside the window, per class, by plain sorting (ties by index)."""
  out = []
  for c in sorted(set(labels.tolist())):
    ranked = [i for _, i in sorted((s, i) for i, (s, l) in enumerate(zip(scores, labels))
                                   if l == c)]
    out += [ranked[r] for r in _held_ranks(len(ranked), window)][:ipc]
  return out


@pytest.mark.parametrize("window", [(0.0, 0.5), (0.5, 1.0), (0.25, 0.75), (0.1, 0.35), (0.0, 1.0),
                                    (0.3, 0.7)])
def test_window_selection_matches_the_reference(window):
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 181)  # classes of different sizes (odd counts included)
  scores = rng.integers(0, 9, 181).astype(float)  # many ties: broken by index
  got = select_per_class(scores, labels, 5, "easy", window=window)
  assert got.tolist() == _window_reference(scores, labels, 5, window)


def test_window_rule_exact_bounds_and_partition():
  for n in range(1, 60):
    for window in ((0.0, 1.0), (0.25, 0.75), (0.35, 0.9), (0.1, 0.2), (0.0, 0.5), (0.5, 1.0)):
      assert np.flatnonzero(window_mask(n, window)).tolist() == _held_ranks(n, window), (n, window)
    # adjacent windows split the ranking: no overlap, no gap
    a, b, c = window_mask(n, (0.0, 0.3)), window_mask(n, (0.3, 0.7)), window_mask(n, (0.7, 1.0))
    assert ((a.astype(int) + b + c) == 1).all()
  assert window_mask(10, (0.25, 0.5)).tolist() == [False] * 2 + [True] * 3 + [False] * 5
  assert window_count(10, (0.35, 1.0)) == 7  # 0.35 is the middle of rank 3's cell: held
  assert window_count(131, (0.0, 0.5)) == 65 and window_count(131, (0.5, 1.0)) == 66


def test_window_random_order_draws_inside_the_window():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 40)
  scores = rng.random(120)
  held = set(_window_reference(scores, labels, 40, (0.25, 0.75)))  # every held example
  picks = [select_per_class(scores, labels, 6, "easy", key=jax.random.key(k), window=(0.25, 0.75),
                            order="random") for k in range(40)]
  for p in picks:
    assert set(p.tolist()) <= held and np.bincount(labels[p]).tolist() == [6] * 3
    assert len(set(p.tolist())) == 18
  np.testing.assert_array_equal(
      picks[0], select_per_class(scores, labels, 6, "easy", key=jax.random.key(0),
                                 window=(0.25, 0.75), order="random"))
  assert not np.array_equal(picks[0], picks[1])
  seen = set(np.concatenate(picks).tolist())
  assert seen == held  # 40 draws of 6 of 20 per class reach every held example
  # reference: per class, the held examples with the smallest uniform draw of the key
  u = np.asarray(jax.random.uniform(jax.random.key(3), (120,)))
  ref = []
  for c in range(3):
    members = [i for i in sorted(held) if labels[i] == c]
    ref += sorted(members, key=lambda i: u[i])[:6]
  assert picks[3].tolist() == ref


def test_window_errors():
  labels = np.repeat(np.arange(2), 10)
  scores = np.arange(20.0)
  for bad in ((0.5, 0.5), (0.6, 0.4), (-0.1, 0.5), (0.0, 1.5), (0.2,)):
    with pytest.raises(ValueError, match="is not a window of the easiest-first ranking"):
      select_per_class(scores, labels, 2, window=bad)
  with pytest.raises(ValueError, match="refine mode 'easy'"):
    select_per_class(scores, labels, 2, "hard", window=(0.0, 0.5))
  with pytest.raises(ValueError, match="refine mode 'easy'"):
    select_per_class(None, labels, 2, "random", key=jax.random.key(0), order="random")
  with pytest.raises(ValueError, match=re.escape("class 0 has only 2 of its 10 examples in the "
                                                 "window (0.0, 0.2) but ipc=3")):
    select_per_class(scores, labels, 3, window=(0.0, 0.2))
  with pytest.raises(ValueError, match="order='random' needs a PRNG key"):
    select_per_class(scores, labels, 2, order="random")


def test_validation_split_and_pool():
  labels = np.repeat(np.arange(4), [10, 11, 3, 25])
  val = validation_split(labels, 0.2, jax.random.key(0))
  expected = [2, 2, 1, 5]  # floor(0.2 n), at least 1
  assert np.bincount(labels[val], minlength=4).tolist() == expected
  assert held_out_counts(np.bincount(labels), 0.2).tolist() == expected
  assert val.tolist() == sorted(set(val.tolist()))
  np.testing.assert_array_equal(val, validation_split(labels, 0.2, jax.random.key(0)))
  assert not np.array_equal(val, validation_split(labels, 0.2, jax.random.key(1)))
  pool = np.setdiff1d(np.arange(len(labels)), val)
  scores = np.random.default_rng(0).random(len(labels))
  got = select_from_pool(pool, scores, labels, 1, "easy", window=(0.0, 0.5))
  assert not set(got.tolist()) & set(val.tolist())
  ref = _window_reference(scores[pool], labels[pool], 1, (0.0, 0.5))
  assert got.tolist() == pool[ref].tolist()  # the ranking sees only the pool


# ------------------------------------------------------------------------------------ pick_best
def test_pick_best_and_the_tie_rule():
  from pca_jax.pca.tune import Candidate, pick_best

  def row(i, mean, grid, res):
    c = Candidate(True, (0.0, 1.0), "easy", grid, res, "patch")
    return {"index": i, "name": c.name, "val_top1_mean": mean, "cost": list(c.cost(16))}
  rows = [row(0, 60.0, (1, 1), "full"), row(1, 70.0, (2, 2), "full"),
          row(2, 65.0, (2, 2), "patch"), row(3, 69.0, (1, 1), "full")]
  assert pick_best(rows)["index"] == 1  # the best mean
  assert pick_best(rows, 1.0)["index"] == 3  # 69 is within 1 point: 1x1 before 2x2 (same FLOPs)
  assert pick_best(rows, 5.0)["index"] == 2  # within 5: the patch resolution is cheapest
  tie = [row(0, 70.0, (2, 2), "full"), row(1, 70.0, (1, 1), "full"),
         row(2, 70.0, (1, 1), "full")]
  assert pick_best(tie)["index"] == 1  # an equal mean: the smaller grid, then the search order
  tie.append(row(3, 70.0, (2, 2), "patch"))
  assert pick_best(tie)["index"] == 3  # fewer FLOPs per step first
  assert pick_best([row(0, 10.0, (2, 2), "full")] + [row(1, 9.99, (2, 2), "patch")])["index"] == 0


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("field,value,match", [
    ("select.window", (0.5, 0.5), "select.window=(0.5, 0.5) is not a window"),
    ("select.window", (0.0, 1.2), "select.window=(0.0, 1.2) is not a window"),
    ("select.order", "hardest", "unknown select.order 'hardest'"),
    ("tune.windows", ((0.0, 1.0), (-0.1, 0.5)), "tune.windows entry=(-0.1, 0.5) is not a window"),
    ("tune.val_fraction", 1.0, "tune.val_fraction must be a fraction in (0, 1)"),
    ("tune.resolutions", ("full", "blur"), "unknown tune.resolutions entry 'blur'"),
    ("tune.crops", ("mixup",), "unknown tune.crops entry 'mixup'"),
    ("tune.grids", ((1, 1), (3, 3)), "tune.grids entry (3, 3) does not divide"),
    ("tune.prune", (1,), "tune.prune entries must be True"),
    ("tune.tie_tolerance", -1.0, "tune.tie_tolerance must be >= 0"),
])
def test_bad_tune_and_window_config_is_refused(tmp_path, field, value, match):
  cfg = tiny_config(**{"stages": "score,tune,select", field: value})
  with pytest.raises(ValueError, match=re.escape(match)):
    pca_main.run_pipeline(cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_window_with_another_mode_and_a_too_large_val_fraction(tmp_path):
  cfg = tiny_config(**{"select.mode": "hard", "select.window": (0.0, 0.5)})
  with pytest.raises(ValueError, match="refine select.mode='easy'"):
    pca_main.run_pipeline(cfg, tmp_path / "run")
  # 0.8 held out of class 0's 134 train images leaves 27, whose easiest half (13) is short of a
  # 2x2 candidate's 4 x 4 = 16 (class 0 is the first class that short)
  cfg = tiny_config(**{"stages": "score,tune,select", "tune.val_fraction": 0.8,
                       "tune.windows": ((0.0, 0.5),), "tune.prune": (True,)})
  with pytest.raises(ValueError) as e:
    pca_main.run_pipeline(cfg, tmp_path / "run")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("tune.val_fraction=0.8 holds out 107 of class 0's 134 "
                                            "train images, leaving 27 of which the window "
                                            "(0.0, 0.5) holds 13, but candidate "
                                            "easy0-0.5_g2x2_full-res_patch-crop needs ipc 4 x 4 "
                                            "cells = 16"), msg
  assert "lower tune.val_fraction or select.ipc" in msg
  assert not (tmp_path / "run").exists()  # before anything ran


# ------------------------------------------------------------------- the search, known answer
@pytest.mark.long
def test_search_picks_the_clean_window_over_label_noise(tmp_path):
  """Every class: 20 images of its colour (easy, low scores) and 20 of other colours with this
  label (label noise, high scores). Training on the hardest quarter (all noise, whatever the
  validation split took) learns nothing that transfers; the easiest half (all clean) wins on the
  held-out examples by a wide margin."""
  from pca_jax.data.sources import ArraySource
  from pca_jax.pca.context import Run
  from pca_jax.pca.tune import search
  rng = np.random.default_rng(0)
  k, per = 4, 40
  palette = rng.integers(0, 256, (k, 3))
  labels = np.repeat(np.arange(k), per)
  colour = labels.copy()
  noisy = np.tile(np.arange(per) >= per // 2, k)
  colour[noisy] = (labels[noisy] + rng.integers(1, k, noisy.sum())) % k  # another colour
  images = np.clip(palette[colour][:, None, None, :] + rng.normal(0, 20, (k * per, 8, 8, 3)),
                   0, 255).astype(np.uint8)
  scores = np.where(noisy, 1.0, 0.0) + rng.random(k * per)
  cfg = tiny_config(**{"data.image_size": 8, "model.width": 4, "train.batch_size": 16,
                       "train.lr": 3e-2, "train.crop_scale": (0.5, 1.0), "tune.epochs": 30,
                       "tune.grids": ((1, 1),), "tune.resolutions": ("full",),
                       "tune.windows": ((0.75, 1.0), (0.0, 0.5)), "tune.prune": (True,),
                       "tune.val_fraction": 0.25, "train.eval_batch_size": 40})
  run = Run(cfg, tmp_path, log=lambda s: None)
  run._train_source = ArraySource(images, labels, [f"c{i}" for i in range(k)], name="noisy")
  val = validation_split(labels, 0.25, jax.random.key(0))
  result = search(run, tmp_path / "tune", ipc=4, scores=scores, val_idx=val, select_seed=0)
  by = {r["window"][0]: r for r in result["rows"]}
  assert by[0.0]["val_top1_mean"] >= by[0.75]["val_top1_mean"] + 20, result["rows"]
  assert result["choice"]["window"] == [0.0, 0.5]
  for r in result["rows"]:  # every candidate set: 4 per class, no validation example
    idx = np.load(tmp_path / "tune" / "sets" / f"{r['name']}.npy")
    assert np.bincount(labels[idx]).tolist() == [4] * k and not set(idx) & set(val)
    assert (noisy[idx] == (r["window"][0] == 0.75)).all()  # the window: clean or noise


# ------------------------------------------------------------------------ the pipeline, tuned
TUNED = {"stages": "score,tune,select,combine,store,train,eval,report", "tune.epochs": 3,
         "tune.grids": ((1, 1), (2, 2)), "tune.resolutions": ("full",),
         "tune.windows": ((0.0, 1.0), (0.0, 0.5)), "tune.prune": (True, False),
         "train.epochs": 20, "score.num_models": 1}


class _Guarded:
  """The test split's source, unreadable (labels, images) until the eval stage starts."""

  def __init__(self, source, state):
    self._source, self._state = source, state
    self.name, self.class_names = source.name, source.class_names
    self.num_classes = source.num_classes

  def _check(self):
    if not self._state["eval_started"]:
      raise AssertionError("the test split was read before the eval stage")
    self._state["reads"] += 1

  @property
  def labels(self):
    self._check()
    return self._source.labels

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    self._check()
    return self._source[i]


@pytest.fixture
def guarded_test_split(monkeypatch):
  """load_source gives the eval split behind _Guarded; the runner's "[eval] running" line (the
  eval stage starting) opens it."""
  from pca_jax.data import load as loading
  from pca_jax.pca import context
  state = {"eval_started": False, "reads": 0}
  load, log = loading.load_source, context.log_main

  def guarded_load(data_config, split=None):
    src = load(data_config, split)
    return _Guarded(src, state) if split == data_config.eval_split else src

  def watching_log(msg):
    if msg.startswith("[eval] running"):
      state["eval_started"] = True
    log(msg)
  monkeypatch.setattr(loading, "load_source", guarded_load)
  monkeypatch.setattr(context, "log_main", watching_log)
  return state


@pytest.mark.long
def test_tuned_pipeline_end_to_end_rerun_and_change(tmp_path, capsys, guarded_test_split):
  wd = tmp_path / "run"
  cfg = tiny_config(**TUNED)
  pca_main.run_pipeline(cfg, wd)
  out = capsys.readouterr().out
  assert guarded_test_split["reads"] > 0  # the eval stage read it, nothing before it did
  tune = json.loads((wd / "tune.json").read_text())
  names = [r["name"] for r in tune["candidates"]]
  assert names == ["easy0-1_g1x1_full-res_patch-crop", "easy0-1_g2x2_full-res_patch-crop",
                   "easy0-0.5_g1x1_full-res_patch-crop", "easy0-0.5_g2x2_full-res_patch-crop",
                   "random_g1x1_full-res_patch-crop", "random_g2x2_full-res_patch-crop"]
  means = [r["val_top1_mean"] for r in tune["candidates"]]
  best = max(means)
  assert tune["choice"]["val_top1_mean"] == best
  assert tune["choice"] == min((r for r in tune["candidates"] if r["val_top1_mean"] == best),
                               key=lambda r: (r["grid"][0] * r["grid"][1], r["index"]))
  assert sum(r["chosen"] for r in tune["candidates"]) == 1 and tune["search_wall_s"] > 0
  assert all(r["wall_s"] > 0 and len(r["val_top1"]) == 1 for r in tune["candidates"])
  # the validation examples: in no candidate set, not in the final set
  labels = np.load(wd / "labels.npy")
  val = set(np.load(wd / "tune" / "val_indices.npy").tolist())
  assert len(val) == tune["val_examples"] == held_out_counts(np.bincount(labels), 0.2).sum()
  for name in names:
    idx = np.load(wd / "tune" / "sets" / f"{name}.npy")
    assert not set(idx.tolist()) & val, name
  selected = np.load(wd / "selected.npy")
  assert not set(selected.tolist()) & val
  chosen = tune["choice"]
  np.testing.assert_array_equal(selected, np.load(wd / "tune" / "sets" / f"{chosen['name']}.npy"))
  cells = chosen["grid"][0] * chosen["grid"][1]
  assert np.bincount(labels[selected]).tolist() == [4 * cells] * 10
  m = json.loads((wd / "compressed" / "manifest.json").read_text())
  assert m["grid"] == chosen["grid"] and m["tune"]["choice"]["name"] == chosen["name"]
  assert m["selection"]["mode"] == ("easy" if chosen["prune"] else "random")
  if chosen["prune"]:
    assert m["selection"]["window"] == chosen["window"] and m["selection"]["order"] == "easy"
  csv_lines = (wd / "tune" / "search.csv").read_text().splitlines()
  assert csv_lines[0].startswith("index,name,prune,window_lo,window_hi,order,grid,resolution")
  assert len(csv_lines) == 7 and sum(line.endswith(",True") for line in csv_lines) == 1
  md = (wd / "results.md").read_text()
  assert "## Settings chosen on a validation split (tune stage)" in md
  assert f"| **{chosen['name']}** |" in md and "Search wall time:" in md
  assert "the test split was not read before the eval stage" in md
  res = json.loads((wd / "results.json").read_text())
  assert res["tune"]["choice"] == chosen["name"] and res["grid"] == chosen["grid"]
  assert res["test_images"] == 450
  assert "[train] tuned run: no periodic test evaluations" in out

  pca_main.run_pipeline(cfg, wd)  # a rerun skips every stage
  again = capsys.readouterr().out
  for stage in ("score", "tune", "select", "combine", "store", "train", "eval", "report"):
    assert f"[{stage}] already done" in again, stage

  cfg2 = tiny_config(**{**TUNED, "tune.tie_tolerance": 100.0})  # every candidate ties
  pca_main.run_pipeline(cfg2, wd)
  changed = capsys.readouterr().out
  assert "[score] already done" in changed
  assert "[tune] rerunning: config changed (tune.tie_tolerance)" in changed
  for stage in ("select", "combine", "store", "train", "eval", "report"):
    assert f"[{stage}] running" in changed and f"[{stage}] already done" not in changed, stage
  tune2 = json.loads((wd / "tune.json").read_text())
  assert tune2["choice"]["name"] == "easy0-1_g1x1_full-res_patch-crop"  # cheapest, first
  assert json.loads((wd / "compressed" / "manifest.json").read_text())["grid"] == [1, 1]


# ------------------------------------------------------------------------------- the benchmark
@pytest.mark.long
def test_auto_and_ablation_methods_respect_the_budget(tmp_path):
  from pca_jax.data.store import load_compressed
  cfg = tiny_config(stages="score,teacher,benchmark")
  cfg.score.num_models = 1
  cfg.score.train.epochs = 1
  cfg.train.epochs = 2
  cfg.benchmark.update(dict(methods="random,pca_auto,combine_random,pca_rrc", ipcs=(1,),
                            label_modes=("hard",), seeds=(0,)))
  cfg.tune.update(dict(epochs=1, grids=((1, 1), (2, 2)), resolutions=("full", "patch"),
                       windows=((0.0, 0.5),), prune=(True, False)))
  pca_main.run_pipeline(cfg, tmp_path)
  wd = tmp_path
  rows = {r["method"]: r for r in json.loads((wd / "benchmark.json").read_text())["rows"]}
  assert set(rows) == {"random", "pca_auto", "combine_random", "pca_rrc"}
  for r in rows.values():  # equal bytes: one 16x16x3 image per class at IPC 1
    assert r["stored_images"] == 10 and r["bytes_images"] == 10 * 16 * 16 * 3, r
  labels = np.load(wd / "labels.npy")
  el2n = np.load(wd / "scores_el2n.npy")
  sets = wd / "benchmark" / "sets"
  rrc = load_compressed(sets / "pca_rrc-ipc1-g2x2")
  src = np.asarray(rrc.manifest["source_indices"])
  for c in range(10):  # pca_rrc: PCA's set, the 4 easiest EL2N of every class
    in_c = np.flatnonzero(labels == c)
    assert sorted(src[4 * c:4 * c + 4]) == sorted(in_c[np.argsort(el2n[in_c], kind="stable")[:4]])
  comb = load_compressed(sets / "combine_random-ipc1-g2x2-s0")
  assert np.bincount(labels[comb.manifest["source_indices"]]).tolist() == [4] * 10
  auto = load_compressed(sets / "pca_auto-ipc1-g1x1-s0")
  search = auto.manifest["tune"]
  grid = auto.manifest["grid"]
  assert grid == search["choice"]["grid"] and auto.manifest["images_per_class"] == [1] * 10
  src = np.asarray(auto.manifest["source_indices"])
  assert np.bincount(labels[src]).tolist() == [grid[0] * grid[1]] * 10
  val = np.load(wd / search["val_indices"])
  assert len(val) == search["val_examples"] and not set(src.tolist()) & set(val.tolist())
  tune_dir = wd / "benchmark" / "tune" / "pca_auto-ipc1-s0"
  assert len(search["candidates"]) == 6  # easy and random: 1x1, 2x2 full, 2x2 patch; and
  for f in (tune_dir / "sets").iterdir():  # no candidate set holds a validation example
    assert not set(np.load(f).tolist()) & set(val.tolist()), f.name
  row = rows["pca_auto"]
  assert row["chosen"] == search["choice"]["name"] and row["search_wall_s"] > 0
  assert row["chosen_grid"] == grid and row["source_images_per_class"] == grid[0] * grid[1]
  md = (wd / "benchmark.md").read_text()
  assert "## Settings chosen per IPC and seed" in md and f"| {row['chosen']} |" in md
  header = (wd / "benchmark.csv").read_text().splitlines()[0]
  assert header.endswith("chosen,chosen_val_top1,search_wall_s")


def test_configs_with_the_search_load_and_validate():
  import sys
  from tests.test_main import ROOT
  sys.path.insert(0, ROOT)
  from configs import benchmark_demo, demo_auto
  from pca_jax.checks import validate
  from pca_jax.config import PCA_STAGES, base_config, parse_stages
  from pca_jax.pca.tune import candidates
  c = demo_auto.get_config()
  validate(c)
  assert parse_stages(c.stages) == ["score", "tune", "select", "combine", "store", "train", "eval",
                                    "report"]
  assert len(candidates(c)) == 9 and "tune" not in PCA_STAGES
  assert base_config().stages == ",".join(PCA_STAGES)  # the default pipeline does not tune
  b = benchmark_demo.get_config()
  validate(b)
  assert {"pca_auto", "combine_random", "pca_rrc"} <= set(b.benchmark.methods.split(","))
  assert len(candidates(b)) == 12  # the tune defaults: 3 windows x 3 + 3 random


def test_cli_refuses_a_bad_window_in_one_line(tmp_path):
  from tests.test_main import _cli
  out = _cli(["--config=configs/demo_auto.py", "--config.tune.windows=((0.0,1.0),(0.6,0.4))",
              f"--workdir={tmp_path / 'run'}"], timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.strip() == ("error: tune.windows entry=(0.6, 0.4) is not a window of the "
                                "easiest-first ranking; use (lo, hi) with 0 <= lo < hi <= 1, "
                                "e.g. (0.0, 0.5) for the easiest half")
  assert not (tmp_path / "run").exists()
