"""PCA's stages after scoring: select (Prune), combine (Combine), store, train (Augment), eval.

Each is a function (run, stage) -> summary; pca_jax.pca declares what each reads, writes and depends
on for the stage runner. In a run with the tune stage, each reads the tuned config
(pca_jax.pca.tune.tuned_config: the search's choice of select.mode / window / order, combine.grid,
train.resolution / crop) and select takes its images from the train split minus the validation
split.
"""

from __future__ import annotations

import numpy as np

from pca_jax import fs, rng
from pca_jax.config import cells, select_score
from pca_jax.pca.score import selection_scores
from pca_jax.pca.tune import selection_pool, tune_needs, tuned_config, tuning
from pca_jax.selection import select_by_block


def check_budget(run) -> None:
  """Up front, from the labels alone: every class has the ipc x cells images select will take
  (inside select.window). A tuned run's budgets are the tune stage's check (tune.check_tune)."""
  from pca_jax.selection import FULL_WINDOW, window_count
  cfg = run.config
  if tuning(cfg):
    return
  labels = np.asarray(run.train_source.labels)
  per_class = cfg.select.ipc * cells(cfg)
  counts = np.bincount(labels, minlength=run.train_source.num_classes)
  if counts.min() < per_class:
    c = int(np.argmin(counts))
    raise ValueError(f"select.ipc={cfg.select.ipc} x {cells(cfg)} grid cells = {per_class} images "
                     f"per class, but class {c} has only {counts[c]}; lower select.ipc or the grid")
  window = tuple(float(w) for w in cfg.select.window)
  if cfg.select.mode == "easy" and window != FULL_WINDOW:
    held = np.array([window_count(int(n), window) for n in counts])
    c = int(np.argmin(held))
    if held[c] < per_class:
      raise ValueError(f"select.ipc={cfg.select.ipc} x {cells(cfg)} grid cells = {per_class} "
                       f"images per class, but select.window={window} holds only {held[c]} of "
                       f"class {c}'s {counts[c]}; widen select.window, lower select.ipc or the "
                       "grid")


def select_needs(config) -> tuple[str, ...]:
  """The stages select reads: the scores unless it selects at random; in a tuned run the tune
  stage (its choice and validation split) and the scores if any candidate prunes."""
  if tuning(config):
    return tune_needs(config) + ("tune",)
  return () if config.select.mode == "random" else ("score",)


def _selection(cfg) -> dict:
  """What the selection was, for the select summary and the store manifest."""
  out = {"mode": cfg.select.mode}
  if cfg.select.mode == "easy":
    out.update(window=[float(w) for w in cfg.select.window], order=cfg.select.order)
  if cfg.select.mode == "ccs":
    out.update(ccs_beta=cfg.select.ccs_beta, ccs_strata=cfg.select.ccs_strata)
  return out


def stage_select(run, stage) -> dict:
  """Selects ipc x cells examples per class by select.mode over the score select.score (empty:
  scores.npy, i.e. score.kind or score.scores_path; else scores_<select.score>.npy), inside
  select.window; in a tuned run with the chosen settings, from the train split minus tune's
  validation split."""
  import jax

  cfg = tuned_config(run)
  labels = np.asarray(run.train_source.labels)
  per_class = cfg.select.ipc * cells(cfg)
  scores = selection_scores(run, cfg) if cfg.select.mode != "random" else None
  pool = selection_pool(run)
  idx = select_by_block(cfg.select, scores, labels, per_class,
                       jax.random.key(rng.derive_seed(cfg.seed, "select")),
                       run.train_source.num_classes, pool)
  fs.save_npy(run.path("selected.npy"), idx)
  out = {"selected": int(idx.size), "per_class": per_class, **_selection(cfg)}
  if pool is not None:
    out["pool"] = int(len(pool))
  if scores is not None:
    out["score"] = select_score(cfg)
    out["mean_score_selected"] = float(scores[idx].mean())
    out["mean_score_all"] = float(scores.mean())
  return out


def stage_combine(run, stage) -> dict:
  from pca_jax.data import pipeline

  cfg = tuned_config(run)
  idx = fs.load_npy(run.require("selected.npy", "select"))
  size = cfg.data.image_size
  grid = tuple(int(g) for g in cfg.combine.grid)
  m = len(idx) // cells(cfg)
  with fs.atomic_dir(run.path("combine")) as tmp:
    mosaics = np.lib.format.open_memmap(tmp / "mosaics.npy", "w+", np.uint8, (m, size, size, 3))
    _, labels = pipeline.mosaics_from_source(run.train_source, idx, grid, size, cfg.combine.fit,
                                             cfg.data.num_threads, out=mosaics)
    mosaics.flush()
    del mosaics
    np.save(tmp / "labels.npy", labels)
  return {"mosaics": m, "grid": list(grid), "images_per_mosaic": cells(cfg)}


