"""The DC benchmark: budgets per method, table builders, soft labels, resumption."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pca_jax import augment
from pca_jax import main as pca_main
from pca_jax import training as train
from pca_jax.dc import plan, tables
from pca_jax.data.store import load_compressed
from tests.helpers import colour_dataset, tiny_config as tiny_train_config
from tests.test_main import tiny_config


def _bench_config(**bench):
  c = tiny_config(stages="score,teacher,benchmark")
  c.score.num_models = 1
  c.score.forgetting = True
  c.score.aum = True
  c.score.train.epochs = 2
  c.train.epochs = 2
  c.train.batch_size = 40
  c.benchmark.teacher.update(dict(epochs=1, batch_size=64, eval_every_epochs=0, num_threads=2))
  c.benchmark.update(dict(methods="random,el2n_easy,el2n_hard,entropy_easy,entropy_hard,"
                          "forgetting_hard,aum_hard,ccs,sre2l,cda,rded,pca,pca_aum", ipcs=(1,),
                          label_modes=("hard",), seeds=(0,), grids=((1, 1), (2, 2), (3, 3)),
                          rded_mipc=20,
                          eval_every_epochs=1))
  c.benchmark.synthesis.update(dict(iterations=3, batch_size=8))
  c.benchmark.update(bench)
  return c


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("bench")
  cfg = _bench_config()
  pca_main.run_pipeline(cfg, wd)
  return wd, cfg


@pytest.mark.long
def test_every_method_respects_the_budget(bench_run):
  wd, cfg = bench_run
  rows = json.loads((wd / "benchmark.json").read_text())["rows"]
  got = {(r["method"], tuple(r["grid"])) for r in rows}
  assert got == {("random", (1, 1)), ("el2n_easy", (1, 1)), ("el2n_hard", (1, 1)),
                 ("entropy_easy", (1, 1)), ("entropy_hard", (1, 1)), ("forgetting_hard", (1, 1)),
                 ("aum_hard", (1, 1)), ("ccs", (1, 1)), ("sre2l", (1, 1)), ("cda", (1, 1)),
                 ("rded", (2, 2)), ("pca", (1, 1)), ("pca", (2, 2)), ("pca_aum", (2, 2))}
  for r in rows:  # equal bytes: one 16x16x3 image per class at IPC 1
    assert r["stored_images"] == 10 and r["bytes_images"] == 10 * 16 * 16 * 3
    assert 0 <= r["top1"] <= 100
  labels = np.load(wd / "labels.npy")
  for d in (wd / "benchmark" / "sets").iterdir():
    cs = load_compressed(d)
    assert cs.manifest["images_per_class"] == [1] * 10, d.name
    grid = cs.manifest["grid"]
    src = np.asarray(cs.manifest["source_indices"])
    if d.name.startswith("rded"):  # a pool of rded_mipc real images per class
      assert np.bincount(labels[src], minlength=10).tolist() == [20] * 10
    elif not d.name.startswith(("sre2l", "cda")):  # ipc * cells source images of every class
      assert np.bincount(labels[src], minlength=10).tolist() == [grid[0] * grid[1]] * 10
  # the selections follow their scores: easy = lowest, hard = highest, forgetting = most forgotten
  el2n = np.load(wd / "scores_el2n.npy")
  easy = np.asarray(load_compressed(wd / "benchmark/sets/el2n_easy-ipc1-g1x1").manifest["source_indices"])
  hard = np.asarray(load_compressed(wd / "benchmark/sets/el2n_hard-ipc1-g1x1").manifest["source_indices"])
  for c in range(10):
    in_c = labels == c
    assert el2n[easy[c]] == el2n[in_c].min() and el2n[hard[c]] == el2n[in_c].max()
  forg = np.load(wd / "scores_forgetting.npy")
  assert forg.shape == (1347,) and forg.min() >= 0 and forg.max() <= 2
  md = (wd / "benchmark.md").read_text()
  assert "grid 3x3: grid 3x3 does not divide 16px" in md
  assert "| pca 2x2 |" in md and "## PCA grid sweep" in md
  assert (wd / "benchmark.png").stat().st_size > 1000
  assert (wd / "benchmark.csv").read_text().count("\n") == 1 + len(rows)
  # best vs final top-1 and the DD-Ranking scores, from real cells (eval every epoch of 2)
  import csv
  teacher = json.loads((wd / "stages" / "teacher.json").read_text())["summary"]["eval_top1"]
  by = {(r["method"], r["grid"]): r for r in csv.DictReader(open(wd / "benchmark.csv"))}
  assert len(by) == len(rows)
  rand = float(by[("random", "1x1")]["top1"])
  for (method, grid), r in by.items():
    top1, best = float(r["top1"]), float(r["top1_best"])
    assert best >= top1 and r["top1_best_epoch"] in ("1", "2"), r
    assert best == top1 or r["top1_best_epoch"] == "1", r  # else the final (epoch 2) is best
    assert float(r["ior"]) == pytest.approx(top1 - rand)
    assert float(r["hlr"]) == pytest.approx(teacher - top1)
    assert float(r["lrs"]) == pytest.approx(100 * tables.lrs((top1 - rand) / 100,
                                                             (teacher - top1) / 100))
  assert float(by[("random", "1x1")]["ior"]) == 0.0
  assert f"full data (teacher): {teacher:.1f} %" in md
  assert "## DD-Ranking scores (Li et al. 2025) from the final top-1" in md
  assert "## Best test top-1 %\n\nThe highest of the evaluations every 1 epochs" in md
  assert "final test top-1 % (after the last epoch)" in md
  bj = json.loads((wd / "benchmark.json").read_text())
  assert bj["dd_ranking"] == {"accuracy": "top1", "full_data_top1": teacher,
                              "full_data_missing": ""}
  assert all(a["lrs_mean"] is not None and a["top1_best_mean"] is not None
             for a in bj["aggregate"])


def _cells_trained(out: str) -> list[str]:
  """The cells a run trained (not read back from the cache), from its one line per cell:
  "[benchmark] 3/14 random-ipc1-g1x1-hard-s0: top-1 41.20%, 2.3 s; ETA 25 s"."""
  import re
  return [m.group(1) for m in re.finditer(r"\[benchmark\] \d+/\d+ (\S+): top-1 [^\n]*?, "
                                          r"[\d.]+ s(?:;|$)", out, re.M)]


@pytest.mark.long
def test_resumes_a_partly_finished_benchmark(bench_run, tmp_path, capsys):
  import shutil
  src, cfg = bench_run
  wd = tmp_path / "bench"
  shutil.copytree(src, wd)
  runs = wd / "benchmark" / "runs"
  kept = json.loads((runs / "random-ipc1-g1x1-hard-s0" / "row.json").read_text())
  shutil.rmtree(runs / "pca-ipc1-g2x2-hard-s0")  # as if killed while that cell was training
  marker = wd / "stages" / "benchmark.json"
  marker.write_text(json.dumps({**json.loads(marker.read_text()), "status": "running"}))
  capsys.readouterr()
  pca_main.run_pipeline(cfg, wd)
  out = capsys.readouterr().out
  assert "[score] already done" in out and "[teacher] already done" in out
  assert _cells_trained(out) == ["pca-ipc1-g2x2-hard-s0"]
  assert json.loads((runs / "random-ipc1-g1x1-hard-s0" / "row.json").read_text()) == kept
  # a config change that affects results invalidates the finished cells it touches
  cfg2 = _bench_config(methods="random")
  cfg2.train.lr = 5e-3
  pca_main.run_pipeline(cfg2, wd)
  assert _cells_trained(capsys.readouterr().out) == ["random-ipc1-g1x1-hard-s0"]
  assert json.loads((runs / "random-ipc1-g1x1-hard-s0" / "row.json").read_text()) != kept
  # the eval cadence changes a row (top1_best), though config.IGNORED_FIELDS drops it elsewhere
  cfg3 = _bench_config(methods="random", eval_every_epochs=0)
  cfg3.train.lr = 5e-3
  pca_main.run_pipeline(cfg3, wd)
  out = capsys.readouterr().out
  assert "[benchmark] rerunning: config changed (derived.eval_every_epochs)" in out
  assert _cells_trained(out) == ["random-ipc1-g1x1-hard-s0"]
  row = json.loads((runs / "random-ipc1-g1x1-hard-s0" / "row.json").read_text())
  assert row["top1_best"] == row["top1"] and row["top1_best_epoch"] == 2  # final only
  md = (wd / "benchmark.md").read_text()
  assert "## Best test top-1" not in md  # no periodic evaluations: best = final
  assert "full data (teacher): n/a (no teacher in this run: hard labels only" in md


@pytest.mark.long
def test_sets_are_rebuilt_after_their_scores_change(bench_run, tmp_path, capsys):
  import shutil
  src, cfg = bench_run
  wd = tmp_path / "bench"
  shutil.copytree(src, wd)
  sets = wd / "benchmark" / "sets"
  before = {d.name: json.loads((d / "manifest.json").read_text()) for d in sets.iterdir()}
  cfg2 = _bench_config()
  cfg2.score.train.epochs = 1  # other scoring models: other scores
  capsys.readouterr()
  pca_main.run_pipeline(cfg2, wd)
  out = capsys.readouterr().out
  assert "[score] rerunning: config changed (score.train.epochs)" in out
  after = {d.name: json.loads((d / "manifest.json").read_text()) for d in sets.iterdir()}
  for name in before:  # sets built from scores are rebuilt, the others are reused as they are
    from_scores = not name.startswith(("random", "rded", "sre2l", "cda"))
    assert (after[name]["fingerprint"] != before[name]["fingerprint"]) == from_scores, name
    assert f"set {name} was made from other inputs" in out if from_scores else True
  trained = _cells_trained(out)
  assert "random-ipc1-g1x1-hard-s0" not in trained and "rded-ipc1-g2x2-hard-s0" not in trained
  assert "sre2l-ipc1-g1x1-hard-s0" not in trained
  assert "el2n_easy-ipc1-g1x1-hard-s0" in trained and "pca-ipc1-g2x2-hard-s0" in trained
  labels = np.load(wd / "labels.npy")
  el2n = np.load(wd / "scores_el2n.npy")
  easy = np.asarray(load_compressed(sets / "el2n_easy-ipc1-g1x1").manifest["source_indices"])
  for c in range(10):  # the rebuilt set follows the new scores
    assert el2n[easy[c]] == el2n[labels == c].min()


@pytest.mark.long
def test_soft_labels_and_external_sets(bench_run, tmp_path):
  wd, cfg = bench_run
  from pca_jax.data.store import export_imagefolder
  from pca_jax.data.parquet import export_parquet
  export_imagefolder(wd / "benchmark/sets/pca-ipc1-g2x2", tmp_path / "published")
  export_parquet(wd / "benchmark/sets/sre2l-ipc1-g1x1-s0", tmp_path / "hub")  # HF hub layout
  c = _bench_config(methods="random", label_modes=("soft",),
                    external=f"pub={tmp_path / 'published'},hub={tmp_path / 'hub'}")
  c.benchmark.methods = "random,external"
  pca_main.run_pipeline(c, wd)
  rows = json.loads((wd / "benchmark.json").read_text())["rows"]
  by = {(r["method"], r["label"]): r for r in rows}
  assert ("external:pub", "soft") in by and ("random", "soft") in by
  ext = by[("external:pub", "soft")]
  assert ext["stored_images"] == 10 and ext["ipc"] == 1
  hub = by[("external:hub", "soft")]  # the parquet set is the sre2l set, pixel for pixel
  assert hub["stored_images"] == 10 and hub["ipc"] == 1
  from pca_jax.dc.stages import load_external
  import types
  images, labels = load_external(types.SimpleNamespace(
      config=c, train_source=_demo_train()), str(tmp_path / "hub"))
  cs = load_compressed(wd / "benchmark/sets/sre2l-ipc1-g1x1-s0")
  np.testing.assert_array_equal(images, cs.images)
  np.testing.assert_array_equal(labels, cs.labels)
  # soft-label storage as if kept per view per epoch (fp16): images x epochs x classes x 2 bytes
  assert by[("random", "soft")]["bytes_soft_labels"] == 10 * 2 * 10 * 2


def _demo_train():
  from pca_jax.data.sources import demo_source
  return demo_source("train", image_size=16)


def test_bad_external_sets_are_refused_up_front(tmp_path):
  """A parquet directory without a label column (label / class_id), a set whose classes are not the dataset's:
  one line, exit 2, before any stage runs."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  from tests.test_main import _cli
  bad = tmp_path / "bad" / "data"
  bad.mkdir(parents=True)
  pq.write_table(pa.table({"image": [{"bytes": b"x", "path": "0.png"}], "target": [3]}),
                 bad / "train-00000-of-00001.parquet")
  wrong = tmp_path / "wrong"
  for name in ("0", "cat"):
    (wrong / name).mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (16, 16)).save(wrong / name / "a.png")
  base = ["--config=configs/benchmark_demo.py", "--config.benchmark.methods=random,external",
          "--config.benchmark.label_modes=('hard',)"]
  for spec, message in ((f"x={tmp_path / 'bad'}", "; label missing"),
                        (f"x={wrong}", "class 'cat' is not a class of the dataset")):
    out = _cli([*base, f"--workdir={tmp_path / 'run'}", f"--config.benchmark.external={spec}"],
               timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_plan_cells_and_errors():
  b = ml_collections.ConfigDict(dict(methods="random,pca", ipcs=(1, 10), label_modes=("hard", "soft"),
                                     seeds=(0, 1), grids=((1, 1), (2, 2), (3, 3))))
  cells, skipped = plan.plan_cells(b, (2, 2), 224)
  assert len(cells) == (1 + 2) * 2 * 2 * 2  # random 1x1, pca 1x1 + 2x2 (3x3 does not divide 224)
  assert [s["grid"] for s in skipped] == [(3, 3)]
  assert plan.cell_id(cells[0]) == "random-ipc1-g1x1-hard-s0"
  b.methods = "random,mtt"
  with pytest.raises(ValueError, match="unknown benchmark method 'mtt'"):
    plan.plan_cells(b, (2, 2), 224)
  b.methods = "external"
  with pytest.raises(ValueError, match="benchmark.external"):
    plan.plan_cells(b, (2, 2), 224)


def test_aggregate_and_tables():
  rows = []
  for m, accs in (("random", [10.0, 12.0, 14.0]), ("pca", [30.0, 34.0, 32.0])):
    for s, a in enumerate(accs):
      rows.append({"method": m, "grid": [2, 2] if m == "pca" else [1, 1], "ipc": 10,
                   "label": "hard", "seed": s, "top1": a, "bytes_images": 1000,
                   "bytes_soft_labels": 40000, "stored_images": 100})
  agg = tables.aggregate(rows)
  pca = next(a for a in agg if a["method"] == "pca")
  assert pca["n"] == 3 and pca["top1_mean"] == pytest.approx(32.0)
  assert pca["top1_std"] == pytest.approx(2.0)  # sample std
  md = tables.markdown_table(agg, "t")
  assert "| pca 2x2 | 32.0 ± 2.0 |" in md and "| random | 12.0 ± 2.0 |" in md
  assert "| 10 | 100 | 1.0 KB | 40.0 KB | 40.0x |" in md
  assert "| 10 | hard | 32.0 |" in tables.grid_table(agg)
  assert tables.soft_label_bytes(10_000, 300, 1000, 2) == 6_000_000_000  # ImageNet IPC10


def test_dd_ranking_scores_hand_values():
  # acc 0.30, random 0.20, full data 0.90: IOR 0.10, HLR 0.60, a = 0.05 - 0.30 = -0.25,
  # LRS = (e^-0.25 - e^-1) / (e - e^-1) = (0.7788008 - 0.3678794) / 2.3504024 = 0.1748302
  assert tables.ior(0.30, 0.20) == pytest.approx(0.10)
  assert tables.hlr(0.90, 0.30) == pytest.approx(0.60)
  assert tables.lrs(0.10, 0.60) == pytest.approx(0.1748302, abs=1e-7)
  assert tables.lrs(0.0, 0.0) == pytest.approx(0.2689414, abs=1e-7)  # a = 0: 1 / (1 + e)
  assert tables.lrs(1.0, -1.0) == pytest.approx(1.0) and tables.lrs(-1.0, 1.0) == pytest.approx(0.0)
  # rows hold percent: IOR / HLR in points, LRS in %; a missing input blanks what needs it
  got = tables.dd_ranking_scores(30.0, 20.0, 90.0, 30.0)
  assert got == pytest.approx({"ior": 10.0, "hlr": 60.0, "lrs": 17.48302}, abs=1e-5)
  assert tables.dd_ranking_scores(30.0, None, 90.0, 30.0) == pytest.approx(
      {"ior": None, "hlr": 60.0, "lrs": None})
  assert tables.dd_ranking_scores(30.0, 20.0, None, 30.0) == pytest.approx(
      {"ior": 10.0, "hlr": None, "lrs": None})
  # a soft-label row: IOR from its soft accuracy, HLR from the same set's HARD accuracy
  # (DD-Ranking): soft 50 vs random soft 40 -> IOR 10; hard 30 -> HLR 60; a = 0.05 - 0.30
  assert tables.dd_ranking_scores(50.0, 40.0, 90.0, 30.0) == pytest.approx(
      {"ior": 10.0, "hlr": 60.0, "lrs": 17.48302}, abs=1e-5)
  assert tables.dd_ranking_scores(50.0, 40.0, 90.0, None) == pytest.approx(
      {"ior": 10.0, "hlr": None, "lrs": None})
  rows = [{"method": m, "grid": [1, 1], "ipc": 10, "label": label, "seed": 0, "top1": acc}
          for m, label, acc in (("random", "hard", 20.0), ("random", "soft", 40.0),
                                ("sre2l", "hard", 30.0), ("sre2l", "soft", 50.0),
                                ("rded", "soft", 45.0))]
  got = {(r["method"], r["label"]): r for r in tables.with_dd_ranking(rows, 90.0)}
  assert got[("sre2l", "soft")]["hlr"] == pytest.approx(60.0)   # from the hard row, 90 - 30
  assert got[("sre2l", "soft")]["ior"] == pytest.approx(10.0)   # soft vs random soft
  assert got[("rded", "soft")]["hlr"] is None and got[("rded", "soft")]["lrs"] is None


def test_best_top1_over_periodic_evaluations():
  text = "\n".join(json.dumps(r) for r in [
      {"step": 5, "epoch": 1.0, "loss": 2.0, "acc": 0.1},
      {"step": 5, "epoch": 1.0, "eval_top1": 40.0, "eval_top5": 80.0},
      {"step": 10, "epoch": 2.0, "eval_top1": 55.0, "eval_top5": 90.0},
      {"step": 15, "epoch": 3.0, "eval_top1": 55.0, "eval_top5": 91.0},
      {"step": 20, "epoch": 4.0, "eval_top1": 49.0, "eval_top5": 88.0}]) + "\n"
  evals = tables.periodic_evals(text, 20)  # the final one (step 20) comes from train's metrics
  assert [e["step"] for e in evals] == [5, 10, 15]
  assert tables.best_top1(evals + [{"epoch": 4.0, "eval_top1": 50.0}]) == (55.0, 2.0)  # earliest
  assert tables.best_top1([{"epoch": 4.0, "eval_top1": 50.0}]) == (50.0, 4.0)
  assert tables.best_top1([]) == (None, None) and tables.periodic_evals("", 20) == []


def test_dd_ranking_and_best_tables_with_synthetic_rows(tmp_path):
  rows = []
  for m, grid, accs, bests in (("random", [1, 1], [20.0, 22.0], [21.0, 23.0]),
                               ("pca", [2, 2], [30.0, 36.0], [33.0, 36.0])):
    for s, (a, b) in enumerate(zip(accs, bests)):
      rows.append({"method": m, "grid": grid, "ipc": 10, "label": "hard", "seed": s, "top1": a,
                   "top1_best": b, "top1_best_epoch": 40 + s, "bytes_images": 1000,
                   "bytes_soft_labels": 40000, "stored_images": 100})
  # an old row (cached before top1_best) at an IPC without a random partner
  rows.append({"method": "el2n_easy", "grid": [1, 1], "ipc": 50, "label": "hard", "seed": 0,
               "top1": 30.0, "bytes_images": 5000, "bytes_soft_labels": 1, "stored_images": 500})
  rows = tables.with_dd_ranking(rows, 90.0)
  by = {(r["method"], r["seed"]): r for r in rows}
  assert by[("pca", 1)]["ior"] == pytest.approx(14.0)
  assert by[("pca", 1)]["hlr"] == pytest.approx(54.0)
  assert by[("pca", 1)]["lrs"] == pytest.approx(19.18188, abs=1e-5)  # a = 0.07 - 0.27 = -0.20
  assert by[("random", 0)]["ior"] == 0.0
  assert by[("el2n_easy", 0)]["ior"] is None and by[("el2n_easy", 0)]["lrs"] is None
  assert by[("el2n_easy", 0)]["hlr"] == pytest.approx(60.0)
  agg = {a["method"]: a for a in tables.aggregate(rows)}
  pca = agg["pca"]
  assert pca["ior_mean"] == pytest.approx(12.0) and pca["ior_std"] == pytest.approx(8 ** 0.5)
  assert pca["hlr_mean"] == pytest.approx(57.0) and pca["hlr_std"] == pytest.approx(18 ** 0.5)
  assert pca["lrs_mean"] == pytest.approx((17.48302 + 19.18188) / 2, abs=1e-5)
  assert pca["top1_best_mean"] == pytest.approx(34.5) and pca["top1_best_epochs"] == [40, 41]
  assert agg["el2n_easy"]["top1_best_mean"] is None and agg["el2n_easy"]["ior_mean"] is None
  agg = tables.aggregate(rows)
  dd = tables.dd_ranking_table(agg, 90.0)
  assert "full data (teacher): 90.0 %" in dd
  assert "| pca 2x2 | +12.0 / 57.0 / 18.3 |  |" in dd
  assert "| random | +0.0 / 69.0 / 14.5 |  |" in dd
  assert "| el2n_easy |  | n/a / 60.0 / n/a |" in dd
  assert "IOR n/a: no `random` row at the same IPC" in dd
  none = tables.dd_ranking_table(tables.aggregate(tables.with_dd_ranking(rows, None)), None,
                                 "no teacher in this run")
  assert "full data (teacher): n/a (no teacher in this run): HLR and LRS are n/a" in none
  assert "| pca 2x2 | +12.0 / n/a / n/a |  |" in none
  best = tables.best_table(agg, 10)
  assert "| pca 2x2 | 34.5 ± 2.1 |  |" in best and "| el2n_easy |  | n/a |" in best
  assert tables.best_table(agg, 0) == ""
  one = tables.best_table(tables.aggregate([r for r in rows if r["seed"] == 0]), 10)
  assert "| pca 2x2 | 33.0 (ep 40) |  |" in one
  tables.write_csv(rows, tmp_path / "b.csv")
  import csv
  got = list(csv.DictReader(open(tmp_path / "b.csv")))
  assert {"top1_best", "top1_best_epoch", "ior", "hlr", "lrs"} <= set(got[0])
  old = next(r for r in got if r["method"] == "el2n_easy")
  assert old["top1_best"] == "" and old["ior"] == "" and old["hlr"] == "60.0"


def test_benchmark_eval_every_epochs_is_validated():
  from pca_jax.checks import validate
  c = tiny_config(stages="benchmark")
  c.benchmark.update(dict(methods="random", label_modes=("hard",), eval_every_epochs=-1))
  with pytest.raises(ValueError, match=r"benchmark.eval_every_epochs must be an integer >= 0 "
                                       r"\(0 = final evaluation only\), got -1"):
    validate(c)


def test_cutmix_pastes_one_box_from_partners():
  x = jnp.stack([jnp.full((16, 16, 3), float(i)) for i in range(8)])
  y = np.asarray(augment.cutmix(jax.random.key(3), x, 1.0))
  for i in range(8):
    vals = np.unique(y[i])
    assert i in vals and len(vals) <= 2  # own pixels plus at most one partner's box
  assert np.array_equal(augment.cutmix(jax.random.key(3), x, 1.0), y)


@pytest.mark.long
def test_soft_label_training_distills_the_teacher(tmp_path):
  """Student trained only on a teacher's soft labels learns the teacher's function."""
  images, labels = colour_dataset(64, 4, 8, seed=0)
  data = train.InMemoryData(images, labels, 4)
  teacher_state, tm = train.train(tiny_train_config(epochs=15, lr=3e-2), tmp_path / "t", data,
                                  log=lambda s: None)
  model_apply = teacher_state.apply_fn
  teacher = (lambda v, x: model_apply(v, x, train=False), train.variables_of(teacher_state))
  cfg = tiny_train_config(epochs=15, lr=3e-2, label_mode="soft", temperature=4.0, cutmix_alpha=0.0)
  from tests.helpers import colour_source
  _, m = train.train(cfg, tmp_path / "s", train.InMemoryData(images, np.zeros_like(labels), 4),
                     colour_source(48), teacher=teacher, log=lambda s: None)
  # the student never saw a true label (all zeros above), only the teacher's soft labels
  assert m["eval_top1"] >= 80.0, m
  with pytest.raises(ValueError, match="needs a teacher"):
    train.train(cfg, tmp_path / "x", data, log=lambda s: None)


def test_forgetting_methods_need_forgetting_scores(tmp_path):
  c = _bench_config(methods="random,forgetting_hard")
  c.score.forgetting = False
  with pytest.raises(ValueError, match="benchmark method forgetting_hard ranks by forgetting scores, "
                                       "which the score stage computes only with "
                                       "--config.score.forgetting=True"):
    pca_main.run_pipeline(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # refused before anything ran or was written


def test_precomputed_scores_serve_only_the_methods_of_their_kind():
  from pca_jax.checks import validate
  c = _bench_config(methods="random,el2n_easy,pca")
  c.score.scores_path = "/data/el2n.npy"
  validate(c)  # el2n_easy and pca rank by el2n = score.kind: scores_el2n.npy is written
  c.benchmark.methods = "random,el2n_easy,forgetting_hard"
  with pytest.raises(ValueError, match="benchmark method forgetting_hard ranks by forgetting "
                                       "scores, but score.scores_path gives only precomputed el2n"):
    validate(c)


def test_an_imagenet_sized_run_without_a_given_teacher_says_so():
  from pca_jax.config import base_config
  from pca_jax.dc.stages import own_teacher_note
  c = base_config()  # imagenet2012, hard and soft labels, no teacher given
  assert "not the reference benchmark's" in own_teacher_note(c, 1000)
  assert "teacher_weights" in own_teacher_note(c, 1000)
  c.benchmark.teacher_weights = "/w/resnet18.pth"
  assert own_teacher_note(c, 1000) == ""
  c.benchmark.teacher_weights = ""
  c.benchmark.label_modes = ("hard",)
  assert own_teacher_note(c, 1000) == ""  # no soft labels: no teacher to compare
  demo = tiny_config()
  assert own_teacher_note(demo, 10) == ""  # the demo is not ImageNet-sized
  from pca_jax.rehearsal import rehearsal_config, spread_counts
  from pca_jax.projection import Shape
  shape = Shape("tfds:imagenet2012", tuple(spread_counts(3, 732, 1300, 3000)), 150)
  rehearsed = rehearsal_config(c, shape)
  rehearsed.benchmark.label_modes = ("hard", "soft")
  assert "not the reference benchmark's" in own_teacher_note(rehearsed, 3)  # 3 rehearsed classes


def test_benchmark_imagenet_defaults_to_the_references_precision():
  import importlib
  import sys
  from tests.test_main import ROOT
  sys.path.insert(0, ROOT)
  mod = importlib.import_module("configs.benchmark_imagenet")
  assert mod.get_config().model.dtype == "float32"
  assert mod.get_config("bf16").model.dtype == "bfloat16"
  with pytest.raises(ValueError, match="unknown precision 'fp8'"):
    mod.get_config("fp8")


def test_plot_title_of_a_long_dataset_name_stays_inside_the_figure():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from pca_jax.dc.tables import suptitle
  name = "imagefolder:/mnt/datasets/very/long/path/to/an/imagenet_subset_prepared_by_someone/train"
  for panels in (1, 2):
    fig, _ = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5))
    text = suptitle(fig, f"DC benchmark: {name}, resnet18 (width 64), 300 epochs, hard/soft labels")
    fig.canvas.draw()
    box, page = text.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)
    assert "\n" in text.get_text() or panels == 2
    plt.close(fig)
