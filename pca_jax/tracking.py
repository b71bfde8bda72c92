"""Experiment tracking: TensorBoard event files beside every metrics.jsonl, optionally W&B.

Every training run (scoring models, teacher, PCA student, benchmark cells, tune candidates)
mirrors the rows of its metrics.jsonl into TensorBoard event files under <its dir>/tensorboard/:
train/loss, train/acc, train/lr, train/img_per_s at each logged step (models trained together:
train/loss_model_<k>, train/acc_model_<k> as well), eval/top1, eval/top5 at each evaluation. The
step is the optimizer step. `tensorboard --logdir <workdir>` shows every run of a pipeline or a
benchmark side by side; a benchmark cell adds benchmark/top1 and benchmark/best_top1 with its
method, IPC, label mode, grid and seed as hparams (the HPARAMS tab compares cells).

The writer is tensorboardX: it writes TensorBoard's event format without TensorFlow (tensorboard
itself is needed only to read), in a background thread (a row is queued in microseconds; see
docs/scale.md for the measured cost). Process 0 writes; the others write nothing. A gs:// run
directory gets the same files: they are written to a local staging folder and copied into the run
directory when the run ends or is preempted (object stores cannot append). A resumed run purges
the steps after its checkpoint (TensorBoard's purge_step), so its curves are those of one run.

config.log.wandb_project = "name" mirrors the same scalars to Weights & Biases (the optional
`wandb` package; WANDB_MODE=offline keeps the runs on disk under <its dir>/wandb). One W&B run
per training run, named after it (a benchmark cell: its cell id).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from pca_jax import fs

TB_DIR = "tensorboard"
# metrics.jsonl keys that are positions, not scalars
_POSITION = ("step", "epoch")


def scalars_of(row: dict) -> dict[str, float]:
  """The TensorBoard tags and values of one metrics.jsonl row (see the module docstring)."""
  out = {}
  for key, value in row.items():
    if key in _POSITION:
      continue
    if key.startswith("eval_"):
      tag = f"eval/{key[len('eval_'):]}"
    else:
      tag = f"train/{key}"
    if isinstance(value, (list, tuple)):  # loss_per_model -> train/loss_model_<k>
      base = tag[:-len("_per_model")] if tag.endswith("_per_model") else tag
      out.update({f"{base}_model_{k}": float(v) for k, v in enumerate(value)})
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[tag] = float(value)
  return out


def check_log_block(config) -> None:
  """config.log: tensorboard (a bool) and wandb_project (a string; wandb installed when set)."""
  log = config.log
  if not isinstance(log.tensorboard, bool):
    raise ValueError(f"log.tensorboard must be True or False, got {log.tensorboard!r}")
  if not isinstance(log.wandb_project, str):
    raise ValueError(f"log.wandb_project must be a string, got {log.wandb_project!r}")
  if log.wandb_project:
    import importlib.util
    if importlib.util.find_spec("wandb") is None:
      raise ValueError(f"log.wandb_project={log.wandb_project!r} needs the wandb package: pip "
                       "install wandb (or leave log.wandb_project empty)")


class Tracker:
  """The TensorBoard writer (and W&B run) of one training run's directory; inactive off process 0
  and when config.log turns both off."""

  def __init__(self, workdir: fs.PathLike, log_config: Any, *, name: str, resume_step: int = 0):
    self.workdir = fs.path(workdir)
    self._tb = self._wandb = self._staging = None
    if not fs.is_writer() or log_config is None:
      return
    if log_config.get("tensorboard", True):
      from tensorboardX import SummaryWriter
      target = self.workdir / TB_DIR
      if fs.is_remote(self.workdir):  # new event files are added beside any earlier ones
        self._staging = tempfile.mkdtemp(prefix="pca_jax_tb_")
        logdir = self._staging
      else:
        logdir = str(target)
      # Rows up to resume_step are kept (as in metrics.jsonl): TensorBoard drops the steps >=
      # purge_step. Each writer has a file name of its own, in creation order: two writers of one
      # directory within a second (a cell's training run, then its result) would otherwise write
      # the same file, and TensorBoard reads a directory's files in name order.
      self._tb = SummaryWriter(logdir=logdir, purge_step=resume_step + 1 if resume_step else None,
                               flush_secs=30,
                               filename_suffix=f".{time.time_ns()}")
    if log_config.get("wandb_project", ""):
      import wandb
      self._wandb = wandb.init(project=log_config.wandb_project, name=name,
                               dir=str(self.workdir) if not fs.is_remote(self.workdir) else None,
                               reinit="create_new")

  @property
  def active(self) -> bool:
    return self._tb is not None or self._wandb is not None

  def row(self, row: dict) -> None:
    """Mirrors one metrics.jsonl row at its step."""
    if not self.active:
      return
    step, values = int(row["step"]), scalars_of(row)
    if self._tb is not None:
      for tag, value in values.items():
        self._tb.add_scalar(tag, value, step)
    if self._wandb is not None:
      self._wandb.log(values, step=step)

  def result(self, hparams: dict, metrics: dict[str, float], step: int) -> None:
    """A benchmark cell's result: metrics (benchmark/top1, ...) as scalars at `step` and, with
    `hparams`, one session of TensorBoard's HPARAMS tab."""
    if self._tb is not None:
      self._tb.add_hparams({k: (v if isinstance(v, (bool, int, float)) else str(v))
                            for k, v in hparams.items()}, dict(metrics), name="hparams",
                           global_step=step)
      for tag, value in metrics.items():
        self._tb.add_scalar(tag, float(value), step)
    if self._wandb is not None:
      self._wandb.config.update(hparams, allow_val_change=True)
      self._wandb.summary.update(metrics)

  def close(self) -> None:
    """Flushes the event files (into the run directory, for a gs:// one) and ends the W&B run."""
    if self._tb is not None:
      self._tb.close()
      if self._staging is not None:
        fs.upload_tree(self._staging, self.workdir / TB_DIR)
        shutil.rmtree(self._staging, ignore_errors=True)
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None
