"""`validate(config)`: every config block checked before anything runs, no data read.

Each block's checks live beside the code that owns it; this module, above all of them, only
composes them (the CLI calls it before any backend starts or any file is written):

  data         pca_jax.data.load.check_data_block
  model        pca_jax.models.registry.check_model_block, check_model_views
  score        pca_jax.pca.score.check_score_block
  select       pca_jax.selection.check_select_block
  combine      pca_jax.combine.check_combine_block
  train, score.train, benchmark.teacher
               pca_jax.training.checks.check_training_blocks
  tune         pca_jax.pca.tune.check_tune_block (runs that search)
  benchmark    pca_jax.dc.plan.check_benchmark_block (runs with the benchmark stage)
  rehearse, rehearsal, plan
               pca_jax.rehearsal.check_rehearsal_block
  log          pca_jax.tracking.check_log_block

Checks that need the data (class sizes against the budget, external sets) are the stages' own
`check` functions, which the runner calls once the datasets are open.
"""

from __future__ import annotations

from pca_jax.combine import check_combine_block
from pca_jax.config import parse_stages, uses_tune
from pca_jax.data.load import check_data_block
from pca_jax.dc.plan import check_benchmark_block
from pca_jax.models.registry import check_model_block, check_model_views
from pca_jax.pca.score import check_score_block
from pca_jax.pca.tune import check_tune_block
from pca_jax.rehearsal import check_rehearsal_block
from pca_jax.selection import check_select_block
from pca_jax.tracking import check_log_block
from pca_jax.training.checks import check_training_blocks


def validate(config) -> None:
  """Raises ValueError naming the field for anything that cannot work (no data is read here)."""
  stages = parse_stages(config.stages)
  check_data_block(config.data)
  check_model_block(config.model)
  check_score_block(config.score)
  check_select_block(config)
  check_combine_block(config)
  check_training_blocks(config)
  check_model_views(config)
  if uses_tune(config):
    check_tune_block(config)
  if "benchmark" in stages:
    check_benchmark_block(config)
  check_rehearsal_block(config)
  check_log_block(config)
