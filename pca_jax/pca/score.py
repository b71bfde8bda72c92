"""The score stage: K models trained briefly on the FULL train set, then per-example difficulty.

Writes labels.npy, scores_<name>.npy for every forward score of pca_jax.scoring.SCORES (mean over
the K models) and score/<name>_per_model.npy, scores.npy (the selection score, score.kind),
scores_forgetting.npy with score.forgetting, scores_aum.npy (negated AUM) with score.aum, and
score_hist.png. Each model k has its own seed derive_seed(seed, "score_model", k): its own
initialisation and augmentation, and alone also its own data order; with score.together the K
models train in one step on one stream of decoded batches (the data is decoded epochs x N times,
not K x epochs x N). They train and score at score.image_size (0 = data.image_size).
"""

from __future__ import annotations

import hashlib

import numpy as np

from pca_jax import fs, rng, scoring

OUTPUTS = ("labels.npy", "scores.npy", "score", "score_hist.png",
           *(f"scores_{name}.npy" for name in scoring.SCORES))


def check_score_block(score) -> None:
  """The score block (score.train is a training block: pca_jax.training.checks): the selection
  score, K, batch size, how the models train together and at which size, the nominal schedule."""
  from pca_jax.config import check_choice, check_int_at_least, check_positive_int, is_int
  from pca_jax.parallel import MODEL_AXES
  check_choice("score.kind", score.kind, scoring.SELECTION_SCORES)
  check_positive_int("score.num_models", score.num_models)
  check_positive_int("score.batch_size", score.batch_size)
  if not isinstance(score.get("together", False), bool):
    raise ValueError(f"score.together must be True or False, got {score.together!r}")
  check_choice("score.model_axis", score.get("model_axis", "vmap"), MODEL_AXES)
  check_int_at_least("score.image_size", score.get("image_size", 0), 0, " (0 = data.image_size)")
  nominal = score.train.get("schedule_epochs", 0)
  if not is_int(nominal) or nominal < 0 or 0 < nominal < score.train.epochs:
    raise ValueError(f"score.train.schedule_epochs must be 0 (the schedule ends with training) "
                     f"or an integer >= score.train.epochs={score.train.epochs} (the length of "
                     f"the nominal run the scoring models stop early in), got {nominal!r}")


def precomputed_digest(config) -> dict:
  """The content hash of score.scores_path (its file may change under the same name)."""
  path = config.score.scores_path
  if not path or not fs.path(path).is_file():
    return {}
  return {"scores_sha256": hashlib.sha256(fs.path(path).read_bytes()).hexdigest()[:16]}


def load_scores(path: str, n: int) -> np.ndarray:
  """A user's precomputed [n] scores (.npy), checked for shape and NaN/inf."""
  p = fs.path(path)
  if not p.is_file():
    raise ValueError(f"score.scores_path {path} does not exist; pass a .npy file of {n} scores")
  try:
    scores = fs.load_npy(p)
  except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
    raise ValueError(f"score.scores_path {path} is not a readable .npy file ({e})") from None
  scores = np.asarray(scores, np.float64).reshape(-1) if scores.ndim <= 1 else scores
  if scores.shape != (n,):
    raise ValueError(f"score.scores_path {path} has shape {scores.shape} but the train split has "
                     f"{n} examples; pass one score per example in source order")
  bad = ~np.isfinite(scores)
  if bad.any():
    raise ValueError(f"score.scores_path {path} contains {int(bad.sum())} NaN/inf values (first at "
                     f"index {int(np.flatnonzero(bad)[0])}); clean or recompute the scores")
  return scores.astype(np.float32)


def selection_scores(run, cfg) -> np.ndarray:
  """The [N] scores cfg.select ranks by (the select stage, the tune search): scores.npy
  (score.kind or score.scores_path) when select.score is empty, else scores_<select.score>.npy."""
  name = f"scores_{cfg.select.score}.npy" if cfg.select.score else "scores.npy"
  scores = fs.load_npy(run.require(name, "score"))
  n = len(run.train_source.labels)
  if scores.shape != (n,):
    raise ValueError(f"{name} has {scores.shape[0]} entries but there are {n} examples; rerun "
                     "the score stage")
  return scores


