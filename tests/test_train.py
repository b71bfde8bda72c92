import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from pca_jax import training as train
from pca_jax.training import steps
from pca_jax.training.evaluate import eval_metrics, evaluate_batches
from pca_jax import parallel
from tests.helpers import colour_dataset, colour_source, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _memory(n=40, seed=0):
  images, labels = colour_dataset(n, 4, 8, seed)
  return train.InMemoryData(images, labels, 4)


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.long
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
      from pca_jax import training as train
      train.train(tiny_config(epochs=3, crop="rrc", flip=True), {str(tmp_path / 'one')!r}, _memory(),
                  log=lambda s: None)
      print(_losses({str(tmp_path / 'one')!r}))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                                   "--xla_backend_optimization_level=0")
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
  got = evaluate_batches(step, None, batches, mesh)
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
  sched = steps.make_schedule(cfg.train, steps_per_epoch=4)
  assert float(sched(0)) == pytest.approx(1.0) and float(sched(3)) == pytest.approx(1.0)
  assert float(sched(20)) == pytest.approx(0.5)  # epoch 5 of 10: cos(pi/2)
  cfg.train.update(dict(schedule="step", step_epochs=(2, 4), step_gamma=0.1, warmup_epochs=2))
  sched = steps.make_schedule(cfg.train, 4)
  assert [round(float(sched(s)), 4) for s in (0, 4, 8, 16)] == [0.5, 1.0, 0.1, 0.01]
  cfg.train.update(dict(schedule="constant", warmup_epochs=0, scale_lr_by_batch=True,
                        batch_size=256, base_batch_size=128))
  assert float(steps.make_schedule(cfg.train, 4)(7)) == pytest.approx(2.0)


def test_step_unit_warmup_rises_over_the_warm_epochs_steps():
  """schedule_unit="step" (the scoring models, the teacher): a linear warmup over the first
  warmup_epochs x steps_per_epoch steps, then the cosine from the full LR; the scoring models
  (1 warm epoch) used to start at the full LR and the teacher (2) at half of it."""
  cfg = tiny_config(epochs=10, lr=0.4, schedule="cosine", schedule_unit="step", warmup_epochs=1)
  sched = steps.make_schedule(cfg.train, steps_per_epoch=10)
  lrs = [float(sched(s)) for s in range(12)]
  assert lrs[:10] == pytest.approx([0.04 * (s + 1) for s in range(10)])  # 0.04, 0.08, ... 0.4
  assert lrs[10] == pytest.approx(0.4)  # the cosine starts after the warm epoch
  assert lrs[11] == pytest.approx(0.2 * (1 + np.cos(np.pi * 0.1 / 9)))
  cfg.train.warmup_epochs = 2
  sched = steps.make_schedule(cfg.train, steps_per_epoch=10)
  assert float(sched(0)) == pytest.approx(0.02) and float(sched(9)) == pytest.approx(0.2)
  assert float(sched(19)) == pytest.approx(0.4)
  assert float(sched(20)) == pytest.approx(0.4)  # the cosine starts after the warm epochs
  for opt in ("adamw", "sgd"):
    cfg.train.optimizer = opt
    tx, _ = steps.make_optimizer(cfg.train, 4)
    params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}
    st = tx.init(params)
    zero = jax.tree.map(np.zeros_like, params)
    upd, _ = tx.update(zero, st, params)
    # with zero gradients only weight decay moves params: kernels decay, biases do not
    assert np.all(np.asarray(upd["kernel"]) < 0) and np.all(np.asarray(upd["bias"]) == 0)
  cfg.train.optimizer = "lion"
  with pytest.raises(ValueError, match="unknown train.optimizer"):
    steps.make_optimizer(cfg.train, 4)


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


