"""Other students than ResNet: the registry, the benchmark's student axis (sets shared, cells per
student, a new student trains only its cells), and the bad inputs refused up front."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax import main as pca_main
from pca_jax.checks import validate
from pca_jax.dc import plan
from pca_jax.models import MODELS, create_model
from tests.helpers import cache_arg
from tests.test_benchmark import _bench_config, _cells_trained
from tests.test_main import ROOT, TINY


@pytest.mark.long  # ~40 s of compiles; each family's own test file checks the same per family
def test_every_registered_model_trains_one_step_with_padding_weights():
  """The contract every student keeps: small stem at 16 px, logits [B, classes] float32, train
  mode with the dropout stream, BatchNorm statistics that ignore weight-0 filler images."""
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  weights = jnp.array([1, 1, 1, 1, 0, 0, 0, 0], jnp.float32)
  filler = x.at[4:].set(100.0)  # garbage in the padded slots
  from pca_jax.models.registry import STUDENTS
  one_per_family = {s.family: name for name, s in reversed(STUDENTS.items())}
  assert set(one_per_family) == {"resnet", "mobilenet_v2", "efficientnet", "shufflenet", "vit"}
  for name in one_per_family.values():  # the ResNets' depths: tests/test_models.py
    model = create_model(name, 7, width=8, stem="small")
    if name == "efficientnet_b0":  # per-example stochastic depth draws differ between the batches
      model = model.clone(stochastic_depth=0.0)
    # jitted: flax's eager init / apply dispatch op by op, several times slower on 2 cores
    v = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(1))
    step = jax.jit(lambda v, x, w: model.apply(v, x, train=True, weights=w,
                                               mutable=["batch_stats"],
                                               rngs={"dropout": jax.random.key(2)}))
    out, upd = step(v, filler, weights)
    assert out.shape == (8, 7) and out.dtype == jnp.float32, name
    # the real images alone, twice (the same statistics; the same compiled program)
    _, real = step(v, jnp.concatenate([x[:4], x[:4]]), jnp.ones(8))
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(real)):
      np.testing.assert_allclose(a, b, atol=1e-4, err_msg=name)
    assert bool(upd) == (name != "vit_s_16"), name  # the ViT alone has no batch_stats
  assert set(MODELS) == set(STUDENTS)


def _student_config(students, methods="random,pca"):
  c = _bench_config(methods=methods, students=students)
  c.stages = "score,benchmark"
  c.score.forgetting = c.score.aum = False
  c.benchmark.eval_every_epochs = 0
  c.benchmark.grids = ((2, 2),)  # pca at 2x2 only
  return c


@pytest.mark.long
def test_students_share_the_sets_and_a_new_student_trains_only_its_cells(tmp_path, capsys):
  wd = tmp_path / "bench"
  cfg = _student_config(("resnet10", "mobilenet_v2"))
  pca_main.run_pipeline(cfg, wd)
  out = capsys.readouterr().out
  first = sorted(_cells_trained(out))
  assert first == sorted(["random-ipc1-g1x1-hard-s0", "random-ipc1-g1x1-hard-s0-mobilenet_v2",
                          "pca-ipc1-g2x2-hard-s0", "pca-ipc1-g2x2-hard-s0-mobilenet_v2"])
  sets = sorted(p.name for p in (wd / "benchmark" / "sets").iterdir())
  assert sets == ["pca-ipc1-g2x2", "random-ipc1-g1x1-s0"]  # one set per method, shared
  set_times = {p.name: (p / "images.npy").stat().st_mtime_ns
               for p in (wd / "benchmark" / "sets").iterdir()}
  rows = json.loads((wd / "benchmark.json").read_text())["rows"]
  assert sorted((r["method"], r["student"]) for r in rows) == [
      ("pca", "mobilenet_v2"), ("pca", "resnet10"), ("random", "mobilenet_v2"),
      ("random", "resnet10")]
  by = {(r["method"], r["student"]): r for r in rows}
  assert by[("pca", "resnet10")]["fingerprint"] != by[("pca", "mobilenet_v2")]["fingerprint"]
  # the mobilenet cell trained a MobileNetV2: its TensorBoard hparams say so
  hp = (wd / "benchmark" / "runs" / "pca-ipc1-g2x2-hard-s0-mobilenet_v2" / "tensorboard")
  assert any(hp.iterdir())
  md = (wd / "benchmark.md").read_text()
  assert "## Cross-architecture: the same sets, other students" in md
  assert "| IPC 1, hard labels | resnet10 | mobilenet_v2 |" in md
  cross = md.split("## Cross-architecture")[1]
  line = next(l for l in cross.splitlines() if l.startswith("| pca 2x2 |"))
  assert line == (f"| pca 2x2 | {by[('pca', 'resnet10')]['top1']:.1f} | "
                  f"{by[('pca', 'mobilenet_v2')]['top1']:.1f} |")
  import matplotlib.image
  png = matplotlib.image.imread(wd / "benchmark.png")
  assert png.shape[0] > 1.5 * 4.5 * 90  # a row of panels per student (2 x 4.5 in at 90 dpi)
  csv = (wd / "benchmark.csv").read_text().splitlines()
  assert csv[0].startswith("method,student,") and len(csv) == 5

  cfg3 = _student_config(("resnet10", "mobilenet_v2", "shufflenet_v2_x1_0"))
  pca_main.run_pipeline(cfg3, wd)
  out = capsys.readouterr().out
  assert sorted(_cells_trained(out)) == ["pca-ipc1-g2x2-hard-s0-shufflenet_v2_x1_0",
                                         "random-ipc1-g1x1-hard-s0-shufflenet_v2_x1_0"]
  assert "rebuilding" not in out
  assert set_times == {p.name: (p / "images.npy").stat().st_mtime_ns
                       for p in (wd / "benchmark" / "sets").iterdir()}
  rows = json.loads((wd / "benchmark.json").read_text())["rows"]
  assert len(rows) == 6 and {r["student"] for r in rows} == {"resnet10", "mobilenet_v2",
                                                             "shufflenet_v2_x1_0"}


def test_student_overrides_apply_to_that_student_only():
  from types import SimpleNamespace
  from pca_jax.dc.stages import cell_trainer_config
  from pca_jax.pca.context import Run
  cfg = _student_config(("resnet10", "vit_s_16"))
  run = SimpleNamespace(config=cfg, trainer_config=lambda tc, seed: Run.trainer_config(
      SimpleNamespace(config=cfg), tc, seed))
  cell = {"method": "random", "ipc": 1, "grid": (1, 1), "label": "hard", "seed": 0}
  main = cell_trainer_config(run, cell, "rrc")
  vit = cell_trainer_config(run, {**cell, "student": "vit_s_16"}, "rrc")
  assert main.model.name == "resnet10" and vit.model.name == "vit_s_16"
  assert (vit.train.lr, vit.train.weight_decay, vit.train.warmup_epochs) == (5e-4, 0.05, 5)
  assert (main.train.lr, main.train.warmup_epochs) == (cfg.train.lr, cfg.train.warmup_epochs)
  assert vit.train.seed == main.train.seed  # the same initialisation seed for every student


@pytest.mark.parametrize("change, match", [
    ({"benchmark.students": ("resnet10", "resnet_9000")},
     r"unknown benchmark student 'resnet_9000'; choose from resnet10, .*vit_s_16"),
    ({"benchmark.students": ("resnet10", "resnet10")}, r"lists a student twice"),
    ({"benchmark.students": ("resnet10", "vit_s_16"), "model.stem": "imagenet",
      "benchmark.resolutions": ("full", "patch")},
     r"benchmark student vit_s_16 cannot train on the 8 px views of this benchmark: .*patch"),
    ({"benchmark.student_overrides.vit_s_16.momentum_of_the_moon": 1.0},
     r"student_overrides\.vit_s_16\.momentum_of_the_moon is not a train field"),
    ({"model.name": "vit_s_16", "benchmark.methods": "random,sre2l"},
     r"sre2l recover images from the teacher's BatchNorm statistics, but the teacher "
     r"\(model.name=vit_s_16\) has no BatchNorm"),
    ({"model.name": "vit_s_16", "model.stem": "imagenet", "data.image_size": 24},
     r"model.name=vit_s_16 cannot take the 24 px images of this run: .*16"),
])
def test_bad_students_are_one_line_errors(change, match):
  cfg = _student_config(("resnet10",))
  cfg.benchmark.students = ()
  for key, value in change.items():
    node = cfg
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ValueError, match=match) as e:
    validate(cfg)
  assert "\n" not in str(e.value)


def test_teacher_weights_of_another_family_stop_before_anything_runs(tmp_path):
  """A torchvision resnet18 file as the teacher of a MobileNetV2 benchmark: exit 2, one line, no
  stage ran (the score stage would otherwise run first)."""
  torch = pytest.importorskip("torch")
  from tests.helpers import import_torchvision
  net = import_torchvision().models.resnet18(num_classes=10)
  torch.save(net.state_dict(), tmp_path / "r18.pth")
  wd = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run(
      [sys.executable, "-m", "pca_jax.main", "--config=configs/benchmark_arch_demo.py",
       f"--workdir={wd}", cache_arg(), *TINY, "--config.model.name=mobilenet_v2",
       "--config.stages=score,teacher,benchmark", "--config.benchmark.label_modes=('soft',)",
       f"--config.benchmark.teacher_weights={tmp_path / 'r18.pth'}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
  err = out.stderr.strip().splitlines()
  assert len(err) == 1 and "state_dict has no key features.0.0.weight: the file is a " \
      "torchvision resnet18" in err[0] and "the model is mobilenet_v2" in err[0], err
  assert not (wd / "stages" / "score.json").exists()


def test_the_paper_tables_show_model_names_cells_or_the_first_students():
  cfg = _student_config(("resnet10", "mobilenet_v2"))
  assert plan.table_student(cfg.benchmark, "resnet10") == "resnet10"
  assert plan.table_student(cfg.benchmark, "resnet18") == "resnet10"  # not a student: the first
  cfg.benchmark.students = ()
  assert plan.table_student(cfg.benchmark, "resnet18") == "resnet18"
  cells, _ = plan.plan_cells(cfg.benchmark, (2, 2), 16, {}, "resnet18")
  assert all("student" not in c for c in cells)  # one student: ids as before the axis


def test_plan_counts_a_cell_per_student():
  cfg = _student_config(("resnet10", "mobilenet_v2", "vit_s_16"))
  cells, _ = plan.plan_cells(cfg.benchmark, (2, 2), 16, {}, "resnet10")
  assert len(cells) == 6
  assert [plan.cell_id(c) for c in cells[:3]] == [
      "random-ipc1-g1x1-hard-s0", "random-ipc1-g1x1-hard-s0-mobilenet_v2",
      "random-ipc1-g1x1-hard-s0-vit_s_16"]
