"""gs:// run directories against a real GCS emulator (gcp-storage-emulator on 127.0.0.1).

The emulator (tests/gcs_emulator.py) is a separate server process speaking the GCS JSON API; pca_jax reaches it through
the same clients as on Google Cloud (gcsfs via etils.epath for files, tensorstore inside Orbax
for checkpoints), pointed at it by their standard environment variables.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from tests.helpers import cache_arg, gcs_emulator
from tests.test_main import ROOT, TINY

BUCKET = "pca-jax-test"


@pytest.fixture(scope="module")
def gcs():
  """Starts the emulator; points this process and its children at it; yields the env."""
  with gcs_emulator(BUCKET) as env:
    yield env


def _cli(args, cwd, env_extra, background=False):
  env = dict(os.environ, PYTHONPATH=ROOT, **env_extra)
  cmd = [sys.executable, "-m", "pca_jax.main", *args]
  if background:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _names(root: str) -> set[str]:
  from pca_jax import fs
  return {os.fspath(p)[len(root) + 1:] for p in fs.files_under(root)}


@pytest.mark.long
def test_pipeline_in_a_bucket_reruns_and_resumes(gcs, tmp_path):
  from pca_jax import fs
  from pca_jax.training import load_variables
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  run = f"gs://{BUCKET}/run"
  # 300 short steps: long enough that a SIGTERM at step 6 lands mid-train
  args = ["--config=" + os.path.join(ROOT, "configs", "demo.py"), f"--workdir={run}", *TINY,
          cache_arg(), "--config.train.epochs=300",
          "--config.train.eval_every_epochs=0"]
  out = _cli(args, cwd, gcs)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  names = _names(run)
  for f in ("labels.npy", "scores.npy", "selected.npy", "combine/mosaics.npy",
            "compressed/images.npy", "compressed/manifest.json", "train.json", "eval.json",
            "results.md", "stages/report.json", "train/metrics.jsonl", "config.json"):
    assert f in names, (f, sorted(names)[:40])
  assert any(n.startswith("train/checkpoints/300/") for n in names)
  # TensorBoard event files in the bucket, holding the scalars of the run's metrics.jsonl
  events = [n for n in names if n.startswith("train/tensorboard/events.out.tfevents.")]
  assert events, sorted(names)[:40]
  local = tmp_path / "tb"
  local.mkdir()
  for n in events:
    (local / n.rsplit("/", 1)[1]).write_bytes(fs.path(f"{run}/{n}").read_bytes())
  (tmp_path / "metrics.jsonl").write_text(fs.path(f"{run}/train/metrics.jsonl").read_text())
  from tests.test_tracking import _assert_same, _events, _jsonl_scalars
  _assert_same(_events(local), _jsonl_scalars(tmp_path / "metrics.jsonl"))
  assert "run.lock" not in names  # the lease is released at the end
  for where in (cwd, ROOT):  # nothing named gs: on local disk
    assert not [d for d, dirs, _ in os.walk(where) if "gs:" in dirs]
  top1 = json.loads(fs.path(f"{run}/eval.json").read_text())["eval_top1"]
  assert top1 > 20, top1

  again = _cli(args, cwd, gcs)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("already done") == 7, again.stdout

  # SIGTERM in the middle of a forced retrain: a checkpoint in the bucket, exit 143, then resume
  before = jax.tree.leaves(load_variables(f"{run}/train")["params"])
  proc = _cli([*args, "--config.stages=train", "--config.force=True",
               "--config.train.log_every_steps=2"], cwd, gcs, background=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("[train] step 6/"):
      proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 143, "".join(lines)[-3000:]
  steps = sorted(int(p.name) for p in fs.path(f"{run}/train/checkpoints").iterdir()
                 if p.name.isdigit())
  assert len(steps) == 1 and 6 <= steps[0] < 300, steps
  resumed = _cli([*args, "--config.stages=train,eval"], cwd, gcs)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from checkpoint at step {steps[0]}/300" in resumed.stdout
  after = jax.tree.leaves(load_variables(f"{run}/train")["params"])
  for a, b in zip(before, after):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_imagefolder_read_from_a_bucket(gcs, tmp_path):
  from pca_jax import fs
  from pca_jax.data.sources import ImageFolderSource
  rng = np.random.default_rng(0)
  local = tmp_path / "folder"
  for c in ("cat", "dog"):
    (local / c).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(local / c / f"{i}.png")
  for d, _, files in os.walk(local):
    for f in files:
      rel = os.path.relpath(os.path.join(d, f), local)
      fs.upload(os.path.join(d, f), f"gs://{BUCKET}/folder/{rel}")
  here, there = ImageFolderSource(local), ImageFolderSource(f"gs://{BUCKET}/folder")
  assert there.class_names == ["cat", "dog"] and len(there) == 6
  assert there.labels.tolist() == here.labels.tolist()
  for i in range(6):
    np.testing.assert_array_equal(there[i][0], here[i][0])
  with pytest.raises(ValueError, match="does not exist"):
    ImageFolderSource(f"gs://{BUCKET}/no-such-folder")
