"""End-to-end: the CLI on the bundled demo data with tiny settings, reruns, stage subsets, errors."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from pca_jax import main as pca_main
from pca_jax.rng import derive_seed
from pca_jax.selection import select_per_class
from tests.helpers import cache_arg, get_field, set_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the select stage's key (config.seed 0): it draws the ties in score
SELECT_KEY = jax.random.key(derive_seed(0, "select"))

TINY = [
    "--config.model.name=resnet10", "--config.model.width=8",
    "--config.score.num_models=2", "--config.score.train.epochs=1",
    "--config.score.train.batch_size=64", "--config.score.batch_size=128",
    "--config.select.ipc=4", "--config.train.epochs=40", "--config.train.batch_size=40",
    "--config.train.eval_every_epochs=20", "--config.train.log_every_steps=10",
    # 40 steps at the recipe's lr 1e-3 barely leave chance (top-1 20.0 on an AVX2 host, where
    # the end-to-end test asks for > 20); lr 1e-2 reaches ~37 % in the same 40 steps.
    "--config.train.lr=0.01",
]


def tiny_config(**overrides):
  sys.path.insert(0, ROOT)
  from configs import demo
  c = demo.get_config()
  for arg in TINY:
    key, value = arg[len("--config."):].split("=")
    set_fields(c, {key: type(get_field(c, key))(value)})
  c.jax_cache_dir = ""
  return set_fields(c, overrides)


def _cli(args, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "pca_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.long
def test_cli_end_to_end_then_rerun_skips(tmp_path):
  wd = tmp_path / "run"
  cache = cache_arg()
  out = _cli(["--config=configs/demo.py", f"--workdir={wd}", cache, *TINY])
  assert out.returncode == 0, out.stderr[-3000:]
  for f in ("scores.npy", "scores_el2n.npy", "scores_entropy.npy", "score_hist.png",
            "selected.npy", "compressed/images.npy", "compressed/manifest.json",
            "compressed/preview.png", "results.json", "results.md", "eval.json",
            "train/metrics.jsonl", "score/el2n_per_model.npy"):
    assert (wd / f).exists(), f
  scores = np.load(wd / "scores.npy")
  labels = np.load(wd / "labels.npy")
  assert scores.shape == labels.shape == (1347,) and np.isfinite(scores).all()
  assert np.load(wd / "score" / "el2n_per_model.npy").shape == (2, 1347)
  selected = np.load(wd / "selected.npy")
  # reversed EL2N: exactly the 16 (= ipc 4 x 4 cells) lowest-score examples of every class
  np.testing.assert_array_equal(selected, select_per_class(scores, labels, 16, "easy",
                                                           key=SELECT_KEY))
  m = json.loads((wd / "compressed" / "manifest.json").read_text())
  assert m["num_images"] == 40 and m["images_per_class"] == [4] * 10
  assert m["bytes"]["images"] == 40 * 16 * 16 * 3 and m["grid"] == [2, 2]
  assert m["source_indices"] == selected.tolist()
  res = json.loads((wd / "results.json").read_text())
  assert res["test_images"] == 450 and res["stored_images"] == 40
  assert res["top1"] > 20.0, res  # chance is 10%
  md = (wd / "results.md").read_text()
  assert "| pca | 4 | 2x2 | easy el2n | hard |" in md
  assert "hard labels, patch-constrained crops" in md and "full resolution" in md
  assert "[train] step" in out.stdout  # progress lines in a non-TTY log

  again = _cli(["--config=configs/demo.py", f"--workdir={wd}", cache, *TINY])
  assert again.returncode == 0, again.stderr[-3000:]
  for stage in ("score", "select", "combine", "store", "train", "eval", "report"):
    assert f"[{stage}] already done" in again.stdout
  assert json.loads((wd / "results.json").read_text())["top1"] == res["top1"]


def test_stage_subset_from_existing_scores_and_precomputed(tmp_path, finished_run):
  import shutil
  wd = tmp_path / "run"
  shutil.copytree(finished_run, wd)  # the session's finished tiny run (tests/conftest.py)
  first = json.loads((wd / "stages" / "score.json").read_text())
  # select,combine,store alone, with another ipc: reuses scores.npy, rebuilds the dataset
  cfg2 = tiny_config(stages="select,combine,store")
  cfg2.select.ipc = 2
  summary = pca_main.run_pipeline(cfg2, wd)
  assert set(summary) == {"select", "combine", "store"}
  assert json.loads((wd / "stages" / "score.json").read_text()) == first  # untouched
  assert json.loads((wd / "compressed" / "manifest.json").read_text())["num_images"] == 20
  # precomputed scores from elsewhere (e.g. the PyTorch reference): used as given
  theirs = np.random.default_rng(0).random(1347).astype(np.float32)
  np.save(tmp_path / "theirs.npy", theirs)
  cfg3 = tiny_config(stages="score,select")
  cfg3.score.scores_path = str(tmp_path / "theirs.npy")
  pca_main.run_pipeline(cfg3, tmp_path / "pre")
  labels = np.load(tmp_path / "pre" / "labels.npy")
  np.testing.assert_array_equal(np.load(tmp_path / "pre" / "selected.npy"),
                                select_per_class(theirs, labels, 16, "easy", key=SELECT_KEY))
  # also under the kind's name, for the benchmark's methods that rank by it
  np.testing.assert_array_equal(np.load(tmp_path / "pre" / "scores_el2n.npy"), theirs)


@pytest.mark.parametrize("scores,match", [
    (np.zeros(10, np.float32), "has shape \\(10,\\) but the train split has 1347"),
    (np.full(1347, np.nan, np.float32), "1347 NaN/inf"),
])
def test_bad_precomputed_scores(tmp_path, scores, match):
  np.save(tmp_path / "s.npy", scores)
  cfg = tiny_config(stages="score")
  cfg.score.scores_path = str(tmp_path / "s.npy")
  with pytest.raises(ValueError, match=match):
    pca_main.run_pipeline(cfg, tmp_path / "run")
  assert not (tmp_path / "run" / "scores.npy").exists()


@pytest.mark.parametrize("field,value,match", [
    ("combine.grid", (3, 3), "does not divide data.image_size=16"),
    ("combine.grid", (0, 2), "out of range"),
    ("stages", "score,trian", "unknown stage 'trian'"),
    ("model.name", "vit", "unknown model.name"),
    ("data.source", "hdf5", "unknown data.source"),
    ("select.ipc", 0, "select.ipc must be a positive integer"),
])
def test_config_validation(tmp_path, field, value, match):
  cfg = tiny_config(**{field: value})
  with pytest.raises(ValueError, match=match):
    pca_main.run_pipeline(cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_ipc_larger_than_smallest_class_fails_before_scoring(tmp_path):
  cfg = tiny_config()  # every stage, from an empty run directory
  cfg.select.ipc = 40
  with pytest.raises(ValueError, match="select.ipc=40 x 4 grid cells = 160 images per class, but "
                                       "class 8 has only 130"):
    pca_main.run_pipeline(cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # refused up front: nothing trained, nothing written


@pytest.mark.parametrize("field,value,match", [
    ("train.lr", -1.0, "train.lr must be a positive number, got -1.0"),
    ("score.train.epochs", 0, "score.train.epochs must be a positive integer, got 0"),
    ("train.batch_size", -8, "train.batch_size must be a positive integer"),
    ("train.crop_scale", (0.0, 1.0), "train.crop_scale must satisfy 0 < min <= max <= 1"),
    ("benchmark.teacher.crop_scale", (0.5, 1.5), "benchmark.teacher.crop_scale must satisfy"),
    ("train.weight_decay", -0.1, "train.weight_decay must be >= 0"),
    ("score.train.crop", "patch", "score.train.crop='patch' crops inside mosaic cells"),
])
def test_numbers_out_of_range_are_refused_up_front(tmp_path, field, value, match):
  cfg = tiny_config(**{field: value})
  with pytest.raises(ValueError, match=re.escape(match)):
    pca_main.run_pipeline(cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_cli_errors_are_one_line(tmp_path):
  out = _cli(["--config=configs/ipc50.py", "--config.data.data_dir=/nonexistent",
              f"--workdir={tmp_path / 'w'}"], timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
  assert "tfds build imagenet2012" in out.stderr
  assert not (tmp_path / "w").exists()
  out = _cli(["--config=configs/demo.py", "--config.trian.epochs=5", f"--workdir={tmp_path}"])
  assert out.returncode == 2 and 'Did you mean "train"' in out.stderr
  assert "Traceback" not in out.stderr
  out = _cli(["--config=configs/missing.py", f"--workdir={tmp_path}"])
  assert out.returncode == 2 and "cannot load --config" in out.stderr
  out = _cli(["--config=configs/demo.py", "--config.train.lr=-1", f"--workdir={tmp_path / 'n'}"])
  assert out.returncode == 2 and out.stderr.strip() == \
      "error: train.lr must be a positive number, got -1.0"
  assert not (tmp_path / "n").exists()


def test_configs_load_and_validate():
  sys.path.insert(0, ROOT)
  import importlib
  from pca_jax.checks import validate
  for name, ipc in (("ipc1", 1), ("ipc10", 10), ("ipc20", 20), ("ipc50", 50), ("ipc100", 100)):
    c = importlib.import_module(f"configs.{name}").get_config()
    validate(c)
    assert c.select.ipc == ipc and c.data.tfds_name == "imagenet2012"
    assert (c.train.epochs, c.train.batch_size, c.train.optimizer, c.train.lr,
            c.train.weight_decay) == (300, 128, "adamw", 1e-3, 0.01)
    assert tuple(c.combine.grid) == (2, 2) and c.data.image_size == 224
  for name in ("cifar10", "cifar100", "demo", "base"):
    validate(importlib.import_module(f"configs.{name}").get_config())


@pytest.mark.parametrize("field,value,match", [
    ("train.shard_set", "striped", "train.shard_set"),
    ("train.prefetch_mb", 0, "train.prefetch_mb must be a positive number"),
    ("data.prefetch_mb", -5, "data.prefetch_mb must be a positive number"),
])
def test_new_fields_are_validated(field, value, match):
  from pca_jax.checks import validate
  with pytest.raises(ValueError, match=match):
    validate(tiny_config(**{field: value}))
