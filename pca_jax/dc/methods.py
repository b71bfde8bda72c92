"""The one registry of DC benchmark methods: how each builds its compressed set.

Every method stores `ipc` images of data.image_size per class (equal bytes of images); what differs
is which source images (or crops) go in and how they are combined. A set is built with PCA's own
pieces (selection.select_per_class, pipeline.mosaics_from_source, store.write_compressed) and cached
under the fingerprint of what made it (pca_jax.dc.stages). To add a method, add a Method here.

  random          class-balanced random images (seeded)
  <score>_easy    lowest <score> first, for every score of pca_jax.scoring.SCORES
  <score>_hard    highest <score> first (forgetting_hard = Toneva et al.'s most-forgotten)
  rded_like       an RDED-style distillation baseline (pca_jax.dc.rded), stitched with the PCA grid
  pca             easiest EL2N, whole images in mosaics, patch-constrained crops; grid sweep
  external        any compressed set given as an ImageFolder (not in this table: see dc.stages)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from pca_jax import rng, scoring

EXTERNAL = "external"


@dataclasses.dataclass(frozen=True)
class Method:
  """A benchmark method.

  build(run, ctx, per_class, grid, seed) -> (images uint8 [M, S, S, 3], labels [M], source
  indices): `per_class` = ipc x cells source images (or crops) per class, combined `grid`-wise.
  ctx gives `scores(name)` and `teacher()`. `grids`: "whole" (1x1), "combine" (config.combine.grid)
  or "sweep" (benchmark.grids). `crop`: the student's crop on this set. `score` / `teacher` /
  `seeded` / `fields`: what the set depends on, for its fingerprint. `distinct_images`: the set
  needs ipc x cells distinct images of every class (cells that do not fit are skipped).
  """
  name: str
  build: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
  grids: str = "whole"
  crop: str = "rrc"
  score: str | None = None
  teacher: bool = False
  seeded: bool = False
  fields: tuple[str, ...] = ()
  distinct_images: bool = True   # takes ipc x cells distinct source images of every class

  def fits(self, smallest_class: int, per_class: int) -> bool:
    return not self.distinct_images or per_class <= smallest_class

  def grids_for(self, bench, combine_grid) -> list[tuple[int, int]]:
    if self.grids == "sweep":
      return [tuple(int(x) for x in g) for g in bench.grids]
    if self.grids == "combine":
      return [tuple(int(x) for x in combine_grid)]
    return [(1, 1)]


def _from_indices(run, idx: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Loads source images idx (by class, rows*cols per mosaic) and combines them."""
  from pca_jax.data import pipeline
  cfg = run.config
  mosaics, labels = pipeline.mosaics_from_source(run.train_source, idx, tuple(grid),
                                                 cfg.data.image_size, cfg.combine.fit,
                                                 cfg.data.num_threads)
  return mosaics, labels, idx


def _random(run, ctx, per_class, grid, seed):
  import jax
  from pca_jax.selection import select_per_class
  key = jax.random.key(rng.derive_seed(run.config.seed, "random set", seed))
  idx = select_per_class(None, run.train_source.labels, per_class, "random", key=key)
  return _from_indices(run, idx, grid)


def _pruned(score: str, mode: str) -> Callable:
  def build(run, ctx, per_class, grid, seed):
    from pca_jax.selection import select_per_class
    idx = select_per_class(ctx.scores(score), run.train_source.labels, per_class, mode,
                           num_classes=run.train_source.num_classes)
    return _from_indices(run, idx, grid)
  return build


def _rded_like(run, ctx, per_class, grid, seed):
  from pca_jax.dc import rded
  return rded.build_rded_like(run, ctx.teacher(), per_class, grid, seed)


METHODS: dict[str, Method] = {
    "random": Method("random", _random, seeded=True),
    **{f"{score}_{mode}": Method(f"{score}_{mode}", _pruned(score, mode), score=score)
       for score in scoring.SCORES for mode in ("easy", "hard")},
    "rded_like": Method("rded_like", _rded_like, grids="combine", teacher=True, seeded=True,
                        distinct_images=False,
                        fields=("benchmark.rded_pool", "benchmark.rded_crops_per_image",
                                "benchmark.rded_crop_scale")),
    "pca": Method("pca", _pruned("el2n", "easy"), grids="sweep", crop="patch", score="el2n"),
}


def needs_scores(bench) -> bool:
  from pca_jax.dc.plan import method_names
  return any(METHODS[m].score for m in method_names(bench) if m in METHODS)
