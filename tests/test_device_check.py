"""launch/device_check.sh --tiny: every measurement of the prepared accelerator check runs (toy
sizes, on the CPU) and lands in device_check.json / device_check.md."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.long
def test_tiny_device_check_exercises_every_measurement(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("PYTHONPATH", None)
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "device_check.sh"), "--tiny",
                        str(tmp_path / "check")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads((tmp_path / "check" / "device_check.json").read_text())
  assert r["tiny"] and r["skipped"] == [] and r["errors"] == {}
  assert {(t["dtype"], t["batch"]) for t in r["train"]} == {
      ("bfloat16", 16), ("bfloat16", 32), ("float32", 16), ("float32", 32)}
  for t in r["train"]:
    assert t["img_per_s"] > 0 and t["compile_s"] >= 0
  assert {s["dtype"] for s in r["score"]} == {"float32", "bfloat16"}
  st = r["score_stage"]
  assert st["together"]["images_decoded"] < st["separate"]["images_decoded"]
  assert math.isfinite(st["separate_over_together"]) and st["separate_over_together"] > 0
  assert [p["size"] for p in r["pipeline"]] == [32, 16] and r["pipeline"][0]["img_per_s"] > 0
  for name in ("ipc50", "benchmark_imagenet"):
    assert r["projection"][name]["wall_s"] > 0
  md = (tmp_path / "check" / "device_check.md").read_text()
  for heading in ("## Train step", "## EL2N forward", "## Score stage, K = 4",
                  "## Grain pipeline", "configs/ipc50.py on this machine",
                  "configs/benchmark_imagenet.py on this machine"):
    assert heading in md
  assert "device_check: projection" in out.stdout or "[device_check] projection" in out.stdout


def test_usage_errors_are_one_line(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable)
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "device_check.sh")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and "usage: launch/device_check.sh [--tiny] OUT_DIR" in out.stderr


def test_a_failing_section_keeps_the_others(tmp_path, monkeypatch):
  """A section that raises (e.g. a package the GPU host lacks) is recorded; the sections that ran
  are written, the ones that need it are skipped."""
  from pca_jax import device_check
  monkeypatch.setattr(device_check, "measure_train", lambda s: 1 / 0)
  monkeypatch.setattr(device_check, "measure_score", lambda s: [{"dtype": "float32", "batch": 2,
                                                                 "img_per_s": 10.0}])
  monkeypatch.setattr(device_check, "measure_pipeline", lambda s: [])
  r = device_check.run_check(str(tmp_path), tiny=True, budget_s=600)
  assert r["errors"] == {"train": "ZeroDivisionError: division by zero"}
  assert r["skipped"] == ["score_stage", "projection"] and r["score"][0]["img_per_s"] == 10.0
  saved = json.loads((tmp_path / "device_check.json").read_text())
  assert saved["errors"] == r["errors"]
  assert "Failed: train: ZeroDivisionError" in (tmp_path / "device_check.md").read_text()
