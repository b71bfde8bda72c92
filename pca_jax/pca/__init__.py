"""PCA (Prune, Combine, Augment) as stages of one run directory.

  score    K models a few epochs on the FULL train set, per-example difficulty   (pca/score.py)
  tune     (optional) grid, resolution, difficulty window chosen on a validation
           split held out of the train split                                   (pca/tune.py)
  select   class-balanced, ipc * grid cells per class, easiest first            (pca/stages.py)
           (or hardest / random / CCS: select.mode; by select.score, default score.kind)
  combine  whole selected images into grid mosaics
  store    the compressed dataset (images, labels, manifest, preview)
  train    a fresh model on the compressed set, patch-constrained crops
  eval     top-1/top-5 of the final params on the real test/val split
  report   results.json, results.md                                             (pca/report.py)

STAGES declares, for the stage runner (pca_jax.runner), what each stage depends on and writes.
When "tune" is in config.stages, the stages after it read its choice (tune.tuned_config), so they
need it: its output id enters their fingerprints and a new search reruns them.
"""

from __future__ import annotations

from pca_jax.config import EVAL_DATA, TRAIN_DATA
from pca_jax.pca import report, score, stages, tune
from pca_jax.runner import Stage


def _and_tune(*needs: str):
  """needs -> needs + ("tune",) when the run tunes (the stage reads the tuned config)."""
  return lambda config: needs + (("tune",) if tune.tuning(config) else ())


STAGES = (
    Stage("score", score.stage_score,
          fields=("seed", *TRAIN_DATA, "data.eval_crop_fraction", "model", "score"),
          owns=score.OUTPUTS, derived=score.precomputed_digest),
    Stage("tune", tune.stage_tune, fields=tune.FIELDS, needs=tune.tune_needs, owns=tune.OUTPUTS,
          derived=tune.search_train_values, check=tune.check_tune),
    Stage("select", stages.stage_select, fields=("seed", *TRAIN_DATA, "select", "combine.grid"),
          needs=stages.select_needs, owns=("selected.npy",), check=stages.check_budget,
          writer_only=True),
    Stage("combine", stages.stage_combine, fields=(*TRAIN_DATA, "combine"),
          needs=_and_tune("select"), owns=("combine",), writer_only=True),
    Stage("store", stages.stage_store, fields=("method",), needs=_and_tune("combine"),
          owns=("compressed",), writer_only=True),
    Stage("train", stages.stage_train,
          fields=("seed", "model", "train", "combine.grid", "data.image_size"),
          needs=_and_tune("store"), owns=("train", "train.json")),
    Stage("eval", stages.stage_eval, fields=EVAL_DATA, needs=_and_tune("train"),
          owns=("eval.json",)),
    Stage("report", report.stage_report, fields=("method",), uses=report.REPORTED,
          owns=("results.json", "results.md"), writer_only=True),
)
