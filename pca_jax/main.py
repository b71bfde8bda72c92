"""Runs PCA (Prune, Combine, Augment) as resumable stages in one run directory.

  python -m pca_jax.main --config=configs/ipc50.py --workdir=runs/ipc50 [--config.train.epochs=5]

Stages (config.stages, comma-separated, always run in this order):
  score    train K models a few epochs on the FULL train set, EL2N + entropy of every example
           -> scores.npy (the selection score, mean over K), scores_el2n.npy, scores_entropy.npy,
              score/<kind>_per_model.npy, labels.npy, score_hist.png
  select   class-balanced, ipc * grid cells per class, easiest first -> selected.npy
  combine  whole selected images into grid mosaics -> combine/mosaics.npy, combine/labels.npy
  store    the compressed dataset -> compressed/{images.npy,labels.npy,manifest.json,preview.png}
  train    fresh model on the compressed set, hard labels, patch-constrained crops -> train/, train.json
  eval     top-1/top-5 on the real test/val split -> eval.json
  report   results.json, results.md
The DC benchmark (configs/benchmark_*.py) runs score, then
  teacher   a model trained on the full train split, for soft labels and rded_like -> teacher/
  benchmark every method x IPC x label mode x seed (x grid, x resolution) -> benchmark.{csv,md,png}
A finished stage is skipped on rerun unless --config.force=True or its config changed.
Bad input ends the run with one line on stderr and exit code 2; SIGTERM saves a checkpoint and exits
with code 143 (rerun to resume).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: every stage reads and writes here.")

# Fields that affect each stage's output (cumulative along the pipeline). Thread counts, logging and
# checkpoint cadence are left out: changing them does not invalidate finished work.
_IGNORED = {"num_threads", "num_workers", "log_every_steps", "checkpoint_every_steps",
            "keep_checkpoints", "eval_every_epochs", "jax_cache_dir", "stages", "force"}
_STAGE_KEYS = {
    "score": ("seed", "data", "model", "score"),
    "teacher": ("benchmark",),
    "select": ("select",),
    "combine": ("combine",),
    "store": ("method",),
    "train": ("train",),
    "eval": (),
    "benchmark": (),
    "report": (),
}


def log(msg: str) -> None:
  import jax
  if jax.process_index() == 0:
    print(msg, flush=True)


def _strip(d):
  if isinstance(d, dict):
    return {k: _strip(v) for k, v in sorted(d.items()) if k not in _IGNORED}
  if isinstance(d, (list, tuple)):
    return [_strip(v) for v in d]
  return d


def fingerprint(config, stage: str) -> str:
  """Hash of every config field that the stage's output depends on (its own and upstream)."""
  from pca_jax.config import STAGES
  d = config.to_dict()
  keys = []
  for s in STAGES[:STAGES.index(stage) + 1]:
    keys += _STAGE_KEYS[s]
  sub = {k: _strip(d[k]) for k in keys}
  return hashlib.sha256(json.dumps(sub, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run:
  """The run directory and lazily built sources."""

  def __init__(self, config, workdir: Path):
    self.config, self.workdir = config, workdir
    self._train_source = self._eval_source = None

  @property
  def train_source(self):
    if self._train_source is None:
      from pca_jax.data.sources import load_source
      self._train_source = load_source(self.config.data, self.config.data.train_split)
      skipped = getattr(self._train_source, "skipped", [])
      if skipped:
        log(f"[data] skipped {len(skipped)} unreadable files (first: {skipped[0]})")
    return self._train_source

  @property
  def eval_source(self):
    if self._eval_source is None:
      from pca_jax.data.sources import load_source
      self._eval_source = load_source(self.config.data, self.config.data.eval_split)
    return self._eval_source

  def path(self, *parts) -> Path:
    return self.workdir.joinpath(*parts)

  def require(self, name: str, stage: str) -> Path:
    p = self.path(name)
    if not p.exists():
      raise ValueError(f"{p} is missing; run the {stage} stage first (add it to --config.stages)")
    return p

  def model_config(self, train_cfg, seed_offset: int = 0):
    import ml_collections
    c = ml_collections.ConfigDict()
    c.model = copy.deepcopy(self.config.model)
    c.data = copy.deepcopy(self.config.data)
    c.train = copy.deepcopy(train_cfg)
    c.train.seed = self.config.seed * 1000 + seed_offset
    c.train.image_size = self.config.data.image_size
    c.train.num_threads = self.config.data.num_threads
    return c


# ----------------------------------------------------------------------------------------- stages
def stage_score(run: Run) -> dict:
  import jax
  import numpy as np
  from pca_jax import augment, parallel, scoring, train
  from pca_jax.data import pipeline
  from pca_jax.data.atomic import save_npy
  from pca_jax.models.resnet import create_model

  cfg = run.config
  src = run.train_source
  labels = src.labels
  n = len(labels)
  save_npy(run.path("labels.npy"), labels)
  info = {"num_examples": n, "num_classes": src.num_classes}
  if cfg.score.scores_path:
    scores = _load_scores(cfg.score.scores_path, n)
    save_npy(run.path("scores.npy"), scores)
    log(f"[score] using precomputed scores from {cfg.score.scores_path} ({n} examples)")
    _score_histogram(run, scores, labels, f"{cfg.score.kind} (precomputed)")
    return {**info, "precomputed": cfg.score.scores_path}

  model = create_model(cfg.model.name, src.num_classes, cfg.model.width, cfg.model.stem,
                       cfg.model.dtype)

  def apply_fn(v, x):
    return model.apply(v, augment.normalize(x), train=False)

  mesh = parallel.make_mesh()
  local = parallel.check_batch_size(cfg.score.batch_size, mesh, "score.batch_size")

  def score_all(variables, names, desc):
    batches = pipeline.ordered_batches(src, local, cfg.data.image_size,
                                       cfg.data.eval_crop_fraction,
                                       num_threads=cfg.data.num_threads,
                                       num_workers=cfg.data.num_workers)
    progress = train.Progress(n, 0, desc)
    done = [0]

    def on_batch(count):
      done[0] += count
      progress.update(done[0], count, {}, done[0] == n)
    try:
      return scoring.score_dataset(apply_fn, variables, batches, num_examples=n, scores=names,
                                   mesh=mesh, progress=on_batch)
    finally:
      progress.close()

  variables = []
  k_models = cfg.score.num_models
  train_metrics = []
  forgetting = []
  for k in range(k_models):
    mc = run.model_config(cfg.score.train, seed_offset=k + 1)
    wd = run.path("score", f"model_{k}")
    desc = f"score model {k + 1}/{k_models}"
    if cfg.score.forgetting:
      # Train epoch by epoch (each call resumes from the last checkpoint) and record, after every
      # epoch, which examples are classified correctly; forgetting = correct -> wrong transitions.
      spe = pipeline.train_steps_per_epoch(n, cfg.score.train.batch_size)
      history = []
      for e in range(1, cfg.score.train.epochs + 1):
        f = wd / f"correct_epoch{e}.npy"
        if f.exists():
          history.append(np.load(f))
          continue
        mc.train.max_steps = e * spe
        state, m = train.train(mc, wd, src, None, desc=f"{desc} epoch {e}", log=log)
        corr = score_all([jax.device_get(train.variables_of(state))], ("correct",),
                         f"correctness after epoch {e}")["correct"][0] > 0.5
        save_npy(f, corr)
        history.append(corr)
      forgetting.append(scoring.forgetting_counts(np.stack(history)))
      mc.train.max_steps = 0
    state, m = train.train(mc, wd, src, None, desc=desc, log=log)
    variables.append(jax.device_get(train.variables_of(state)))
    train_metrics.append({"train_loss": m["train_loss"], "train_acc": m["train_acc"]})
  result = score_all(variables, ("el2n", "entropy"), f"score {n} examples x {k_models} models")
  if not result["seen"].all():
    raise ValueError(f"{int((~result['seen']).sum())} examples were not scored; the pipeline "
                     "dropped data")
  if jax.process_index() == 0:
    for name in ("el2n", "entropy"):
      save_npy(run.path("score", f"{name}_per_model.npy"), result[name])
      save_npy(run.path(f"scores_{name}.npy"), result[name].mean(axis=0))
    scores = result[cfg.score.kind].mean(axis=0)
    save_npy(run.path("scores.npy"), scores)
    if forgetting:
      save_npy(run.path("score", "forgetting_per_model.npy"), np.stack(forgetting))
      save_npy(run.path("scores_forgetting.npy"), np.mean(forgetting, axis=0))
    _score_histogram(run, scores, labels, f"{cfg.score.kind}, mean of {k_models} models")
  corr = float(np.corrcoef(result["el2n"].mean(0), result["entropy"].mean(0))[0, 1])
  return {**info, "models": train_metrics, "el2n_entropy_corr": corr}


def _load_scores(path: str, n: int):
  import numpy as np
  p = Path(path)
  if not p.is_file():
    raise ValueError(f"score.scores_path {path} does not exist; pass a .npy file of {n} scores")
  try:
    scores = np.load(p, allow_pickle=False)
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


def _score_histogram(run: Run, scores, labels, title: str) -> None:
  """score_hist.png: one histogram panel per group of classes (<= 10 groups)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from pca_jax.data.atomic import write_file

  num_classes = int(labels.max()) + 1
  groups = np.array_split(np.arange(num_classes), min(10, num_classes))
  fig, axes = plt.subplots(2, 5, figsize=(15, 5.5), sharex=True)
  bins = np.linspace(float(scores.min()), float(scores.max()) + 1e-6, 30)
  for ax, g in zip(axes.flat, groups):
    ax.hist(scores[np.isin(labels, g)], bins=bins, color="tab:blue")
    ax.set_title(f"class {g[0]}" if len(g) == 1 else f"classes {g[0]}-{g[-1]}", fontsize=9)
  for ax in list(axes.flat)[len(groups):]:
    ax.axis("off")
  fig.suptitle(f"per-example score: {title} (lower = easier)")
  fig.tight_layout()
  write_file(run.path("score_hist.png"), lambda tmp: fig.savefig(tmp, format="png", dpi=80))
  plt.close(fig)


def stage_select(run: Run) -> dict:
  import jax
  import numpy as np
  from pca_jax.config import cells
  from pca_jax.data.atomic import save_npy
  from pca_jax.selection import select_per_class

  cfg = run.config
  labels = np.load(run.path("labels.npy")) if run.path("labels.npy").exists() else \
      run.train_source.labels
  per_class = cfg.select.ipc * cells(cfg)
  counts = np.bincount(labels, minlength=run.train_source.num_classes)
  if counts.min() < per_class:
    c = int(np.argmin(counts))
    raise ValueError(f"select.ipc={cfg.select.ipc} x {cells(cfg)} grid cells = {per_class} images "
                     f"per class, but class {c} has only {counts[c]}; lower select.ipc or the grid")
  scores = None
  if cfg.select.mode != "random":
    scores = np.load(run.require("scores.npy", "score"))
    if scores.shape != labels.shape:
      raise ValueError(f"scores.npy has {scores.shape[0]} entries but there are {len(labels)} "
                       "examples; rerun the score stage")
  idx = select_per_class(scores, labels, per_class, cfg.select.mode,
                         key=jax.random.key(cfg.seed), num_classes=run.train_source.num_classes)
  save_npy(run.path("selected.npy"), idx)
  out = {"selected": int(idx.size), "per_class": per_class, "mode": cfg.select.mode}
  if scores is not None:
    out["mean_score_selected"] = float(scores[idx].mean())
    out["mean_score_all"] = float(scores.mean())
  return out


def stage_combine(run: Run) -> dict:
  import numpy as np
  from pca_jax.config import cells
  from pca_jax.data import pipeline
  from pca_jax.data.atomic import atomic_dir

  cfg = run.config
  idx = np.load(run.require("selected.npy", "select"))
  size = cfg.data.image_size
  grid = tuple(int(g) for g in cfg.combine.grid)
  m = len(idx) // cells(cfg)
  with atomic_dir(run.path("combine")) as tmp:
    mosaics = np.lib.format.open_memmap(tmp / "mosaics.npy", "w+", np.uint8, (m, size, size, 3))
    _, labels = pipeline.mosaics_from_source(run.train_source, idx, grid, size, cfg.combine.fit,
                                             cfg.data.num_threads, out=mosaics)
    mosaics.flush()
    del mosaics
    np.save(tmp / "labels.npy", labels)
  return {"mosaics": m, "grid": list(grid), "images_per_mosaic": cells(cfg)}


def stage_store(run: Run) -> dict:
  import numpy as np
  from pca_jax.config import cells
  from pca_jax.data.store import write_compressed

  cfg = run.config
  mosaics = np.load(run.require("combine/mosaics.npy", "combine"), mmap_mode="r")
  labels = np.load(run.path("combine", "labels.npy"))
  src = run.train_source
  manifest = {
      "method": cfg.method, "ipc": cfg.select.ipc, "grid": list(cfg.combine.grid),
      "cells": cells(cfg), "fit": cfg.combine.fit, "seed": cfg.seed,
      "selection": {"mode": cfg.select.mode, "score": cfg.score.kind,
                    "num_models": cfg.score.num_models,
                    "scores_path": cfg.score.scores_path or None},
      "source": {"name": src.name, "split": cfg.data.train_split, "num_examples": len(src)},
      "source_indices": np.load(run.path("selected.npy")),
      "image_size": cfg.data.image_size,
  }
  out = write_compressed(run.path("compressed"), np.asarray(mosaics), labels, manifest,
                         class_names=src.class_names)
  m = json.loads((out / "manifest.json").read_text())
  return {"path": str(out), "num_images": m["num_images"], "bytes": m["bytes"]}


def _train_call(run: Run, final_eval: bool):
  from pca_jax import train
  from pca_jax.data.store import load_compressed

  cfg = run.config
  cs = load_compressed(run.require("compressed", "store"))
  data = train.InMemoryData(cs.images, cs.labels, cs.manifest["num_classes"])
  mc = run.model_config(cfg.train)
  mc.train.grid = tuple(cfg.combine.grid)
  return train.train(mc, run.path("train"), data, run.eval_source, desc="train",
                     final_eval=final_eval, log=log)


def stage_train(run: Run) -> dict:
  from pca_jax.data.atomic import save_json
  _, metrics = _train_call(run, final_eval=False)
  save_json(run.path("train.json"), metrics)
  return {k: metrics[k] for k in ("steps", "train_loss", "train_acc", "train_img_per_s")}


def stage_eval(run: Run) -> dict:
  from pca_jax.data.atomic import save_json
  run.require("train.json", "train")
  _, metrics = _train_call(run, final_eval=True)
  ev = {k: v for k, v in metrics.items() if k.startswith("eval_")}
  save_json(run.path("eval.json"), ev)
  log(f"[eval] top-1 {ev['eval_top1']:.2f}%  top-5 {ev['eval_top5']:.2f}%  "
      f"({ev['eval_count']} test images)")
  return ev


PAPER_IMAGENET = {  # ResNet-18, hard labels, top-1 % (REFERENCE.md)
    10: {"random": 4.6, "el2n": 12.2, "pca": 22.8},
    50: {"random": 20.6, "el2n": 31.1, "pca": 39.1},
    100: {"random": 31.7, "el2n": 38.7, "pca": 45.5},
}


def stage_report(run: Run) -> dict:
  from pca_jax.data.atomic import save_json, save_text

  cfg = run.config

  def read(name):
    p = run.path(name)
    return json.loads(p.read_text()) if p.exists() else None

  manifest = read("compressed/manifest.json")
  ev = read("eval.json") or {}
  tr = read("train.json") or {}
  stages = {}
  for s in ("score", "select", "combine", "store", "train", "eval"):
    marker = read(f"stages/{s}.json")
    if marker:
      stages[s] = round(marker["wall_s"], 1)
  results = {
      "method": cfg.method, "dataset": manifest["source"]["name"] if manifest else cfg.data.source,
      "ipc": cfg.select.ipc, "grid": list(cfg.combine.grid), "selection": cfg.select.mode,
      "score": cfg.score.kind, "model": cfg.model.name, "width": cfg.model.width,
      "top1": ev.get("eval_top1"), "top5": ev.get("eval_top5"), "test_images": ev.get("eval_count"),
      "stored_images": manifest["num_images"] if manifest else None,
      "image_shape": manifest["image_shape"] if manifest else None,
      "bytes_images": manifest["bytes"]["images"] if manifest else None,
      "bytes_labels": manifest["bytes"]["labels"] if manifest else None,
      "train_epochs": cfg.train.epochs, "train_steps": tr.get("steps"),
      "resolution": cfg.train.resolution,
      "train_img_per_s": tr.get("train_img_per_s"), "wall_s": stages,
  }
  save_json(run.path("results.json"), results)

  def fmt(v, spec="{:.2f}"):
    return "n/a" if v is None else spec.format(v)
  lines = [
      f"# PCA results: {results['dataset']}", "",
      "| method | IPC | grid | selection | top-1 % | top-5 % | stored images | image bytes | label bytes |",
      "|---|---|---|---|---|---|---|---|---|",
      f"| {cfg.method} | {cfg.select.ipc} | {cfg.combine.grid[0]}x{cfg.combine.grid[1]} | "
      f"{cfg.select.mode} {cfg.score.kind} | {fmt(results['top1'])} | {fmt(results['top5'])} | "
      f"{fmt(results['stored_images'], '{}')} | {fmt(results['bytes_images'], '{:,}')} | "
      f"{fmt(results['bytes_labels'], '{:,}')} |", "",
      f"Student: {cfg.model.name} (width {cfg.model.width}, {cfg.model.stem} stem), "
      f"{cfg.train.epochs} epochs, {cfg.train.optimizer} lr {cfg.train.lr}, batch "
      f"{cfg.train.batch_size}, hard labels, patch-constrained crops "
      f"(scale {tuple(cfg.train.crop_scale)}), {cfg.train.resolution} resolution; evaluated on "
      f"{fmt(results['test_images'], '{}')} images of the {cfg.data.eval_split} split.",
      f"Prune: {cfg.select.mode} {cfg.score.kind}, mean of {cfg.score.num_models} models trained "
      f"{cfg.score.train.epochs} epochs on the full train set"
      + (f" (precomputed: {cfg.score.scores_path})" if cfg.score.scores_path else "") + ".", "",
      "| stage | wall time (s) |", "|---|---|",
      *[f"| {s} | {t} |" for s, t in stages.items()], "",
      "Files: scores.npy, score_hist.png, selected.npy, compressed/ (images.npy, labels.npy, "
      "manifest.json, preview.png), train/metrics.jsonl, eval.json.",
  ]
  if cfg.data.source == "tfds" and cfg.data.tfds_name == "imagenet2012" and \
      cfg.select.ipc in PAPER_IMAGENET:
    p = PAPER_IMAGENET[cfg.select.ipc]
    lines += ["", f"Paper (ImageNet-1K, ResNet-18, hard labels) at IPC {cfg.select.ipc}: random "
              f"{p['random']} / EL2N {p['el2n']} / PCA {p['pca']} top-1 %."]
  save_text(run.path("results.md"), "\n".join(lines) + "\n")
  log(f"[report] {run.path('results.md')}")
  return {"top1": results["top1"]}


def stage_teacher(run: Run) -> dict:
  from pca_jax import benchmark
  return benchmark.stage_teacher(run, log)


def stage_benchmark(run: Run) -> dict:
  from pca_jax import benchmark
  return benchmark.run_benchmark(run, log)


STAGE_FNS = {"score": stage_score, "teacher": stage_teacher, "select": stage_select,
             "combine": stage_combine, "store": stage_store, "train": stage_train,
             "eval": stage_eval, "benchmark": stage_benchmark, "report": stage_report}


# ------------------------------------------------------------------------------------------ driver
def prepare(config) -> None:
  """Validates the config and fills derived fields."""
  from pca_jax.config import validate
  validate(config)


def run_pipeline(config, workdir: str | os.PathLike) -> dict:
  """Runs the configured stages; returns {stage: summary}. Raises ValueError for bad input."""
  import jax
  from pca_jax import parallel
  from pca_jax.config import STAGES, parse_stages
  from pca_jax.data.atomic import check_writable, save_json

  prepare(config)
  existed = Path(workdir).exists()
  workdir = check_writable(workdir)
  if config.jax_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.jax_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  parallel.maybe_initialize_distributed()
  stages = parse_stages(config.stages)
  run = Run(config, Path(workdir))
  # Open the datasets before writing anything, so a missing/misconfigured dataset fails first.
  try:
    if set(stages) & {"score", "teacher", "select", "combine", "store", "benchmark"}:
      run.train_source
    if set(stages) & {"teacher", "train", "eval", "benchmark"}:
      run.eval_source
  except ValueError:
    if not existed:  # leave no empty run directory behind
      Path(workdir).rmdir() if not any(Path(workdir).iterdir()) else None
    raise
  if jax.process_index() == 0:
    save_json(run.path("config.json"), config.to_dict())
  log(f"pca_jax: stages {','.join(stages)} -> {workdir}  ({jax.device_count()} "
      f"{jax.devices()[0].platform} devices, {jax.process_count()} processes)")
  summaries = {}
  for stage in stages:
    marker = run.path("stages", f"{stage}.json")
    fp = fingerprint(config, stage)
    if stage not in ("benchmark", "report") and marker.exists() and not config.force:
      old = json.loads(marker.read_text())
      if old.get("fingerprint") == fp:
        log(f"[{stage}] already done ({old['wall_s']:.1f}s); skipped (--config.force=True reruns)")
        summaries[stage] = old.get("summary", {})
        continue
      log(f"[{stage}] config changed since the last run: rerunning")
    log(f"[{stage}] running")
    t0 = time.time()
    summary = STAGE_FNS[stage](run)
    wall = time.time() - t0
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"pca_jax_{stage}")
    if jax.process_index() == 0:
      # later stages depend on this one: their old results are stale now
      for later in STAGES[STAGES.index(stage) + 1:]:
        run.path("stages", f"{later}.json").unlink(missing_ok=True)
      save_json(marker, {"stage": stage, "fingerprint": fp, "wall_s": wall,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary})
    log(f"[{stage}] done in {wall:.1f}s")
    summaries[stage] = summary
  return summaries


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from pca_jax.train import Preempted
  if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO; keep the console readable
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    config = FLAGS.config
    if config is not None:
      config.to_dict()  # a config that failed to load raises on first use
  except OSError as e:  # the config file is missing or raised while loading
    first = " ".join(str(e).split())
    print(f"error: cannot load --config ({first[:300]})", file=sys.stderr)
    sys.exit(2)
  if config is None:
    print("error: --config is required, e.g. --config=configs/demo.py", file=sys.stderr)
    sys.exit(2)
  if not FLAGS.workdir:
    print("error: --workdir is required, e.g. --workdir=runs/demo", file=sys.stderr)
    sys.exit(2)
  try:
    run_pipeline(config, FLAGS.workdir)
  except Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(143)
  except ValueError as e:  # DataError and config errors: the message says what to fix
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv):
  """absl flag parsing with one-line errors for bad --config overrides (typos, wrong types)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    msg = " ".join(str(e).replace("\\n", " ").replace("\\'", "").replace("'", "").strip('"').split())
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    where = f" in {bad[-1] if len(bad) == 1 else 'a --config override'}" if bad else ""
    print(f"error: bad config{where}: {msg}; see the fields in configs/base.py and "
          "pca_jax/config.py", file=sys.stderr)
    sys.exit(2)


def cli() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
