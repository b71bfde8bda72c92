"""The context every stage runs in: the config, the run directory, and the datasets (opened once)."""

from __future__ import annotations

import copy
from typing import Any, Callable

import ml_collections

from pca_jax import fs


def log_main(msg: str) -> None:
  """Prints from process 0 only (every process, prefixed, with --log_all_processes)."""
  import jax
  from pca_jax.parallel import should_log
  if should_log():
    print(msg if jax.process_index() == 0 else f"[process {jax.process_index()}] {msg}",
          flush=True)


class Run:
  """A run directory with its config and lazily opened train / eval sources."""

  def __init__(self, config: Any, workdir: fs.PathLike, log: Callable[[str], None] = log_main):
    self.config, self.workdir, self.log = config, fs.path(workdir), log
    self._train_source = self._eval_source = None

  @property
  def train_source(self):
    if self._train_source is None:
      from pca_jax.data.load import load_source
      self._train_source = load_source(self.config.data, self.config.data.train_split)
      skipped = getattr(self._train_source, "skipped", [])
      if skipped:
        self.log(f"[data] skipped {len(skipped)} unreadable files (first: {skipped[0]})")
    return self._train_source

  @property
  def eval_source(self):
    """The eval split, whose classes are checked against the train split's (same names, same
    order: its labels are compared with predictions of models trained on the train split)."""
    if self._eval_source is None:
      from pca_jax.data.load import (check_same_classes, load_source, match_eval_classes,
                                     split_class_names)
      data = self.config.data
      source = load_source(data, data.eval_split)
      train_names = (self._train_source.class_names if self._train_source is not None else
                     split_class_names(data, data.train_split))
      match_eval_classes(source, train_names)
      check_same_classes(train_names, source.class_names, data.train_split, data.eval_split)
      self._eval_source = source
    return self._eval_source

  def barrier(self, tag: str) -> None:
    """Every process waits here until all arrive (a no-op in a single-process run)."""
    from pca_jax.parallel import barrier
    barrier(tag)

  def path(self, *parts) -> fs.Path:
    return self.workdir.joinpath(*parts)

  def require(self, name: str, stage: str) -> fs.Path:
    p = self.path(name)
    if not p.exists():
      raise ValueError(f"{p} is missing; run the {stage} stage first (add it to --config.stages)")
    return p

  def trainer_config(self, train_cfg: Any, seed: int) -> ml_collections.ConfigDict:
    """The config `training.train` takes: this run's model and data, `train_cfg` with its seed
    (derive it with pca_jax.rng.derive_seed: one per model) and the stored image size."""
    c = ml_collections.ConfigDict()
    c.model = copy.deepcopy(self.config.model)
    c.data = copy.deepcopy(self.config.data)
    c.train = copy.deepcopy(train_cfg)
    c.train.seed = int(seed)
    c.train.image_size = self.config.data.image_size
    c.train.num_threads = self.config.data.num_threads
    c.train.prefetch_mb = self.config.data.prefetch_mb
    if "log" in self.config:  # TensorBoard / W&B (pca_jax.tracking)
      c.log = copy.deepcopy(self.config.log)
    return c
