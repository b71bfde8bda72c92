"""The one registry of DC benchmark methods: how each builds its compressed set.

Every method stores `ipc` images of data.image_size per class (equal bytes of images); what differs
is which source images (or crops) go in and how they are combined. A set is built with PCA's own
pieces (selection.select_per_class, pipeline.mosaics_from_source, store.write_compressed) and cached
under the fingerprint of what made it (pca_jax.dc.stages). To add a method, add a Method here.

  random          class-balanced random images (seeded)
  <score>_easy    lowest <score> first, for every score of pca_jax.scoring.SCORES
  <score>_hard    highest <score> first (forgetting_hard = Toneva et al.'s most-forgotten)
  sre2l / cda     images recovered from the teacher by BatchNorm matching (pca_jax.dc.synthesis)
  noise           Gaussian noise images (SRe2L's start, no recovery), the paper's control: chance
                  with hard labels, whatever the teacher teaches with soft labels (seeded)
  rded            RDED as published: lowest-loss real crops stitched factor x factor (pca_jax.dc.rded)
  pca             easiest EL2N, whole images in mosaics, patch-constrained crops; grid sweep
  ccs             Coverage-centric Coreset Selection per class (Zheng et al.) over
                  benchmark.ccs_score (default aum), whole images (seeded)
  pca_<prune>     PCA with another prune step (entropy, forgetting, aum: easiest first; ccs),
                  mosaics of config.combine.grid only, patch-constrained crops
  combine_random  the paper's ablation (Table 7), C + A without P: random images in
                  config.combine.grid mosaics, patch-constrained crops (seeded)
  pca_rrc         the ablation's P + C without A: PCA (easiest EL2N, config.combine.grid) with an
                  unconstrained random-resized crop of the whole mosaic
  pca_auto        PCA with grid, resolution, difficulty window (and the ablation switches) chosen
                  per IPC and seed by the tune stage's search on a validation split held out of
                  the train split (pca_jax.pca.tune); the set comes from the rest
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
  ctx gives `scores(name)` and `teacher()`. build may return a 4th element: manifest extras
  (e.g. "grid": the grid actually stored, "tune": the search and its choice). `grids`: "whole"
  (1x1), "combine" (config.combine.grid), "sweep" (benchmark.grids) or "rded"
  (benchmark.rded_factor squared). `crop`: the student's crop on this set. `score` / `teacher` /
  `seeded` / `fields`: what the set depends on, for its fingerprint; `score` is a name of
  scoring.SCORES or a dotted config field that holds one ("benchmark.ccs_score", then also in
  `fields`): `score_name(config)` resolves it. `distinct_images`: the set needs ipc x cells
  distinct images of every class (cells that do not fit are skipped). `searches`: the build runs
  the tune search (pca_auto).
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
  # True: the build runs the tune search, which chooses the stored grid and the student's crop and
  # resolution (returned in the manifest extras' "grid" and "tune"; see dc.stages.run_cell)
  searches: bool = False

  def score_name(self, config) -> str | None:
    """The scoring.SCORES name this method reads under `config` (None: it reads no scores)."""
    if self.score and "." in self.score:
      value = config
      for part in self.score.split("."):
        value = value[part]
      return str(value)
    return self.score

  def fits(self, smallest_class: int, per_class: int) -> bool:
    return not self.distinct_images or per_class <= smallest_class

  def grids_for(self, bench, combine_grid) -> list[tuple[int, int]]:
    if self.grids == "sweep":
      return [tuple(int(x) for x in g) for g in bench.grids]
    if self.grids == "combine":
      return [tuple(int(x) for x in combine_grid)]
    if self.grids == "rded":
      return [(int(bench.rded_factor), int(bench.rded_factor))]
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
  """A set of the easiest / hardest images by `score`; ties in score are broken by a draw seeded
  from config.seed, the score and the mode (the same for every method ranking this way, so pca at
  1x1 keeps el2n_easy's images)."""
  def build(run, ctx, per_class, grid, seed):
    import jax
    from pca_jax.selection import select_per_class
    key = jax.random.key(rng.derive_seed(run.config.seed, "ties", score, mode))
    idx = select_per_class(ctx.scores(score), run.train_source.labels, per_class, mode, key=key,
                           num_classes=run.train_source.num_classes)
    return _from_indices(run, idx, grid)
  return build


def _rded(run, ctx, per_class, grid, seed):
  from pca_jax.dc import rded
  return rded.build_rded(run, ctx.teacher(), per_class // (grid[0] * grid[1]), grid[0], seed)


def _noise(run, ctx, per_class, grid, seed):
  from pca_jax.dc import synthesis
  return synthesis.build_noise(run, per_class, seed)


def _synthetic(cda: bool) -> Callable:
  def build(run, ctx, per_class, grid, seed):
    from pca_jax.dc import synthesis
    return synthesis.build_synthetic(run, ctx.teacher(), per_class, seed, cda)
  return build


_SYNTHESIS_FIELDS = ("benchmark.synthesis",)
_TIES = ("seed",)   # the ranking's ties are broken by a draw seeded from config.seed


METHODS: dict[str, Method] = {
    "random": Method("random", _random, seeded=True),
    **{f"{score}_{mode}": Method(f"{score}_{mode}", _pruned(score, mode), score=score,
                                 fields=_TIES)
       for score in scoring.SCORES for mode in ("easy", "hard")},
    "sre2l": Method("sre2l", _synthetic(cda=False), teacher=True, seeded=True,
                    distinct_images=False, fields=_SYNTHESIS_FIELDS),
    "cda": Method("cda", _synthetic(cda=True), teacher=True, seeded=True, distinct_images=False,
                  fields=_SYNTHESIS_FIELDS),
    "noise": Method("noise", _noise, seeded=True, distinct_images=False),
    "rded": Method("rded", _rded, grids="rded", teacher=True, seeded=True,
                   fields=("benchmark.rded_mipc", "benchmark.rded_num_crop",
                           "benchmark.rded_factor")),
    "pca": Method("pca", _pruned("el2n", "easy"), grids="sweep", crop="patch", score="el2n",
                  fields=_TIES),
}


def _ccs(run, ctx, per_class, grid, seed):
  import jax
  from pca_jax.selection import ccs_per_class
  bench = run.config.benchmark
  key = jax.random.key(rng.derive_seed(run.config.seed, "ccs set", seed))
  idx = ccs_per_class(ctx.scores(bench.ccs_score), run.train_source.labels, per_class, key,
                      beta=bench.ccs_beta, strata=bench.ccs_strata,
                      num_classes=run.train_source.num_classes)
  return _from_indices(run, idx, grid)


# CCS and the paper's "PCA with different pruning methods": the prune step by another score
# (easiest first) or by CCS, then PCA's combine (config.combine.grid) and patch-constrained crops.
# `pca` itself (easiest EL2N) keeps the grid sweep. A separate block from the literal above.
_CCS_FIELDS = ("benchmark.ccs_score", "benchmark.ccs_beta", "benchmark.ccs_strata")
METHODS.update({
    "ccs": Method("ccs", _ccs, score="benchmark.ccs_score", seeded=True, fields=_CCS_FIELDS),
    **{f"pca_{score}": Method(f"pca_{score}", _pruned(score, "easy"), grids="combine",
                              crop="patch", score=score, fields=_TIES)
       for score in ("entropy", "forgetting", "aum")},
    "pca_ccs": Method("pca_ccs", _ccs, grids="combine", crop="patch", score="benchmark.ccs_score",
                      seeded=True, fields=_CCS_FIELDS),
})


def _auto(run, ctx, per_class, grid, seed):
  from pca_jax.pca.tune import build_auto_set
  return build_auto_set(run, ctx.scores("el2n"), per_class // (grid[0] * grid[1]), seed)


# The paper's ablation (Table 7: what each of P, C, A adds; P + A alone is `pca` at 1x1) and PCA
# with its settings chosen per dataset. pca_auto's set depends on everything its search reads.
AUTO_FIELDS = ("tune", "select.order", "train", "model", "data.eval_crop_fraction")
METHODS.update({
    "combine_random": Method("combine_random", _random, grids="combine", crop="patch",
                             seeded=True),
    "pca_rrc": Method("pca_rrc", _pruned("el2n", "easy"), grids="combine", crop="rrc",
                      score="el2n", fields=_TIES),
    "pca_auto": Method("pca_auto", _auto, crop="patch", score="el2n", seeded=True,
                       fields=AUTO_FIELDS, searches=True),
})

