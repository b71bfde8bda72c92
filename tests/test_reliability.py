"""Preemption (SIGKILL / SIGTERM mid-stage), determinism, bad inputs and atomic outputs of the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from pca_jax import main as pca_main
from pca_jax import fs
from tests.helpers import cache_arg
from tests.test_main import ROOT, TINY, tiny_config

RESUME_ARGS = TINY + ["--config.score.train.checkpoint_every_steps=10",
                      "--config.train.checkpoint_every_steps=10"]


def _start(wd):
  env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
  return subprocess.Popen([sys.executable, "-m", "pca_jax.main", "--config=configs/demo.py",
                           f"--workdir={wd}", cache_arg(), *RESUME_ARGS],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _run_until(wd, marker, sig):
  """Starts the CLI, sends `sig` once a line containing `marker` is printed; returns (rc, log)."""
  p = _start(wd)
  lines = []
  deadline = time.time() + 300
  for line in p.stdout:
    lines.append(line)
    if marker in line:
      p.send_signal(sig)
      break
    assert time.time() < deadline, "marker never printed:\n" + "".join(lines[-20:])
  rest, _ = p.communicate(timeout=300)
  return p.returncode, "".join(lines) + rest


def _final_params(wd):
  mngr = ocp.CheckpointManager(Path(wd, "train", "checkpoints").absolute())
  tree = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore())
  return mngr.latest_step(), tree["params"]


def _assert_same_run(a, b):
  for f in ("scores.npy", "selected.npy", "compressed/images.npy", "compressed/labels.npy"):
    np.testing.assert_allclose(np.load(Path(a, f)), np.load(Path(b, f)), rtol=0, atol=1e-6,
                               err_msg=f)
  step_a, pa = _final_params(a)
  step_b, pb = _final_params(b)
  assert step_a == step_b
  import jax
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
  ra = json.loads(Path(a, "results.json").read_text())
  rb = json.loads(Path(b, "results.json").read_text())
  assert ra["top1"] == rb["top1"] and ra["top5"] == rb["top5"]


@pytest.mark.long
def test_sigkill_in_score_and_sigterm_in_train_resume_to_identical_results(tmp_path):
  ref = tmp_path / "ref"
  p = _start(ref)
  out, _ = p.communicate(timeout=600)
  assert p.returncode == 0, out[-3000:]

  run = tmp_path / "run"
  rc, log = _run_until(run, "[score models 1-2 together] step 20/", signal.SIGKILL)
  assert rc == -signal.SIGKILL, log[-2000:]
  assert not (run / "scores.npy").exists()  # killed before the stage finished: no output
  rc, log = _run_until(run, "[train] step 20/", signal.SIGTERM)
  # the two scoring models (trained together, the demo's default) continued, not restarted
  assert "[score models 1-2 together] resumed from checkpoint at step" in log
  assert "[score] done" in log
  assert rc == 143, log[-2000:]
  assert "received SIGTERM: checkpoint saved at step" in log
  assert not (run / "train.json").exists()
  p = _start(run)
  out, _ = p.communicate(timeout=600)
  assert p.returncode == 0, out[-3000:]
  assert "[score] already done" in out and "[train] resumed from checkpoint" in out
  _assert_same_run(ref, run)


@pytest.mark.long
def test_same_seed_same_outputs_other_seed_other_random_selection(tmp_path):
  for name in ("a", "b"):
    cfg = tiny_config(stages="score,select,combine,store")
    cfg.score.num_models = 1
    pca_main.run_pipeline(cfg, tmp_path / name)
  for f in ("scores.npy", "scores_entropy.npy", "selected.npy", "compressed/images.npy"):
    np.testing.assert_array_equal(np.load(tmp_path / "a" / f), np.load(tmp_path / "b" / f))
  sel = {}
  for seed in (0, 0, 1):
    wd = tmp_path / f"r{seed}"
    cfg = tiny_config(stages="select", seed=seed)
    cfg.select.mode = "random"
    cfg.force = True
    pca_main.run_pipeline(cfg, wd)
    sel.setdefault(seed, []).append(np.load(wd / "selected.npy"))
  np.testing.assert_array_equal(sel[0][0], sel[0][1])
  assert not np.array_equal(sel[0][0], sel[1][0])


def _folder_dataset(root: Path, per_class=12, classes=3, size=12):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in range(classes):
      d = root / split / f"class{c}"
      d.mkdir(parents=True)
      for i in range(per_class):
        img = np.clip(rng.normal(70 * c + 30, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i:03d}.jpg", quality=95)
  return root


def _folder_cli(root, wd, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT)
  args = [sys.executable, "-m", "pca_jax.main", "--config=configs/demo.py", f"--workdir={wd}",
          "--config.data.source=imagefolder", f"--config.data.data_dir={root}",
          "--config.data.eval_split=test", cache_arg(), *TINY,
          "--config.select.ipc=2", "--config.score.num_models=1", "--config.score.batch_size=16",
          "--config.score.train.batch_size=8", "--config.train.epochs=2",
          "--config.train.batch_size=8", "--config.train.eval_batch_size=16", *extra]
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _one_line_error(out, *needles):
  assert out.returncode == 2, out.stdout[-1500:] + out.stderr[-1500:]
  err = out.stderr.strip()
  assert err.count("\n") == 0 and "Traceback" not in err, err[-2000:]
  for n in needles:
    assert n in err, err


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
  return _folder_dataset(tmp_path_factory.mktemp("folder"))


def _damage(root):
  """Adds the faults users' folders have: grey, RGBA, non-image, zero-byte, truncated, fake JPEG."""
  Image.fromarray(np.full((12, 12), 40, np.uint8)).save(root / "train" / "class0" / "grey.png")
  Image.fromarray(np.full((9, 15, 4), 200, np.uint8), "RGBA").save(
      root / "train" / "class2" / "rgba.png")
  (root / "train" / "class1" / "README.txt").write_text("not an image, ignored by extension")
  (root / "train" / "class1" / "a_zero_byte.jpg").write_bytes(b"")
  data = (root / "train" / "class1" / "000.jpg").read_bytes()
  (root / "train" / "class1" / "b_truncated.jpg").write_bytes(data[: len(data) // 3])
  (root / "train" / "class2" / "c_text.jpg").write_text("hello, I am not a JPEG")


@pytest.mark.long
def test_messy_imagefolder_fails_with_file_name_then_runs_with_skip_corrupt(tmp_path, folder_root):
  import shutil
  root = tmp_path / "data"
  shutil.copytree(folder_root, root)
  _damage(root)
  out = _folder_cli(root, tmp_path / "wd", "--config.stages=score")
  _one_line_error(out, "cannot decode image", ".jpg", "skip_corrupt=True")
  assert not (tmp_path / "wd" / "scores.npy").exists()
  ok = _folder_cli(root, tmp_path / "wd2", "--config.data.skip_corrupt=True")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "skipped 3 unreadable files" in ok.stdout
  assert np.load(tmp_path / "wd2" / "scores.npy").shape == (38,)  # 36 + grey + RGBA
  m = json.loads((tmp_path / "wd2" / "compressed" / "manifest.json").read_text())
  assert m["num_images"] == 6 and m["class_names"] == ["class0", "class1", "class2"]
  assert json.loads((tmp_path / "wd2" / "results.json").read_text())["test_images"] == 36


def test_class_with_fewer_than_ipc_images(tmp_path, folder_root):
  out = _folder_cli(folder_root, tmp_path / "wd", "--config.stages=select",
                    "--config.select.mode=random", "--config.select.ipc=4")
  _one_line_error(out, "select.ipc=4 x 4 grid cells = 16 images per class", "has only 12")
  assert not (tmp_path / "wd" / "selected.npy").exists()


def test_read_only_workdir(tmp_path):
  out = _folder_cli(tmp_path, "/proc/pca_jax_run", "--config.stages=select")
  _one_line_error(out, "cannot write to /proc/pca_jax_run", "writable --workdir")


@pytest.mark.long
def test_failed_stage_leaves_no_partial_and_no_stale_output(tmp_path, monkeypatch):
  wd = tmp_path / "run"
  pca_main.run_pipeline(tiny_config(stages="score,select,combine,store"), wd)
  from pca_jax import combine as combine_mod
  real = combine_mod.make_mosaics

  def boom(*a, **k):
    raise RuntimeError("injected failure in the middle of combine")
  monkeypatch.setattr(combine_mod, "make_mosaics", boom)
  cfg = tiny_config(stages="select,combine,store")
  cfg.select.ipc = 2
  with pytest.raises(RuntimeError, match="injected"):
    pca_main.run_pipeline(cfg, wd)
  # select finished; the mosaics and the dataset of the old selection are gone (stale), and the
  # failed combine left no temporary directory and no output under its final name
  assert json.loads((wd / "stages" / "select.json").read_text())["status"] == "done"
  assert json.loads((wd / "stages" / "combine.json").read_text())["status"] == "running"
  assert not (wd / "stages" / "store.json").exists()
  assert not (wd / "combine").exists() and not (wd / "compressed").exists()
  assert not [p for p in wd.rglob("*") if ".tmp-" in p.name]
  monkeypatch.setattr(combine_mod, "make_mosaics", real)
  pca_main.run_pipeline(cfg, wd)
  assert json.loads((wd / "compressed" / "manifest.json").read_text())["num_images"] == 20
  before = np.load(wd / "selected.npy")

  def fail_writer(tmp):
    tmp.write_bytes(b"partial")
    raise OSError("disk full")
  with pytest.raises(OSError):
    fs.write_file(wd / "selected.npy", fail_writer)
  np.testing.assert_array_equal(np.load(wd / "selected.npy"), before)
  assert not [p for p in wd.iterdir() if ".tmp-" in p.name]
