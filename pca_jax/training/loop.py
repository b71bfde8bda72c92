"""The one training loop of pca_jax: scoring models, the teacher, PCA's student, benchmark cells.

Data parallel over a ("data",) mesh: params replicated, batch sharded, one jit-compiled step
(training.steps). Where the batches come from is the feed's business (training.feeds); this module
composes model, optimizer, checkpoints, metrics, periodic evaluation and preemption around it.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import signal
import threading
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from pca_jax import augment, fs, parallel, rng
from pca_jax.config import config_values, fingerprint as config_fingerprint
from pca_jax.models.registry import model_from_config
from pca_jax.tracking import Tracker
from pca_jax.training.checkpoint import Checkpointer
from pca_jax.training.evaluate import evaluate, make_eval_step
from pca_jax.training.feeds import InMemoryData, make_feed
from pca_jax.training.metrics import MetricsLog, Progress, Throughput
from pca_jax.training.steps import (LABEL_MODES, LossSpec, create_train_state,
                                    create_train_states, make_optimizer, make_train_step,
                                    variables_of)
from pca_jax.training.views import view_sizes


class Preempted(SystemExit):
  """Raised after SIGTERM once a checkpoint has been written."""


def data_digest(train_data: Any) -> str:
  """A cheap identity of the training data for the default fingerprint: labels, size, and a
  strided sample of the images (in-memory sets) or the source's name (full datasets)."""
  labels = np.asarray(train_data.labels)
  h = hashlib.sha256(labels.tobytes())
  h.update(str((len(labels), train_data.num_classes)).encode())
  if isinstance(train_data, InMemoryData):
    images = np.asarray(train_data.images)
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images[::max(1, len(images) // 64)]).tobytes())
  else:
    h.update(str(getattr(train_data, "name", type(train_data).__name__)).encode())
  return h.hexdigest()[:16]


def default_fingerprint(config: Any, train_data: Any,
                        model_seeds: Sequence[int] | None = None) -> str:
  """What a checkpoint of `train(config, ...)` depends on, when the caller gives no fingerprint:
  the model and train blocks (minus max_steps, a stopping point of the same run), the data, and
  the seeds of models trained together."""
  values = config_values(config, ("model", "train"))
  values.pop("train.max_steps", None)
  if model_seeds is None:
    return config_fingerprint(values, data_digest(train_data))
  return config_fingerprint(values, data_digest(train_data), [int(s) for s in model_seeds])


# Steps the host may dispatch ahead of the device: after dispatching step s the loop waits for
# step s - RUN_AHEAD to finish. Unbounded, a loop that only blocks at log steps ran up to
# log_every_steps ahead, and a SIGTERM seen at dispatch time waited for all of them before its
# checkpoint (70 s on a busy CPU); two keep an accelerator fed while the host prepares the next.
RUN_AHEAD = 2

# Every training step of every loop in this process, in order: the step ids of JAX's preemption
# sync points must agree across processes, and every process runs the same loops and steps.
_SYNC_STEP = itertools.count()


class PreemptionWatch:
  """Whether every process should stop at this step, checkpoint together and exit (SIGTERM).

  One process: a SIGTERM handler (main thread) sets a flag while the loop runs. Several
  processes (jax.distributed): JAX's preemption sync manager, which jax.distributed.initialize
  installs, catches SIGTERM on any process (or all, as on a TPU maintenance event), tells the
  others through the coordination service, and `reached_preemption_sync_point` turns True at
  the same step on every process, so they stop at the same step and enter one collective save.
  A SIGTERM outside a training loop is acted on at the next training step (one process: the
  default action, the process ends and the unfinished stage resumes on rerun).
  """

  def __init__(self):
    self.multi = jax.process_count() > 1
    self.signalled = False
    self._previous = None

  def __enter__(self) -> "PreemptionWatch":
    if not self.multi and threading.current_thread() is threading.main_thread():
      def on_term(signum, frame):
        self.signalled = True
      self._previous = signal.signal(signal.SIGTERM, on_term)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self) -> bool:
    """Called once per training step by every process."""
    if self.multi:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(next(_SYNC_STEP))
    return self.signalled


def loss_spec(cfg: Any, num_classes: int, teacher, weighted_batch_stats: bool = False) -> LossSpec:
  """The loss of cfg.label_mode (a teacher is required for soft labels); weighted_batch_stats:
  the feed pads batches with weight-0 examples that BatchNorm must not count."""
  if cfg.label_mode not in LABEL_MODES:
    raise ValueError(f"unknown train.label_mode {cfg.label_mode!r}; choose one of {LABEL_MODES}")
  if cfg.label_mode == "soft" and teacher is None:
    raise ValueError("train.label_mode='soft' needs a teacher (the benchmark's teacher stage)")
  soft = cfg.label_mode == "soft"
  return LossSpec(num_classes, cfg.label_smoothing, teacher[0] if soft else None, cfg.temperature,
                  cfg.cutmix_alpha if soft else 0.0, teacher_size=cfg.image_size,
                  weighted_batch_stats=weighted_batch_stats)


def _build_step(cfg: Any, feed: Any, view_size: int, spec: LossSpec, mesh,
                model_seeds: Sequence[int] | None, model_axis: str):
  """The jitted step: the feed's gather, the device crop at view_size, the loss of `spec`; with
  model_seeds, one step for the stacked models, each with the augment stream of its own seed."""
  augment_fn = augment.make_train_augment(feed.device_crop, (view_size, view_size),
                                          tuple(cfg.grid), tuple(cfg.crop_scale),
                                          tuple(cfg.crop_ratio), cfg.flip)
  if model_seeds is None:
    return make_train_step(augment_fn, spec, rng.stream_key(cfg.seed, "augment"), mesh,
                           feed.gather)
  keys = jax.numpy.stack([rng.stream_key(s, "augment") for s in model_seeds])
  return make_train_step(augment_fn, spec, keys, mesh, feed.gather, model_axis)


def _initial_state(model, tx, cfg: Any, view_size: int, model_seeds: Sequence[int] | None):
  """A fresh TrainState from the "init" stream of cfg.seed, or the K states of model_seeds
  stacked on a leading model axis (each exactly the state a lone model of that seed starts from)."""
  shape = (view_size, view_size, 3)
  if model_seeds is None:
    return create_train_state(model, tx, rng.stream_key(cfg.seed, "init"), shape)
  return create_train_states(model, tx, [rng.stream_key(s, "init") for s in model_seeds], shape)


def _make_evaluator(config: Any, apply_fn: Callable, eval_data: Any, eval_size: int,
                    blur_size: int, mesh) -> Callable[[Any], dict] | None:
  """state -> top-1/top-5 on eval_data (one compiled step for every call); None without data."""
  if eval_data is None:
    return None
  cfg = config.train
  eval_step = make_eval_step(apply_fn, eval_size, blur_size)

  def run(state) -> dict:
    return evaluate(variables_of(state), eval_data, apply_fn, eval_size=eval_size,
                    blur_size=blur_size, crop_fraction=config.data.get("eval_crop_fraction", 1.0),
                    batch_size=cfg.eval_batch_size, num_threads=cfg.num_threads, mesh=mesh,
                    eval_step=eval_step)
  return run


class _TrainLoop:
  """One call of `train`: the pieces it composes (feed, step, checkpoints, metrics, evaluation),
  set up once, then the steps from the checkpoint's step to the end."""

  def __init__(self, config: Any, workdir: fs.PathLike, train_data: Any, eval_data: Any, *,
               desc: str, teacher, log: Callable[[str], None], fingerprint: str | None,
               model_seeds: Sequence[int] | None, model_axis: str, expected_start: int,
               save_final: bool = True):
    cfg = self.cfg = config.train
    self.save_final = save_final
    self.desc, self.log, self.model_seeds = desc, log, model_seeds
    mesh = parallel.make_mesh()
    workdir = fs.path(workdir)
    if fs.is_writer():
      workdir.mkdir(parents=True, exist_ok=True)
    feed = self.feed = make_feed(train_data, cfg, mesh, crop_on_device=model_seeds is not None)
    self.total = feed.steps_per_epoch * cfg.epochs
    if cfg.max_steps:
      self.total = min(self.total, cfg.max_steps)
    model = model_from_config(config.model, train_data.num_classes)
    tx, self.schedule = make_optimizer(cfg, feed.steps_per_epoch)
    view_size, eval_size, blur_size = view_sizes(cfg)
    spec = loss_spec(cfg, train_data.num_classes, teacher, weighted_batch_stats=feed.pads)
    state = parallel.replicate(_initial_state(model, tx, cfg, view_size, model_seeds), mesh)
    self.ckpt = Checkpointer(workdir, fingerprint or default_fingerprint(config, train_data,
                                                                         model_seeds),
                             cfg.keep_checkpoints, log, desc)
    self.state, self.start = self.ckpt.restore(state, mesh)
    if self.start and self.start != expected_start:
      log(f"[{desc}] resumed from checkpoint at step {self.start}/{self.total}")
    self.history = MetricsLog(workdir / "metrics.jsonl", self.start)
    self.teacher_vars = parallel.replicate(teacher[1], mesh) if spec.teacher_apply else None
    self.step_fn = _build_step(cfg, feed, view_size, spec, mesh, model_seeds, model_axis)
    self.run_eval = _make_evaluator(config, model.apply, eval_data, eval_size, blur_size, mesh)
    self.eval_every = cfg.eval_every_epochs * feed.steps_per_epoch if cfg.eval_every_epochs else 0
    self.last = self.history.last_train_row() if self.start else {}
    self.meter = Throughput()
    # last: train() closes it whatever happens after __init__
    self.tracker = Tracker(workdir, config.get("log"), name=desc, resume_step=self.start)

  def log_train_row(self, step: int, metrics: dict) -> None:
    """The row of a log step: loss, acc (means over models trained together), lr, img/s."""
    m = jax.device_get(metrics)
    self.last = {"loss": float(np.mean(m["loss"])), "acc": float(np.mean(m["acc"])),
                 "lr": float(self.schedule(step)), "img_per_s": self.meter.lap()}
    if self.model_seeds is not None:
      self.last.update(loss_per_model=np.asarray(m["loss"]).tolist(),
                       acc_per_model=np.asarray(m["acc"]).tolist())
    self._append({"step": step + 1, "epoch": (step + 1) / self.feed.steps_per_epoch,
                  **self.last})

  def _append(self, row: dict) -> None:
    """One row of metrics.jsonl, mirrored to TensorBoard / W&B."""
    self.history.append(row)
    self.tracker.row(row)

  def log_eval(self, done: int, ev: dict) -> None:
    self._append({"step": done, "epoch": done / self.feed.steps_per_epoch,
                  **{f"eval_{k}": v for k, v in ev.items()}})

  def periodic_eval(self, done: int) -> None:
    if self.run_eval and self.eval_every and done % self.eval_every == 0 and done != self.total:
      with self.meter.paused(block_on=self.state):
        ev = self.run_eval(self.state)
      self.log_eval(done, ev)
      self.log(f"[{self.desc}] epoch {done // self.feed.steps_per_epoch}: eval top1 "
               f"{ev['top1']:.2f}% top5 {ev['top5']:.2f}%")

  def run(self) -> None:
    """The steps start .. total, with logging, periodic evaluations, checkpoints and SIGTERM."""
    cfg, total = self.cfg, self.total
    t_start = time.time()
    progress = Progress(total, self.start, self.desc)
    if self.start < total:  # a checkpoint at the end (a stage in pieces): nothing to decode
      self.feed.open(self.start)
    in_flight: collections.deque = collections.deque()
    try:
      with PreemptionWatch() as watch:
        for step in range(self.start, total):
          self.state, m = self.step_fn(self.state, self.feed.args(step), self.teacher_vars)
          in_flight.append(m["loss"])
          if len(in_flight) > RUN_AHEAD:
            jax.block_until_ready(in_flight.popleft())
          done = step + 1
          self.meter.add(self.feed.batch)
          is_log = done % cfg.log_every_steps == 0 or done == total
          if is_log:
            self.log_train_row(step, m)
          progress.update(done, 1, {k: self.last[k] for k in ("loss", "acc")} if self.last
                          else {}, is_log)
          self.periodic_eval(done)
          preempted = watch.reached()
          if (done % cfg.checkpoint_every_steps == 0 and done != total) or preempted:
            with self.meter.paused(block_on=self.state):
              self.ckpt.save(done, self.state)
          if preempted:
            raise Preempted(f"[{self.desc}] received SIGTERM: checkpoint saved at step "
                            f"{done}/{total}; rerun the same command to resume")
        if self.save_final:
          self.ckpt.save(total, self.state)
      self.wall_s = time.time() - t_start
    finally:
      progress.close()
      self.feed.close()
      self.ckpt.close()

  def metrics(self) -> dict:
    last, per_model = self.last, self.model_seeds is not None
    return {"steps": self.total, "steps_per_epoch": self.feed.steps_per_epoch,
            "batch_size": self.feed.batch, "train_loss": last.get("loss"),
            "train_acc": last.get("acc"),
            **({"train_loss_per_model": last.get("loss_per_model"),
                "train_acc_per_model": last.get("acc_per_model")} if per_model else {}),
            "train_img_per_s": self.meter.rate, "train_wall_s": self.wall_s}


def train(config: Any, workdir: fs.PathLike, train_data: Any, eval_data: Any = None, *,
          desc: str = "train", final_eval: bool = True,
          teacher: tuple[Callable, Any] | None = None, log: Callable[[str], None] = print,
          fingerprint: str | None = None, model_seeds: Sequence[int] | None = None,
          model_axis: str = "vmap", expected_start: int = 0,
          save_final: bool = True) -> tuple[Any, dict]:
  """Trains config.model on train_data with config.train; returns (final state, metrics).

  train_data: InMemoryData (a compressed set, on device) or a random-access source (Grain).
  eval_data: a source for the real test/val split, evaluated every train.eval_every_epochs and,
  if final_eval, at the end. workdir receives checkpoints/, fingerprint.json and metrics.jsonl.
  A checkpoint there is resumed only if it was written under `fingerprint` (default: a hash of
  config.model, config.train and the data); any other is deleted and training starts at step 0.
  expected_start: the step a caller that trains in pieces (train.max_steps growing, e.g. epoch by
  epoch) left the checkpoint at; resuming from any other step is logged as a resume.
  save_final=False: no checkpoint of the last step (callers that keep only what they compute
  from the returned state: a benchmark cell's row, a tune candidate's score; mid-run and SIGTERM
  checkpoints are still written).
  teacher: (apply_fn(variables, normalised views) -> logits, variables), required when
  train.label_mode == "soft". Raises Preempted (a SystemExit) after SIGTERM once a checkpoint is
  written. Metrics: steps, batch size, final train loss/acc, compile-free train_img_per_s
  (evaluation and checkpoint time excluded), train_wall_s, and eval_* when evaluated.

  model_seeds: train len(model_seeds) models TOGETHER on one stream of batches (the data order of
  cfg.seed, every batch read and decoded once): model k starts from the "init" stream of
  model_seeds[k] and crops with its "augment" stream, on the device (a full dataset's host only
  resizes), in one jitted step per batch (parallel.map_models by model_axis). The returned state
  is stacked on a leading model axis (parallel.unstack_tree); loss and acc are the models' mean,
  with train_loss_per_model / train_acc_per_model. No eval_data (scoring models need none).
  """
  if model_seeds is not None and (eval_data is not None or teacher is not None):
    raise ValueError("models trained together (model_seeds) take neither eval_data nor a teacher")
  loop = _TrainLoop(config, workdir, train_data, eval_data, desc=desc, teacher=teacher, log=log,
                    fingerprint=fingerprint, model_seeds=model_seeds, model_axis=model_axis,
                    expected_start=expected_start, save_final=save_final)
  try:
    loop.run()
    metrics = loop.metrics()
    if loop.run_eval and final_eval:
      ev = loop.run_eval(loop.state)
      metrics.update({f"eval_{k}": v for k, v in ev.items()})
      loop.log_eval(loop.total, ev)
  finally:
    loop.tracker.close()
  return loop.state, metrics
