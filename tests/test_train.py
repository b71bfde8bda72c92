import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from pca_jax import train
from pca_jax.evaluate import eval_metrics, evaluate
from pca_jax import parallel
from tests.helpers import colour_dataset, colour_source, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _memory(n=40, seed=0):
  images, labels = colour_dataset(n, 4, 8, seed)
  return train.InMemoryData(images, labels, 4)


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r["loss"] for r in rows if "loss" in r]


def test_eight_devices_match_one_device(tmp_path):
  assert jax.device_count() == 8
  cfg = tiny_config(epochs=3, crop="rrc", flip=True)
  train.train(cfg, tmp_path / "eight", _memory(), log=lambda s: None)
  eight = _losses(tmp_path / "eight")
  script = textwrap.dedent(f"""
      import sys; sys.path.insert(0, {ROOT!r})
      import jax; assert jax.device_count() == 1
      from tests.test_train import _memory, _losses
      from tests.helpers import tiny_config
      from pca_jax import train
      train.train(tiny_config(epochs=3, crop="rrc", flip=True), {str(tmp_path / 'one')!r}, _memory(),
                  log=lambda s: None)
      print(_losses({str(tmp_path / 'one')!r}))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  one = json.loads(out.stdout.strip().splitlines()[-1])
  assert len(one) == len(eight) == 9
  np.testing.assert_allclose(eight, one, rtol=2e-3, atol=2e-4)


def test_learns_a_separable_problem(tmp_path):
  cfg = tiny_config(epochs=15, lr=3e-2, log_every_steps=5)
  _, m = train.train(cfg, tmp_path, _memory(64), colour_source(48, seed=0), log=lambda s: None)
  assert m["eval_count"] == 48
  assert m["eval_top1"] >= 90.0, m


@pytest.mark.parametrize("mode", ["memory", "grain"])
def test_kill_and_resume_is_exact(tmp_path, mode):
  data = _memory() if mode == "memory" else colour_source(48)
  cfg = tiny_config(epochs=3, crop="rrc", flip=True)
  full_state, _ = train.train(cfg, tmp_path / "full", data, log=lambda s: None)
  total = int(full_state.step)
  half = tiny_config(epochs=3, crop="rrc", flip=True, max_steps=total // 2)
  s1, _ = train.train(half, tmp_path / "resumed", data, log=lambda s: None)
  assert int(s1.step) == total // 2
  msgs = []
  s2, _ = train.train(cfg, tmp_path / "resumed", data, log=msgs.append)
  assert any("resumed from checkpoint" in m for m in msgs)
  assert int(s2.step) == total
  for a, b in zip(jax.tree.leaves(full_state.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "full"), rel=1e-6)


def test_eval_counts_every_example_once_with_odd_split():
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(23, 6)).astype(np.float32)
  labels = rng.integers(0, 6, 23)
  batches = []
  for s in range(0, 23, 8):  # 3 batches of 8 (local = global here), last one padded
    idx = np.arange(s, s + 8)
    mask = idx < 23
    idx = np.minimum(idx, 22)
    batches.append({"image": logits[idx], "label": labels[idx], "mask": mask})
  step = jax.jit(lambda state, x, y, m: eval_metrics(x, y, m))
  got = evaluate(step, None, batches, mesh)
  top5 = np.argsort(-logits, 1)[:, :5]
  assert got["count"] == 23
  assert got["top1"] == pytest.approx(100 * np.mean(logits.argmax(1) == labels))
  assert got["top5"] == pytest.approx(100 * np.mean((top5 == labels[:, None]).any(1)))


def test_bf16_runs_and_params_stay_float32(tmp_path):
  cfg = tiny_config(epochs=1)
  cfg.model.dtype = "bfloat16"
  state, m = train.train(cfg, tmp_path, _memory(), log=lambda s: None)
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(state.params))
  assert np.isfinite(m["train_loss"])


def test_schedule_and_optimizer_options():
  cfg = tiny_config(epochs=10, lr=1.0, schedule="cosine", schedule_unit="epoch")
  sched = train.make_schedule(cfg.train, steps_per_epoch=4)
  assert float(sched(0)) == pytest.approx(1.0) and float(sched(3)) == pytest.approx(1.0)
  assert float(sched(20)) == pytest.approx(0.5)  # epoch 5 of 10: cos(pi/2)
  cfg.train.update(dict(schedule="step", step_epochs=(2, 4), step_gamma=0.1, warmup_epochs=2))
  sched = train.make_schedule(cfg.train, 4)
  assert [round(float(sched(s)), 4) for s in (0, 4, 8, 16)] == [0.5, 1.0, 0.1, 0.01]
  cfg.train.update(dict(schedule="constant", warmup_epochs=0, scale_lr_by_batch=True,
                        batch_size=256, base_batch_size=128))
  assert float(train.make_schedule(cfg.train, 4)(7)) == pytest.approx(2.0)
  for opt in ("adamw", "sgd"):
    cfg.train.optimizer = opt
    tx, _ = train.make_optimizer(cfg.train, 4)
    params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}
    st = tx.init(params)
    zero = jax.tree.map(np.zeros_like, params)
    upd, _ = tx.update(zero, st, params)
    # with zero gradients only weight decay moves params: kernels decay, biases do not
    assert np.all(np.asarray(upd["kernel"]) < 0) and np.all(np.asarray(upd["bias"]) == 0)
  cfg.train.optimizer = "lion"
  with pytest.raises(ValueError, match="unknown train.optimizer"):
    train.make_optimizer(cfg.train, 4)


def test_prefetch_to_device_order_sharding_errors_and_early_exit():
  import threading
  import time
  from pca_jax import parallel
  mesh = parallel.make_mesh()
  n_dev = len(jax.devices())
  batches = [{"image": np.full((n_dev, 2, 2, 3), i, np.uint8), "label": np.arange(n_dev) + i,
              "index": np.arange(n_dev) * 100 + i} for i in range(5)]
  out = list(parallel.prefetch_to_device(iter(batches), mesh, ("image", "label"), size=2))
  assert len(out) == 5
  for i, (host, (images, labels)) in enumerate(out):
    assert host is batches[i]  # the host batch rides along (scoring needs index/mask)
    assert images.shape == (n_dev, 2, 2, 3) and np.all(np.asarray(images) == i)
    np.testing.assert_array_equal(labels, np.arange(n_dev) + i)
    assert images.sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(images.addressable_shards) == n_dev

  def broken():
    yield batches[0]
    raise OSError("disk went away at batch 1")
  it = parallel.prefetch_to_device(broken(), mesh, ("image",))
  next(it)
  with pytest.raises(OSError, match="disk went away"):
    next(it)

  def endless():
    while True:
      yield batches[0]
  before = threading.active_count()
  for k, _ in enumerate(parallel.prefetch_to_device(endless(), mesh, ("image",), size=3)):
    if k == 4:
      break  # leaving the loop closes the generator and stops the reader thread
  deadline = time.time() + 5
  while threading.active_count() > before and time.time() < deadline:
    time.sleep(0.05)
  assert threading.active_count() <= before
  with pytest.raises(ValueError, match="prefetch size must be >= 1"):
    next(parallel.prefetch_to_device(iter(batches), mesh, ("image",), size=0))
