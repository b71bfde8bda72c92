"""--config.rehearse=True: every shipped config runs end to end on synthetic data of its
dataset's shape (scaled to a few classes, a narrow model and, rehearsal.thin, one seed at the
largest IPC: every method, grid and label mode still runs), and prints the real run's plan; the
plan's arithmetic against hand counts."""

import importlib
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHIPPED = ("ipc1", "ipc10", "ipc20", "ipc50", "ipc100", "cifar10", "cifar100",
           "benchmark_imagenet", "demo", "demo_auto", "benchmark_demo", "benchmark_arch_demo",
           "benchmark_soft_demo")


def _config(name: str, **rehearsal):
  c = importlib.import_module(f"configs.{name}").get_config()
  c.rehearse = True
  c.rehearsal.update(dict(classes=3, width=4, steps=1, thin=True, **rehearsal))
  c.jax_cache_dir = ""
  return c


def test_spread_counts_have_imagenets_shape():
  from pca_jax.rehearsal import scaled_counts, spread_counts
  counts = spread_counts(1000, 732, 1300, 1_281_167)
  assert counts.sum() == 1_281_167 and counts.min() == 732 and counts.max() == 1300
  assert (counts == 1300).sum() > 900
  few = scaled_counts(counts, 5)
  assert few.tolist()[0] == 732 and few.tolist()[-1] == 1300 and len(few) == 5
  assert scaled_counts(counts, 0).sum() == counts.sum()


def test_rehearsal_image_size_keeps_which_grids_divide():
  from pca_jax.config import base_config
  from pca_jax.rehearsal import rehearsal_image_size
  c = base_config()  # 224 px; grids 1, 2, 3 (3 does not divide 224), rded 2
  assert rehearsal_image_size(c) == 8
  c.benchmark.grids = ((1, 1), (2, 2), (4, 4))
  assert rehearsal_image_size(c) == 16  # 4x4 cells of >= 4 px
  c.data.image_size = 16
  assert rehearsal_image_size(c) == 16  # small images are kept


def test_plan_counts_by_hand():
  """The projection of configs/ipc10.py on ImageNet's shape, checked against hand counts."""
  from pca_jax.projection import Rates, Shape, project
  c = importlib.import_module("configs.ipc10").get_config()
  shape = Shape("tfds:imagenet2012", (1300,) * 1000, 50_000)
  plan = project(c, shape, Rates(train_img_per_s=1000.0, forward_img_per_s=3000.0,
                                 decode_img_per_s_per_core=100.0, host_cores=10))
  stages = {s["name"]: s for s in plan["stages"]}
  n = 1_300_000
  # score: 4 models x 10 epochs together: 10 epochs decoded + 1 scoring pass; 40 model-epochs
  assert stages["score"]["decoded"] == 11 * n
  assert stages["score"]["trained"] == pytest.approx(40 * n)
  assert stages["score"]["forward"] == pytest.approx(4 * n)
  assert stages["score"]["device_s"] == pytest.approx(40 * n / 1000 + 4 * n / 3000)
  assert stages["score"]["host_s"] == pytest.approx(11 * n / 1000)
  assert stages["combine"]["decoded"] == 10 * 4 * 1000  # ipc x cells x classes
  # train: 300 epochs of 10,000 stored images at 224 px, evaluated at epochs 100 and 200 (every
  # 50: 5 periodic evaluations before the last) of 50,000 images
  assert stages["train"]["trained"] == pytest.approx(300 * 10_000)
  assert stages["train"]["forward"] == pytest.approx(5 * 50_000)
  assert stages["eval"]["decoded"] == 50_000
  assert plan["total"]["wall_s"] == pytest.approx(
      sum(max(s["device_s"], s["host_s"]) for s in plan["stages"]))


