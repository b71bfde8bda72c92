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
from pca_jax.dc import plan, rded, tables
from pca_jax.data.store import load_compressed
from tests.helpers import colour_dataset, tiny_config as tiny_train_config
from tests.test_main import tiny_config


def _bench_config(**bench):
  c = tiny_config(stages="score,teacher,benchmark")
  c.score.num_models = 1
  c.score.forgetting = True
  c.score.train.epochs = 2
  c.train.epochs = 2
  c.train.batch_size = 40
  c.benchmark.teacher.update(dict(epochs=1, batch_size=64, eval_every_epochs=0, num_threads=2))
  c.benchmark.update(dict(methods="random,el2n_easy,el2n_hard,entropy_easy,entropy_hard,"
                          "forgetting_hard,rded_like,pca", ipcs=(1,), label_modes=("hard",),
                          seeds=(0,), grids=((1, 1), (2, 2), (3, 3)), rded_pool=20))
  c.benchmark.update(bench)
  return c


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("bench")
  cfg = _bench_config()
  pca_main.run_pipeline(cfg, wd)
  return wd, cfg


def test_every_method_respects_the_budget(bench_run):
  wd, cfg = bench_run
  rows = json.loads((wd / "benchmark.json").read_text())["rows"]
  got = {(r["method"], tuple(r["grid"])) for r in rows}
  assert got == {("random", (1, 1)), ("el2n_easy", (1, 1)), ("el2n_hard", (1, 1)),
                 ("entropy_easy", (1, 1)), ("entropy_hard", (1, 1)), ("forgetting_hard", (1, 1)),
                 ("rded_like", (2, 2)), ("pca", (1, 1)), ("pca", (2, 2))}
  for r in rows:  # equal bytes: one 16x16x3 image per class at IPC 1
    assert r["stored_images"] == 10 and r["bytes_images"] == 10 * 16 * 16 * 3
    assert 0 <= r["top1"] <= 100
  labels = np.load(wd / "labels.npy")
  for d in (wd / "benchmark" / "sets").iterdir():
    cs = load_compressed(d)
    assert cs.manifest["images_per_class"] == [1] * 10, d.name
    grid = cs.manifest["grid"]
    src = np.asarray(cs.manifest["source_indices"])
    if not d.name.startswith("rded_like"):  # exactly ipc * cells source images of every class
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


def _cells_trained(out: str) -> list[str]:
  return [line.split("] cell ", 1)[1] for line in out.splitlines() if "] cell " in line]


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
    from_scores = not name.startswith(("random", "rded_like"))
    assert (after[name]["fingerprint"] != before[name]["fingerprint"]) == from_scores, name
    assert f"set {name} was made from other inputs" in out if from_scores else True
  trained = _cells_trained(out)
  assert "random-ipc1-g1x1-hard-s0" not in trained and "rded_like-ipc1-g2x2-hard-s0" not in trained
  assert "el2n_easy-ipc1-g1x1-hard-s0" in trained and "pca-ipc1-g2x2-hard-s0" in trained
  labels = np.load(wd / "labels.npy")
  el2n = np.load(wd / "scores_el2n.npy")
  easy = np.asarray(load_compressed(sets / "el2n_easy-ipc1-g1x1").manifest["source_indices"])
  for c in range(10):  # the rebuilt set follows the new scores
    assert el2n[easy[c]] == el2n[labels == c].min()


def test_soft_labels_and_external_sets(bench_run, tmp_path):
  wd, cfg = bench_run
  from pca_jax.data.store import export_imagefolder
  export_imagefolder(wd / "benchmark/sets/pca-ipc1-g2x2", tmp_path / "published")
  c = _bench_config(methods="random", label_modes=("soft",),
                    external=f"pub={tmp_path / 'published'}")
  c.benchmark.methods = "random,external"
  pca_main.run_pipeline(c, wd)
  rows = json.loads((wd / "benchmark.json").read_text())["rows"]
  by = {(r["method"], r["label"]): r for r in rows}
  assert ("external:pub", "soft") in by and ("random", "soft") in by
  ext = by[("external:pub", "soft")]
  assert ext["stored_images"] == 10 and ext["ipc"] == 1
  # soft-label storage as if kept per view per epoch (fp16): images x epochs x classes x 2 bytes
  assert by[("random", "soft")]["bytes_soft_labels"] == 10 * 2 * 10 * 2


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


def test_rded_like_select_keeps_most_confident_crops_per_class():
  crops = np.arange(12)[:, None, None, None].astype(np.uint8) * np.ones((12, 2, 2, 3), np.uint8)
  conf = np.array([.1, .9, .5, .9, .2, .3, .8, .7, .6, .1, .95, .05])
  labels = np.array([0] * 6 + [1] * 6)
  out, out_labels = rded.rded_like_select(crops, conf, labels, 2)
  assert out[:, 0, 0, 0].tolist() == [1, 3, 10, 6] and out_labels.tolist() == [0, 0, 1, 1]
  with pytest.raises(ValueError, match="only 6 candidate crops"):
    rded.rded_like_select(crops, conf, labels, 7)


def test_cutmix_pastes_one_box_from_partners():
  x = jnp.stack([jnp.full((16, 16, 3), float(i)) for i in range(8)])
  y = np.asarray(augment.cutmix(jax.random.key(3), x, 1.0))
  for i in range(8):
    vals = np.unique(y[i])
    assert i in vals and len(vals) <= 2  # own pixels plus at most one partner's box
  assert np.array_equal(augment.cutmix(jax.random.key(3), x, 1.0), y)


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