def set_manifest(run, method: str, ipc: int, grid, seed: int, source_indices, **extra) -> dict:
  """The manifest of a compressed set built from this run's train source (PCA and the benchmark)."""
  src = run.train_source
  return {"method": method, "ipc": int(ipc), "grid": [int(g) for g in grid],
          "cells": int(grid[0]) * int(grid[1]), "seed": int(seed),
          "source": {"name": src.name, "split": run.config.data.train_split,
                     "num_examples": len(src)},
          "source_indices": np.asarray(source_indices), "image_size": run.config.data.image_size,
          **extra}


def stage_store(run, stage) -> dict:
  from pca_jax.data.store import write_compressed

  cfg = tuned_config(run)
  mosaics = fs.load_npy(run.require("combine/mosaics.npy", "combine"), mmap=True)
  labels = fs.load_npy(run.path("combine", "labels.npy"))
  selection = _selection(cfg)
  if cfg.select.mode != "random":
    selection.update({"score": select_score(cfg), "num_models": cfg.score.num_models,
                      "scores_path": cfg.score.scores_path or None})
  extra = {}
  if tuning(cfg):
    tune = fs.read_json(run.path("tune.json"))
    extra["tune"] = {"choice": tune["choice"], "search_wall_s": tune["search_wall_s"],
                     "val_fraction": tune["val_fraction"], "val_examples": tune["val_examples"],
                     "val_indices": "tune/val_indices.npy",
                     "train": {"resolution": cfg.train.resolution, "crop": cfg.train.crop}}
  manifest = set_manifest(run, cfg.method, cfg.select.ipc, cfg.combine.grid, cfg.seed,
                          fs.load_npy(run.path("selected.npy")), fit=cfg.combine.fit,
                          selection=selection, fingerprint=stage.fingerprint, **extra)
  mosaics = np.asarray(mosaics)
  out = write_compressed(run.path("compressed"), mosaics, labels, manifest,
                         class_names=run.train_source.class_names)
  # the summary from memory: on other processes the files are not there yet (one writer)
  return {"path": str(out), "num_images": len(mosaics),
          "bytes": {"images": int(mosaics.nbytes), "labels": int(len(labels)) * 4},
          "image_shape": list(mosaics.shape[1:]), "source": manifest["source"]["name"]}


def student_config(run):
  """The student's trainer config: config.train (tuned: with the chosen crop and resolution) with
  the mosaic grid and its own seed."""
  cfg = tuned_config(run)
  mc = run.trainer_config(cfg.train, rng.derive_seed(cfg.seed, "student"))
  mc.train.grid = tuple(cfg.combine.grid)
  return mc


def stage_train(run, stage) -> dict:
  from pca_jax.data.store import load_compressed
  from pca_jax.training import InMemoryData, train

  cs = load_compressed(run.require("compressed", "store"))
  data = InMemoryData(cs.images, cs.labels, cs.manifest["num_classes"])
  # a tuned run reads the test split in the eval stage only: no periodic test evaluations
  eval_source = None if tuning(run.config) else run.eval_source
  if eval_source is None and run.config.train.eval_every_epochs:
    run.log("[train] tuned run: no periodic test evaluations (the test split is read by the "
            "eval stage only)")
  _, metrics = train(student_config(run), run.path("train"), data, eval_source, desc="train",
                     final_eval=False, log=run.log, fingerprint=stage.fingerprint)
  fs.save_json(run.path("train.json"), metrics)
  return {k: metrics[k] for k in ("steps", "train_loss", "train_acc", "train_img_per_s",
                                  "train_wall_s")}


def stage_eval(run, stage) -> dict:
  """Top-1/top-5 of the final params on the real test/val split, without the trainer."""
  from pca_jax.models.registry import model_from_config
  from pca_jax.training import evaluate, load_variables
  from pca_jax.training.views import view_sizes

  cfg = run.config
  steps = stage.upstream["train"]["summary"]["steps"]
  variables = load_variables(run.path("train"), step=steps)
  _, eval_size, blur_size = view_sizes(student_config(run).train)
  model = model_from_config(cfg.model, run.eval_source.num_classes)
  ev = evaluate(variables, run.eval_source, model.apply, eval_size=eval_size, blur_size=blur_size,
                crop_fraction=cfg.data.eval_crop_fraction, batch_size=cfg.train.eval_batch_size,
                num_threads=cfg.data.num_threads)
  ev = {f"eval_{k}": v for k, v in ev.items()}
  fs.save_json(run.path("eval.json"), ev)
  run.log(f"[eval] top-1 {ev['eval_top1']:.2f}%  top-5 {ev['eval_top5']:.2f}%  "
          f"({ev['eval_count']} test images)")
  return ev