def test_benchmark_plan_lists_cells_skips_and_soft_label_bytes():
  from pca_jax.projection import Rates, Shape, project
  from pca_jax.rehearsal import spread_counts
  c = importlib.import_module("configs.benchmark_imagenet").get_config()
  shape = Shape("tfds:imagenet2012", tuple(spread_counts(1000, 732, 1300, 1_281_167)), 50_000)
  plan = project(c, shape, Rates())
  b = plan["benchmark"]
  # 9 methods on whole images or RDED's 2x2, pca's 3 grids: (9 + 3) x 3 IPCs x 2 labels x 3 seeds
  # = 216, of which pca 4x4 at IPC 50 and 100 (800 / 1,600 per class > 732) is skipped
  assert b["cells"] + len(b["skipped"]) == 216
  assert {(s["method"], tuple(s["grid"]), s["ipc"]) for s in b["skipped"]} == {
      ("pca", (4, 4), 50), ("pca", (4, 4), 100)}
  # stored: IPC 10/50/100 x 1000 classes, 300 epochs, 1000 classes, 2 bytes, over the soft cells
  per_set = {10: 10_000, 50: 50_000, 100: 100_000}
  cells_per_ipc = {10: 12 * 3, 50: 11 * 3, 100: 11 * 3}  # soft cells per IPC (3 seeds)
  assert b["soft_label_bytes"] == sum(per_set[i] * 300 * 1000 * 2 * k
                                      for i, k in cells_per_ipc.items())


@pytest.mark.long
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_rehearses_to_its_end(tmp_path, name, capsys):
  from pca_jax.main import run_pipeline
  summaries = run_pipeline(_config(name), tmp_path / "run")
  plan = json.loads((tmp_path / "run" / "rehearsal" / "plan.json").read_text())
  md = (tmp_path / "run" / "rehearsal" / "plan.md").read_text()
  assert "Plan of the real run" in md and plan["total"]["wall_s"] > 0
  out = capsys.readouterr().out
  assert "[rehearsal]" in out and "| **total** |" in out
  stages = importlib.import_module(f"configs.{name}").get_config().stages.split(",")
  assert set(summaries) == set(stages), summaries  # every stage of the config ran
  if "report" in summaries:
    assert json.loads((tmp_path / "run" / "results.json").read_text())["top1"] is not None
  if "benchmark" in summaries:
    assert summaries["benchmark"]["cells"] > 0


def test_invalid_combination_stops_before_the_first_stage(tmp_path):
  """benchmark_imagenet with RDED's published 300 candidates: IPC 100 needs 400 (one line)."""
  from pca_jax.main import run_pipeline
  c = _config("benchmark_imagenet")
  c.benchmark.rded_mipc = 300
  with pytest.raises(ValueError, match=r"benchmark.rded_mipc=300 .* IPC 100 stitches .* = 400 "):
    run_pipeline(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_rehearsal_checks_what_it_leaves_out(tmp_path):
  from pca_jax.main import run_pipeline
  c = _config("benchmark_imagenet")
  c.benchmark.teacher_weights = str(tmp_path / "missing.pth")
  with pytest.raises(ValueError, match="benchmark.teacher_weights .*missing.pth does not exist"):
    run_pipeline(c, tmp_path / "run")


def test_rehearsal_of_an_imagefolder_reads_its_class_sizes(tmp_path):
  from PIL import Image
  from pca_jax.rehearsal import dataset_shape, rehearsal_config
  from tests.helpers import set_fields
  from pca_jax.config import base_config
  for split, sizes in (("train", (5, 7, 9)), ("val", (2, 2, 2))):
    for c, k in enumerate(sizes):
      d = tmp_path / split / f"class{c}"
      d.mkdir(parents=True)
      for i in range(k):
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(d / f"{i}.png")
  c = set_fields(base_config(), {"data.source": "imagefolder", "data.data_dir": str(tmp_path),
                                 "data.eval_split": "val"})
  shape = dataset_shape(c)
  assert shape.counts == (5, 7, 9) and shape.eval_images == 6
  rc = rehearsal_config(c, shape)
  assert rc.data.source == "synthetic" and rc.data.synthetic.counts == (5, 7, 9)
  assert rc.data.synthetic.eval_counts == (2, 2, 2) and rc.train.max_steps == 2


def test_thin_rehearsal_keeps_every_method_at_one_seed_and_the_largest_ipc():
  from pca_jax.rehearsal import prepare
  c = _config("benchmark_imagenet")
  rc, plan, md = prepare(c)
  assert rc.benchmark.seeds == (0,) and rc.benchmark.ipcs == (100,)
  assert rc.benchmark.methods == c.benchmark.methods and rc.benchmark.label_modes == ("hard", "soft")
  assert plan["benchmark"]["cells"] + len(plan["benchmark"]["skipped"]) == 216  # the real plan
  assert "thinned (rehearsal.thin): benchmark seed 0 at IPC 100 only" in md
  c.rehearsal.thin = False
  assert prepare(c)[0].benchmark.seeds == (0, 1, 2)
