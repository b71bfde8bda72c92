"""The checks of a training config block (default_train_config): the PCA student (`train`), the
scoring models (`score.train`) and the teacher (`benchmark.teacher`) all train through one loop,
so one function checks the three blocks, with the field's full name in every message."""

from __future__ import annotations

from typing import Any

from pca_jax.augment import CROP_KINDS
from pca_jax.config import (check_choice, check_number, check_positive_int, check_prefetch_mb,
                            check_unit_interval_pair)
from pca_jax.training.feeds import SHARD_SET_CHOICES
from pca_jax.training.steps import LABEL_MODES, OPTIMIZERS, SCHEDULE_UNITS, SCHEDULES
from pca_jax.training.views import RESOLUTIONS, view_sizes

_POSITIVE_INTS = ("epochs", "batch_size", "eval_batch_size", "log_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints", "prefetch", "base_batch_size")
_NUMBERS = (("weight_decay", lambda v: v >= 0, ">= 0"),
            ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("warmup_epochs", lambda v: v >= 0, ">= 0"),
            ("cutmix_alpha", lambda v: v >= 0, ">= 0"),
            ("max_steps", lambda v: v >= 0, ">= 0 (0 = no limit)"),
            ("temperature", lambda v: v > 0, "> 0"))


def check_train_block(name: str, tc: Any, full_dataset: bool) -> None:
  """A training block `name` ("train", "score.train", "benchmark.teacher"): every number in
  range, every choice known. full_dataset: it trains on a full split (no mosaics to crop in)."""
  check_prefetch_mb(name, tc.get("prefetch_mb", 1024))
  check_choice(f"{name}.crop", tc.crop, CROP_KINDS)
  if full_dataset and tc.crop == "patch":
    raise ValueError(f"{name}.crop='patch' crops inside mosaic cells, but {name} trains on the full "
                     "dataset; use rrc or none")
  for field in _POSITIVE_INTS:
    check_positive_int(f"{name}.{field}", tc[field])
  check_number(f"{name}.lr", tc.lr, lambda v: v > 0, "a positive number")
  for field, ok, allowed in _NUMBERS:
    check_number(f"{name}.{field}", tc[field], ok, allowed)
  check_choice(f"{name}.optimizer", tc.optimizer, OPTIMIZERS)
  check_choice(f"{name}.schedule", tc.schedule, SCHEDULES)
  check_choice(f"{name}.schedule_unit", tc.schedule_unit, SCHEDULE_UNITS)
  check_choice(f"{name}.label_mode", tc.label_mode, LABEL_MODES)
  check_choice(f"{name}.shard_set", tc.get("shard_set", "auto"), SHARD_SET_CHOICES)
  check_choice(f"{name}.resolution", tc.resolution, RESOLUTIONS)
  check_unit_interval_pair(f"{name}.crop_scale", tc.crop_scale)
  ratio = tuple(tc.crop_ratio)
  if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"{name}.crop_ratio must satisfy 0 < min <= max, got {ratio}")


def check_student_resolution(config) -> None:
  """train.resolution other than "full" needs cells the grid and image size allow."""
  if config.train.resolution == "full":
    return
  grid, size = tuple(config.combine.grid), config.data.image_size
  probe = config.train.copy_and_resolve_references()
  probe.image_size, probe.grid = size, grid
  try:
    view_sizes(probe)
  except ValueError as e:
    raise ValueError(f"{e} (combine.grid={grid}, data.image_size={size})") from None


def check_training_blocks(config) -> None:
  """The student's, the scoring models' and the teacher's blocks, and the student's views."""
  for name, tc, full_dataset in (("train", config.train, False),
                                 ("score.train", config.score.train, True),
                                 ("benchmark.teacher", config.benchmark.teacher, True)):
    check_train_block(name, tc, full_dataset)
  check_student_resolution(config)
