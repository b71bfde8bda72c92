"""The package installs with pip and works from any directory, not only the repository root."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pip_install_then_use_from_outside_the_repository(tmp_path):
  import shutil
  src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info next to the sources
  shutil.copytree(os.path.join(ROOT, "pca_jax"), src / "pca_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  for f in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, f), src / f)
  site = tmp_path / "site"
  out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--no-build-isolation", "--target", str(site), str(src)],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (site / "pca_jax" / "scoring.py").is_file()
  assert not (site / "configs").exists() and not (site / "tests").exists()
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  code = ("import json, numpy as np, pca_jax\n"
          "from pca_jax.scoring import el2n_scores, el2n\n"
          "from pca_jax.selection import select_per_class\n"
          "logits = np.array([[4.0, 0.0], [0.0, 4.0]], np.float32)\n"
          "print(json.dumps({'file': pca_jax.__file__, 'version': pca_jax.__version__,\n"
          "  'el2n': np.asarray(el2n(logits, np.array([0, 0]))).tolist()}))\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  got = json.loads(r.stdout.strip().splitlines()[-1])
  assert got["file"].startswith(str(site))  # the installed copy, not the checkout
  assert got["el2n"][0] < 0.05 and got["el2n"][1] > 1.3
  # the CLI from another directory, with a config file given by path
  wd = tmp_path / "run"
  r = subprocess.run([sys.executable, "-m", "pca_jax.main",
                      f"--config={os.path.join(ROOT, 'configs', 'benchmark_demo.py')}",
                      f"--workdir={wd}", "--config.stages=select", "--config.select.mode=random",
                      "--config.select.ipc=1", "--config.combine.grid=(1,1)"],
                     cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (wd / "selected.npy").is_file()
