"""The speed benchmark runs end to end (tiny model; speed targets live in the benchmark, not here)."""

import json
import os
import subprocess
import sys

from tests.test_main import ROOT


def test_bench_smoke(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  r = subprocess.run([sys.executable, "-m", "pca_jax.bench", "--what=train,score,augment",
                      "--model=resnet10", "--width=4", "--size=8", "--batch=16", "--steps=2",
                      "--warmup=0", f"--out={out}"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  report = json.loads(out.read_text())
  import pca_jax
  assert pca_jax.CPU_XLA_FLAGS[0] in report["xla_flags"]  # the run's flags are on record
  res = report["results"]
  for name in ("train", "score", "augment"):
    assert res[name]["img_per_s"] > 0 and res[name]["min"] <= res[name]["max"]
  assert res["score_over_train"] > 0 and "augment_share_of_step" in res
  assert "JAX / PyTorch" not in r.stdout  # torch was not asked for
