import json
"""K scoring models trained and scored together (score.together), low-resolution scoring and the
early-checkpoint schedule: each against the one-model-at-a-time path, computed separately."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pca_jax import augment, parallel, rng, scoring
from pca_jax import training as train
from pca_jax.checks import validate
from pca_jax.config import base_config
from pca_jax.models.registry import create_model
from pca_jax.training import steps
from tests.helpers import colour_dataset, tiny_config

SEEDS = (11, 22)


def _memory(n=40, seed=0):
  images, labels = colour_dataset(n, 4, 8, seed)
  return train.InMemoryData(images, labels, 4)


def _model_and_tx():
  model = create_model("resnet10", 4, 4, "small", "float32")
  tx, _ = steps.make_optimizer(tiny_config().train, 10)
  return model, tx


@pytest.mark.long
@pytest.mark.parametrize("model_axis", ["vmap", "loop"])
def test_stacked_step_equals_separate_steps(model_axis):
  """One jitted step over K stacked models = K single-model steps with the same keys, on the same
  gathered batch (random-resized crops on the device, BatchNorm, AdamW), for three steps."""
  mesh = parallel.make_mesh()
  model, tx = _model_and_tx()
  images, labels = colour_dataset(16, 4, 8, 0)
  aug = augment.make_train_augment("rrc", (8, 8), flip=True)

  def gather(step, images, labels):
    del step
    return images, labels, jnp.ones(labels.shape, jnp.float32)
  singles = [parallel.replicate(steps.create_train_state(model, tx, rng.stream_key(s, "init"),
                                                         (8, 8, 3)), mesh) for s in SEEDS]
  keys = [rng.stream_key(s, "augment") for s in SEEDS]
  stacked = parallel.replicate(parallel.stack_trees(
      [steps.create_train_state(model, tx, rng.stream_key(s, "init"), (8, 8, 3)) for s in SEEDS]),
      mesh)
  single_step = steps.make_train_step(aug, steps.LossSpec(4), keys[0], mesh, gather)
  stacked_step = steps.make_train_step(aug, steps.LossSpec(4), jnp.stack(keys), mesh, gather,
                                       model_axis)
  args = tuple(parallel.shard_batch((images, labels.astype(np.int32)), mesh))
  for _ in range(3):
    stacked, m_stacked = stacked_step(stacked, args)
    losses = []
    for k in range(len(SEEDS)):
      one = steps.make_train_step(aug, steps.LossSpec(4), keys[k], mesh, gather) if k else \
          single_step
      singles[k], m = one(singles[k], args)
      losses.append(float(m["loss"]))
    np.testing.assert_allclose(np.asarray(m_stacked["loss"]), losses, rtol=2e-5, atol=1e-6)
  for k in range(len(SEEDS)):
    a = jax.device_get(parallel.unstack_tree(steps.variables_of(stacked), k))
    b = jax.device_get(steps.variables_of(singles[k]))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  # the two models really differ (own init, own crops): not one model twice
  a0, a1 = (jax.tree.leaves(jax.device_get(parallel.unstack_tree(stacked.params, k)))[0]
            for k in range(2))
  assert not np.allclose(a0, a1)


@pytest.mark.long
def test_train_together_model_k_is_the_lone_model_of_its_seed(tmp_path):
  """train(model_seeds=...) on a compressed set: model 0 trains exactly like train() alone with
  its seed (same data order, init and crops); the result is stacked [K, ...]."""
  cfg = tiny_config(epochs=3, crop="rrc", flip=True, seed=SEEDS[0])
  state, m = train.train(cfg, tmp_path / "together", _memory(), log=lambda s: None,
                         model_seeds=SEEDS)
  alone, m_alone = train.train(cfg, tmp_path / "alone", _memory(), log=lambda s: None)
  assert len(m["train_loss_per_model"]) == 2
  assert m["train_loss_per_model"][0] == pytest.approx(m_alone["train_loss"], rel=1e-4)
  assert m["train_loss"] == pytest.approx(np.mean(m["train_loss_per_model"]))
  got = jax.device_get(parallel.unstack_tree(steps.variables_of(state), 0))
  want = jax.device_get(steps.variables_of(alone))
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  assert jax.tree.leaves(state.params)[0].shape[0] == 2


@pytest.mark.long
def test_train_together_resumes_exactly(tmp_path):
  """Stopped at step 4 (a checkpoint of the stacked state) and resumed = one uninterrupted run."""
  cfg = tiny_config(epochs=3, crop="rrc", flip=True)
  straight, _ = train.train(cfg, tmp_path / "straight", _memory(), log=lambda s: None,
                            model_seeds=SEEDS)
  cfg.train.max_steps = 4
  train.train(cfg, tmp_path / "resumed", _memory(), log=lambda s: None, model_seeds=SEEDS)
  cfg.train.max_steps = 0
  logs = []
  resumed, _ = train.train(cfg, tmp_path / "resumed", _memory(), log=logs.append,
                           model_seeds=SEEDS)
  assert any("resumed from checkpoint at step 4" in line for line in logs)
  for x, y in zip(jax.tree.leaves(jax.device_get(resumed.params)),
                  jax.tree.leaves(jax.device_get(straight.params))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  # other seeds are another run: the checkpoint is not resumed under them
  logs.clear()
  train.train(cfg, tmp_path / "resumed", _memory(), log=logs.append, model_seeds=(1, 2))
  assert not any("resumed from checkpoint" in line for line in logs)
  assert any("written under another config" in line for line in logs)


@pytest.mark.parametrize("model_axis", ["vmap", "loop"])
def test_scores_of_k_models_in_one_call_equal_a_loop_over_single_models(model_axis):
  model, _ = _model_and_tx()
  images, labels = colour_dataset(37, 4, 8, 1)  # not a multiple of the batch: a padded tail
  variables = [jax.device_get(model.init(jax.random.key(s), jnp.zeros((1, 8, 8, 3)), train=False))
               for s in SEEDS]
  apply = lambda v, x: model.apply(v, augment.normalize(x), train=False)  # noqa: E731
  names = ("el2n", "entropy", "margin")
  together = scoring.score_dataset(apply, variables, images, labels, scores=names, batch_size=16,
                                   model_axis=model_axis)
  assert together["seen"].all()
  for k, v in enumerate(variables):
    alone = scoring.score_dataset(apply, [v], images, labels, scores=names, batch_size=16)
    logits = np.asarray(apply(v, jnp.asarray(images)))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    el2n = np.linalg.norm(p - np.eye(4)[labels], axis=1)  # numpy reference
    for name in names:
      np.testing.assert_allclose(together[name][k], alone[name][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(together["el2n"][k], el2n, rtol=1e-4, atol=1e-5)


def test_early_checkpoint_schedule():
  """schedule_epochs = 4 x epochs: training stops where the nominal cosine is still high."""
  cfg = tiny_config(epochs=5, schedule="cosine", lr=0.1).train
  converged = steps.make_schedule(cfg, steps_per_epoch=10)
  cfg.schedule_epochs = 20
  early = steps.make_schedule(cfg, steps_per_epoch=10)
  assert float(converged(49)) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 4 / 5)))
  assert float(early(49)) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 4 / 20)))
  assert float(early(49)) > 0.09 > 0.01 > float(converged(49))


@pytest.mark.parametrize("field,value,message", [
    ("model_axis", "pmap", "unknown score.model_axis 'pmap'"),
    ("image_size", -8, "score.image_size must be an integer >= 0"),
    ("train.schedule_epochs", 5, "score.train.schedule_epochs must be 0"),
])
def test_score_fields_are_validated(field, value, message):
  c = base_config()
  parent, _, last = f"score.{field}".rpartition(".")
  node = c
  for part in parent.split("."):
    node = node[part]
  node[last] = value
  with pytest.raises(ValueError, match=message):
    validate(c)


def _score_stage(workdir, **overrides):
  """The score stage of the demo with tiny settings (tests/test_main.py); its marker summary."""
  from pca_jax import fs
  from pca_jax.main import run_pipeline
  from tests.test_main import tiny_config as tiny_demo
  run_pipeline(tiny_demo(stages="score", **overrides), workdir)
  return fs.read_json(fs.join(workdir, "stages", "score.json"))["summary"]


@pytest.mark.long
def test_score_stage_together_decodes_once_per_epoch(tmp_path):
  """Separate: every model reads the train split (K x epochs x steps x batch decodes); together:
  one stream for all K (epochs x steps x batch); the scoring pass reads N either way."""
  n, steps_per_epoch, batch = 1347, 1347 // 64, 64
  alone = _score_stage(tmp_path / "alone", **{"score.together": False})
  together = _score_stage(tmp_path / "together", **{"score.together": True,
                                                    "score.forgetting": True})
  assert alone["images_decoded_training"] == 2 * steps_per_epoch * batch
  assert together["images_decoded_training"] == steps_per_epoch * batch + n  # + the epoch pass
  assert together["images_decoded"] == together["images_decoded_training"] + n
  assert together["together"] and not alone["together"]
  assert len(together["models"]) == 2
  assert together["models"][0]["train_loss"] != together["models"][1]["train_loss"]
  for wd in (tmp_path / "alone", tmp_path / "together"):
    per_model = np.load(wd / "score" / "el2n_per_model.npy")
    assert per_model.shape == (2, n) and np.isfinite(per_model).all()
    assert not np.allclose(per_model[0], per_model[1])
  assert (tmp_path / "together" / "score" / "together" / "checkpoints").is_dir()
  assert np.load(tmp_path / "together" / "score" / "together" / "correct_epoch1.npy").shape == \
      (2, n)
  assert np.load(tmp_path / "together" / "scores_forgetting.npy").shape == (n,)
  # the agreement that makes together a safe option is measured (README), not asserted here;
  # the two paths must at least rank the same examples as easy far above chance
  a = np.load(tmp_path / "alone" / "scores_el2n.npy")
  b = np.load(tmp_path / "together" / "scores_el2n.npy")
  assert np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1] > 0.5


@pytest.mark.long
def test_low_resolution_scoring(tmp_path):
  """score.image_size=8: the models train and score at 8 px; changing it reruns the score stage."""
  wd = tmp_path / "run"
  full = _score_stage(wd, **{"score.together": True})
  full_scores = np.load(wd / "scores_el2n.npy")
  low = _score_stage(wd, **{"score.together": True, "score.image_size": 8})
  assert (full["image_size"], low["image_size"]) == (16, 8)
  assert not np.allclose(np.load(wd / "scores_el2n.npy"), full_scores)
  # the saved (stacked) models reproduce the stored scores on 8 px images, not on 16 px ones
  from pca_jax.data import pipeline
  from pca_jax.data.sources import demo_source
  from pca_jax.models.registry import create_model
  from pca_jax.training import load_variables
  stacked = load_variables(wd / "score" / "together")
  variables = [parallel.unstack_tree(stacked, k) for k in range(2)]
  model = create_model("resnet10", 10, 8, "small", "float32", zero_init_residual=True)
  apply = lambda v, x: model.apply(v, augment.normalize(x), train=False)  # noqa: E731
  src = demo_source("train")
  for size, same in ((8, True), (16, False)):
    out = scoring.score_dataset(apply, variables, pipeline.ordered_batches(src, 128, size),
                                num_examples=len(src), scores=("el2n",))
    assert np.allclose(out["el2n"].mean(0), np.load(wd / "scores_el2n.npy"), atol=1e-4) == same


@pytest.mark.long
def test_max_steps_holds_when_the_models_train_epoch_by_epoch(tmp_path, capsys):
  """score.forgetting / score.aum train epoch by epoch; score.train.max_steps still stops them
  (it was overwritten by each epoch's length), and a fresh run does not call its own epochs
  resumes."""
  summary = _score_stage(tmp_path / "run", **{"score.forgetting": True, "score.train.epochs": 2,
                                              "score.train.max_steps": 3})
  rows = [json.loads(line) for line in
          (tmp_path / "run" / "score" / "together" / "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in rows) == 3  # not 2 x 21 steps
  # 3 steps (and the few batches the pipeline decodes ahead) + 2 epoch passes, not 2 epochs
  assert 3 * 64 + 2 * 1347 <= summary["images_decoded_training"] < 2 * 1347 + 1347 // 2
  assert "resumed from checkpoint" not in capsys.readouterr().out
