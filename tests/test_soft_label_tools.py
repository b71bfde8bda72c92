"""The soft-label study's two measurement scripts (tools/soft_label_sweep.py, tools/
reference_parity.py): their plan, tables and the torch student the reference trainer trains."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _tool(name: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_sweep_variants_and_tables():
  sweep = _tool("soft_label_sweep")
  vs = sweep.variants([100, 300], 100, [1.0, 4.0, 20.0], 20.0)
  names = [sweep.variant_name(v) for v in vs]
  assert names == ["hard-e100", "soft-e100-T20", "hard-e300", "soft-e300-T20", "soft-e100-T1",
                   "soft-e100-T4", "soft-e100-T20-nocutmix"]
  rows = [{"method": "random", "ipc": 1, "variant": "hard-e100", "top1": t} for t in (40.0, 44.0)]
  rows += [{"method": "random", "ipc": 1, "variant": "soft-e100-T1", "top1": 30.0}]
  md = sweep.render(rows, vs, ["random"], [1], [100, 300], 100, 20.0, "cmd")
  schedule, ablation = md.split("## Temperature")
  # schedule columns: hard 100, soft 100, hard 300, soft 300; the mean ± sample std of 2 seeds
  assert "| random | 1 | 42.0 ± 2.8 | — | — | — |" in schedule
  # ablation columns: hard, soft T1, T4, T20, T20 without CutMix (at 100 epochs)
  assert "| hard | soft-T1 | soft-T4 | soft-T20 | soft-T20-nocutmix |" in ablation
  assert "| random | 1 | 42.0 ± 2.8 | 30.0 | — | — | — |" in ablation


def test_sweep_names_a_missing_set(tmp_path):
  sweep = _tool("soft_label_sweep")
  assert sweep.set_dir_name("random", 10, 1, {"random-ipc10-g1x1-s1"}) == "random-ipc10-g1x1-s1"
  assert sweep.set_dir_name("el2n_easy", 10, 1, {"el2n_easy-ipc10-g1x1"}) == "el2n_easy-ipc10-g1x1"
  with pytest.raises(ValueError, match="no set of sre2l at IPC 10.*methods including sre2l"):
    sweep.set_dir_name("sre2l", 10, 0, {"random-ipc10-g1x1-s0"})
  with pytest.raises(ValueError, match="not a finished benchmark run"):
    sweep.main(["--workdir", str(tmp_path)])
  # on the command line: that one line on stderr, exit code 2, nothing written in the run
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "soft_label_sweep.py"),
                         f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and \
      "not a finished benchmark run" in proc.stderr
  assert not (tmp_path / "run").exists()


def test_parity_student_is_pca_jaxs_model_in_torch():
  """The torch ResNet the reference trainer trains (small stem, width 8) holds pca_jax's
  variables under torchvision's keys and gives the same logits, BatchNorm statistics included."""
  if importlib.util.find_spec("torch") is None:
    pytest.importorskip("torch")  # CI installs requirements-bench.txt, so this runs there
  import torch
  from tests.helpers import import_torchvision
  import_torchvision()
  parity = _tool("reference_parity")
  config = ml_collections.ConfigDict(json.loads(json.dumps({
      "model": {"name": "resnet18", "width": 8, "stem": "small", "dtype": "float32",
                "padding": "torch", "zero_init_residual": True},
      "data": {"image_size": 16}})))
  variables = parity.init_variables(config, 10, 0)
  rs = np.random.RandomState(0)
  # random BatchNorm scale / bias / statistics, so that their mapping is what is compared
  variables = jax.tree_util.tree_map_with_path(
      lambda path, a: (np.abs(a + 0.3 * rs.randn(*a.shape)) + 0.1).astype(np.float32)
      if a.ndim == 1 else np.asarray(a), variables)
  net = parity.torch_model(config, 10, variables).eval()
  from pca_jax.models.registry import model_from_config
  model = model_from_config(config.model, 10, 16)
  x = rs.randn(3, 16, 16, 3).astype(np.float32)
  ours = np.asarray(model.apply(variables, x, train=False))
  theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
  assert np.abs(ours).max() > 0.05
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="builds BasicBlock ResNets.*mobilenet_v2"):
    parity.torch_model(ml_collections.ConfigDict({"model": {"name": "mobilenet_v2"}}), 10, {})