@pytest.mark.long
def test_checkpoint_of_another_fingerprint_is_not_resumed(tmp_path):
  data = _memory()
  cfg = tiny_config(epochs=3, crop="rrc", flip=True)
  full, _ = train.train(cfg, tmp_path / "ref", data, log=lambda s: None, fingerprint="A")
  total = int(full.step)
  half = tiny_config(epochs=3, crop="rrc", flip=True, max_steps=total // 2)
  train.train(half, tmp_path / "run", data, log=lambda s: None, fingerprint="A")
  msgs = []
  s2, m = train.train(cfg, tmp_path / "run", data, log=msgs.append, fingerprint="B")
  assert any("written under another config (fingerprint A, now B): not resumed" in x for x in msgs)
  assert not any("resumed from checkpoint" in x for x in msgs)
  assert _losses(tmp_path / "run") == pytest.approx(_losses(tmp_path / "ref"), rel=1e-6)
  assert m["train_loss"] is not None and int(s2.step) == total
  # the default fingerprint covers the config: another lr does not continue this run either
  msgs.clear()
  train.train(tiny_config(epochs=3, crop="rrc", flip=True, lr=5e-3), tmp_path / "run", data,
              log=msgs.append)
  assert any("not resumed" in x for x in msgs)
  # a finished run restored under its own fingerprint reports its last loss, not null
  msgs.clear()
  _, again = train.train(tiny_config(epochs=3, crop="rrc", flip=True, lr=5e-3), tmp_path / "run",
                         data, log=msgs.append)
  assert any("resumed from checkpoint at step" in x for x in msgs)
  assert again["train_loss"] is not None


def test_throughput_leaves_out_compilation_evaluation_and_checkpoints():
  import time
  from pca_jax.training.metrics import Throughput
  meter = Throughput()
  time.sleep(0.3)  # "compilation": the first interval
  meter.add(100)
  assert meter.lap() < 400 and meter.rate is None
  for _ in range(2):
    time.sleep(0.05)
    meter.add(10)
    with meter.paused():
      time.sleep(0.3)  # evaluation or a checkpoint save
    meter.lap()
  assert meter.images == 20 and 0.09 < meter.seconds < 0.2
  assert 100 < meter.rate < 220


def test_memory_feed_draws_one_permutation_per_epoch():
  from pca_jax.training.feeds import MemoryFeed
  mesh = parallel.make_mesh()
  cfg = tiny_config(batch_size=16).train
  feed = MemoryFeed(_memory(40), cfg, mesh)
  calls = []
  real = feed._perm_fn
  feed._perm_fn = lambda key, e: calls.append(int(e)) or real(key, e)
  feed.open(0)
  assert feed.batch == 16 and feed.steps_per_epoch == 3
  perms = [np.asarray(feed.args(step)[2]) for step in range(9)]
  assert calls == [0, 1, 2]
  assert sorted(perms[0].tolist()) == list(range(40))
  assert not np.array_equal(perms[0], perms[3])
  # the gather of one epoch visits every stored image exactly once (weights mask the filler)
  images, labels, perm, key = feed.args(0)
  seen = []
  for step in range(3):
    _, lab, w = jax.jit(feed.gather)(step, images, labels, perm, key)
    idx = np.asarray(perm)[step * 16:(step + 1) * 16]
    assert np.asarray(w).sum() == len(idx)
    seen += idx.tolist()
  assert sorted(seen) == list(range(40))


@pytest.mark.parametrize("together,layout", [(False, "replicated"), (False, "sharded"),
                                             (True, "replicated")])
def test_one_compiled_step_serves_every_seed(together, layout):
  """The seed's keys (augmentation, data order) are arguments of the train step and of the
  epoch permutation, not constants folded into them: two seeds lower to the same program (so the
  second reuses the first's compilation, in memory and in the persistent cache), and still train
  differently."""
  from pca_jax.training import loop
  from pca_jax.training.feeds import make_feed
  mesh = parallel.make_mesh()
  texts, losses = [], []
  for seed in (3, 4):
    cfg = tiny_config(batch_size=16, crop="rrc", flip=True, seed=seed, shard_set=layout)
    data = train.InMemoryData(*colour_dataset(40, 4, 8, 0), 4)
    feed = make_feed(data, cfg.train, mesh)
    model = loop.model_from_config(cfg.model, 4)
    tx, _ = steps.make_optimizer(cfg.train, feed.steps_per_epoch)
    seeds = [seed, seed + 10] if together else None
    state = parallel.replicate(loop._initial_state(model, tx, cfg.train, 8, seeds), mesh)
    step = loop._build_step(cfg.train, feed, 8, loop.loss_spec(cfg.train, 4, None), mesh, seeds,
                            "vmap")
    feed.open(0)
    perm_key = feed._epoch_key if layout == "sharded" else feed._data_key
    texts.append((step.lower(state, feed.args(0)).as_text(),
                  feed._perm_fn.lower(perm_key, 0).as_text()))
    _, m = step(state, feed.args(0))
    losses.append(np.asarray(m["loss"]))
  assert texts[0] == texts[1]
  assert not np.allclose(losses[0], losses[1])


def test_random_streams_are_independent():
  from pca_jax import rng
  from pca_jax.data import pipeline
  seeds = [rng.derive_seed(0, "score_model", k) for k in range(4)]
  assert len(set(seeds)) == 4 and all(0 <= s < 2 ** 31 for s in seeds)
  assert rng.derive_seed(0, "teacher") != rng.derive_seed(0, "student")
  # consecutive model seeds no longer replay each other's epochs (Grain's seed + epoch did)
  for e in range(3):
    a = pipeline.epoch_order(100, seeds[0], e + 1)
    b = pipeline.epoch_order(100, seeds[1], e)
    assert not np.array_equal(a, b)
  keys = [jax.random.key_data(rng.stream_key(7, name)) for name in ("init", "data", "augment")]
  assert len({tuple(np.asarray(k).tolist()) for k in keys}) == 3
  with pytest.raises(ValueError, match="unknown random stream"):
    rng.stream_key(0, "dropout")


def test_full_dataset_crops_are_drawn_from_the_decoded_image():
  """torchvision's RandomResizedCrop: boxes on the whole image, not on its centre crop."""
  from pca_jax.data import pipeline
  from pca_jax.data.sources import ArraySource
  img = np.zeros((20, 40, 3), np.uint8)
  img[:, :6] = 255  # a stripe the 20x20 centre crop of a 20x40 image never shows
  src = ArraySource(np.repeat(img[None], 16, 0), np.arange(16) % 2, ["a", "b"])
  centre = list(pipeline.train_batches(src, 8, 8, seed=0, num_epochs=4))
  assert max(b["image"].max() for b in centre) == 0
  crops = list(pipeline.train_batches(src, 8, 8, seed=0, num_epochs=4,
                                      crop=((0.08, 1.0), (3 / 4, 4 / 3))))
  shows = np.array([im.max() > 0 for b in crops for im in b["image"]])
  assert 0.05 < shows.mean() < 0.9  # some crops reach the stripe, not all
  again = list(pipeline.train_batches(src, 8, 8, seed=0, num_epochs=4,
                                      crop=((0.08, 1.0), (3 / 4, 4 / 3)), start_step=5))
  for a, b in zip(crops[5:], again):  # deterministic in (seed, step): resumable
    np.testing.assert_array_equal(a["image"], b["image"])


def test_evaluate_saved_variables_without_the_trainer(tmp_path):
  from pca_jax.models.registry import model_from_config
  cfg = tiny_config(epochs=4, lr=3e-2)
  state, m = train.train(cfg, tmp_path, _memory(64), colour_source(48), log=lambda s: None)
  variables = train.load_variables(tmp_path)
  model = model_from_config(cfg.model, 4)
  ev = train.evaluate(variables, colour_source(48), model.apply, eval_size=8, batch_size=16)
  assert ev["count"] == 48
  assert ev["top1"] == pytest.approx(m["eval_top1"]) and ev["top5"] == pytest.approx(m["eval_top5"])
  # an evaluation batch the 8 devices do not divide (the ImageNet configs' 500) is padded up
  from pca_jax import parallel
  assert parallel.forward_batch_size(500, parallel.make_mesh()) == 504
  odd = train.evaluate(variables, colour_source(48), model.apply, eval_size=8, batch_size=13)
  assert odd["count"] == 48 and odd["top1"] == pytest.approx(ev["top1"])


def test_the_loop_runs_at_most_two_steps_ahead_of_the_device(tmp_path, monkeypatch):
  """A SIGTERM is acted on at the step the host dispatches; the checkpoint then waits for every
  step already queued. The loop waits for step s - 2 after dispatching step s, so at most two
  are queued (unbounded, a loop that blocks only at log steps ran up to log_every_steps ahead:
  70 s from SIGTERM to checkpoint on a busy CPU)."""
  from pca_jax.training import loop
  outputs, late = [], []
  build = loop._build_step

  def watched(*args, **kwargs):
    step = build(*args, **kwargs)

    def run(*a):
      done = [o.is_ready() for o in outputs[:-loop.RUN_AHEAD]] if outputs else []
      late.append(len(done) - sum(done))
      state, m = step(*a)
      outputs.append(m["loss"])
      return state, m
    return run
  monkeypatch.setattr(loop, "_build_step", watched)
  cfg = tiny_config(epochs=30, log_every_steps=1000)
  train.train(cfg, tmp_path, _memory(), log=lambda s: None)
  assert len(outputs) == 30 * 3 and max(late) == 0  # 40 images, batch 16: 3 steps an epoch