def score_histogram(path: fs.PathLike, scores: np.ndarray, labels: np.ndarray, title: str) -> None:
  """A PNG with one histogram panel per group of classes (<= 10 groups).

  Drawn on a bare matplotlib Figure with a fixed layout: pyplot's import and tight_layout took
  0.6 of the 1.0 s this plot cost in the demo's score stage."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  num_classes = int(labels.max()) + 1
  groups = np.array_split(np.arange(num_classes), min(10, num_classes))
  fig = Figure(figsize=(15, 5.5))
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 5, sharex=True)
  bins = np.linspace(float(scores.min()), float(scores.max()) + 1e-6, 30)
  for ax, g in zip(axes.flat, groups):
    counts, _ = np.histogram(scores[np.isin(labels, g)], bins=bins)
    ax.stairs(counts, bins, fill=True, color="tab:blue")
    ax.set_title(f"class {g[0]}" if len(g) == 1 else f"classes {g[0]}-{g[-1]}", fontsize=9)
  for ax in list(axes.flat)[len(groups):]:
    ax.axis("off")
  fig.suptitle(f"per-example score: {title} (lower = easier)")
  fig.subplots_adjust(left=0.04, right=0.99, bottom=0.06, top=0.88, wspace=0.25, hspace=0.3)
  fs.write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))


def score_image_size(config) -> int:
  """The resolution the scoring models train and score at: score.image_size, or data.image_size
  when that is 0 (e.g. 112 for 224px ImageNet: ~4x fewer FLOPs and cheaper decodes)."""
  return config.score.get("image_size", 0) or config.data.image_size


def model_groups(config) -> list[list[int]]:
  """The scoring models trained in one pass over the data: all K together (score.together), or
  each alone."""
  k_models = config.score.num_models
  return [list(range(k_models))] if config.score.together else [[k] for k in range(k_models)]


def _score_all(run, variables, names, desc) -> dict:
  """Every train example through the models' eval-mode forward passes, all K in one call per
  batch: {name: [K, N]}."""
  from pca_jax import augment, parallel
  from pca_jax.data import pipeline
  from pca_jax.models.registry import model_from_config
  from pca_jax.training.metrics import Progress
  cfg, src = run.config, run.train_source
  n = len(src.labels)
  model = model_from_config(cfg.model, src.num_classes)
  mesh = parallel.make_mesh()
  local = parallel.forward_batch_size(cfg.score.batch_size, mesh)
  batches = pipeline.ordered_batches(src, local, score_image_size(cfg), cfg.data.eval_crop_fraction,
                                     num_threads=cfg.data.num_threads,
                                     num_workers=cfg.data.num_workers,
                                     prefetch_mb=cfg.data.prefetch_mb)
  progress = Progress(n, 0, desc)
  done = [0]

  def on_batch(count):
    done[0] += count
    progress.update(done[0], count, {}, done[0] == n)
  try:
    return scoring.score_dataset(lambda v, x: model.apply(v, augment.normalize(x), train=False),
                                 variables, batches, num_examples=n, scores=names, mesh=mesh,
                                 progress=on_batch, model_axis=cfg.score.model_axis)
  finally:
    progress.close()


def _epoch_history(run, train_epoch, per_model, wd, num_models: int) -> dict[str, list]:
  """Forgetting events and AUM from the training history: the models train epoch by epoch
  (train_epoch(e) resumes from the checkpoint of epoch e - 1), and after every epoch one eval-mode
  pass over the train set records which examples each model classifies correctly and their
  margins (correct_epoch<e>.npy and margin_epoch<e>.npy in wd, [num_models, N]; an epoch whose
  files are there is read back, not recomputed). Returns {score: [[N] per model]} for
  score.forgetting / score.aum."""
  cfg = run.config
  correct, margins = [], []  # per epoch: [num_models, N]
  for e in range(1, cfg.score.train.epochs + 1):
    fc, fm = wd / f"correct_epoch{e}.npy", wd / f"margin_epoch{e}.npy"
    if fc.exists() and fm.exists():
      correct.append(fs.load_npy(fc))
      margins.append(fs.load_npy(fm))
      continue
    state = train_epoch(e)
    out = _score_all(run, per_model(state), ("correct", "margin"),
                     f"correctness and margins after epoch {e}")
    fs.save_npy(fm, out["margin"])  # margins first: an epoch is done when both are there
    fs.save_npy(fc, out["correct"] > 0.5)
    correct.append(out["correct"] > 0.5)
    margins.append(out["margin"])
  history: dict[str, list] = {}
  for i in range(num_models):
    if cfg.score.forgetting:
      history.setdefault("forgetting", []).append(
          scoring.forgetting_counts(np.stack([c[i] for c in correct])))
    if cfg.score.aum:
      history.setdefault("aum", []).append(
          scoring.aum_from_margins(np.stack([m[i] for m in margins])))
  return history


def _train_group(run, stage, ks: list[int]) -> tuple[list[dict], list[dict], dict[str, list]]:
  """Trains the scoring models ks: ([variables], [{train_loss, train_acc}], {history score:
  [[N] per model]}, see _epoch_history).

  Model k has the seed derive_seed(seed, "score_model", k). Alone (score.together=False) it
  reads its own data order and takes torchvision's random-resized crops on the host
  (score/model_<k>/); together, the models of ks train in one jitted step per batch on ONE
  stream of decoded batches (the data order of the first model's seed), each with its own
  initialisation and its own crops on the device (score/together/).
  """
  import jax
  from pca_jax import parallel
  from pca_jax.data import pipeline
  from pca_jax.training import train, variables_of
  cfg, src = run.config, run.train_source
  together = bool(cfg.score.together)
  seeds = [rng.derive_seed(cfg.seed, "score_model", k) for k in ks]
  mc = run.trainer_config(cfg.score.train, seeds[0])
  mc.train.image_size = score_image_size(cfg)
  name = "together" if together else f"model_{ks[0]}"
  wd = run.path("score", name)
  desc = (f"score models 1-{len(ks)} together" if together else
          f"score model {ks[0] + 1}/{cfg.score.num_models}")
  kwargs = dict(log=run.log, fingerprint=f"{stage.fingerprint}:{name}")
  if together:
    kwargs.update(model_seeds=seeds, model_axis=cfg.score.model_axis)

  def per_model(state) -> list[dict]:
    variables = jax.device_get(variables_of(state))
    return ([parallel.unstack_tree(variables, i) for i in range(len(ks))] if together else
            [variables])

  per_epoch = pipeline.train_steps_per_epoch(len(src.labels), cfg.score.train.batch_size)
  # score.train.max_steps (> 0) stops the models early, epoch by epoch too
  last = min(cfg.score.train.max_steps or cfg.score.train.epochs * per_epoch,
             cfg.score.train.epochs * per_epoch)

  def train_epoch(e: int):
    mc.train.max_steps = min(e * per_epoch, last)
    return train(mc, wd, src, None, desc=f"{desc} epoch {e}",
                 expected_start=min((e - 1) * per_epoch, last), **kwargs)[0]
  history = {}
  if cfg.score.forgetting or cfg.score.aum:
    history = _epoch_history(run, train_epoch, per_model, wd, len(ks))
    mc.train.max_steps = cfg.score.train.max_steps
  state, m = train(mc, wd, src, None, desc=desc, expected_start=last if history else 0, **kwargs)
  if together:
    none = [None] * len(ks)  # processes other than 0 do not read metrics.jsonl on a resume
    metrics = [{"train_loss": loss, "train_acc": acc}
               for loss, acc in zip(m["train_loss_per_model"] or none,
                                    m["train_acc_per_model"] or none)]
  else:
    metrics = [{"train_loss": m["train_loss"], "train_acc": m["train_acc"]}]
  return per_model(state), metrics, history


def stage_score(run, stage) -> dict:
  cfg, src = run.config, run.train_source
  labels = src.labels
  n = len(labels)
  fs.save_npy(run.path("labels.npy"), labels)
  info = {"num_examples": n, "num_classes": src.num_classes}
  if cfg.score.scores_path:
    scores = load_scores(cfg.score.scores_path, n)
    fs.save_npy(run.path("scores.npy"), scores)
    # also under the kind's name, which the benchmark's methods read (el2n_easy, pca, ...)
    fs.save_npy(run.path(f"scores_{cfg.score.kind}.npy"), scores)
    run.log(f"[score] using precomputed scores from {cfg.score.scores_path} ({n} examples)")
    score_histogram(run.path("score_hist.png"), scores, labels, f"{cfg.score.kind} (precomputed)")
    return {**info, "precomputed": cfg.score.scores_path}

  import time
  from pca_jax import parallel
  from pca_jax.data import pipeline

  def decoded() -> int:
    """Images the pipelines of all processes have read so far (each process reads its shard)."""
    return int(parallel.gather_host_local(np.asarray([pipeline.images_decoded()])).sum())
  decoded_before, t0 = decoded(), time.time()
  variables, train_metrics, history = [], [], {}
  for ks in model_groups(cfg):
    v, m, h = _train_group(run, stage, ks)
    variables += v
    train_metrics += m
    for name, values in h.items():
      history.setdefault(name, []).extend(values)
  decoded_training, t1 = decoded() - decoded_before, time.time()
  names = scoring.SELECTION_SCORES
  result = _score_all(run, variables, names, f"score {n} examples x {len(variables)} models")
  info.update(together=bool(cfg.score.together), image_size=score_image_size(cfg),
              images_decoded=decoded() - decoded_before, images_decoded_training=decoded_training,
              train_wall_s=t1 - t0, score_wall_s=time.time() - t1)
  if not result["seen"].all():
    raise ValueError(f"{int((~result['seen']).sum())} examples were not scored; the pipeline "
                     "dropped data")
  for name in names:  # fs writers write on process 0 only
    fs.save_npy(run.path("score", f"{name}_per_model.npy"), result[name])
    fs.save_npy(run.path(f"scores_{name}.npy"), result[name].mean(axis=0))
  scores = result[cfg.score.kind].mean(axis=0)
  fs.save_npy(run.path("scores.npy"), scores)
  for name, per_model in history.items():  # forgetting, aum: [K, N] and the mean over models
    fs.save_npy(run.path("score", f"{name}_per_model.npy"), np.stack(per_model))
    fs.save_npy(run.path(f"scores_{name}.npy"), np.mean(per_model, axis=0))
  if fs.is_writer():
    score_histogram(run.path("score_hist.png"), scores, labels,
                    f"{cfg.score.kind}, mean of {len(variables)} models")
  corr = float(np.corrcoef(result["el2n"].mean(0), result["entropy"].mean(0))[0, 1])
  return {**info, "models": train_metrics, "el2n_entropy_corr": corr}
