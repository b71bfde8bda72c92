"""One trainer for every model in pca_jax: scoring pre-training, PCA evaluation, the benchmark.

Data parallel over a ("data",) mesh: params replicated, batch sharded, one jit-compiled step.
Two input modes:
  * InMemoryData: a compressed set (<= ~100k images) lives on the devices as uint8; each step
    draws its batch from an on-device per-epoch permutation (one augmented view per stored image
    per epoch) and augments inside the step with a key derived from (seed, step).
  * a random-access source (full dataset): a Grain pipeline feeds fixed-size uint8 batches; the
    same on-device augmentation runs inside the step.
Checkpoints (Orbax) hold params, batch stats, optimizer state and step; the data order is a pure
function of (seed, step), so resuming from a checkpoint replays exactly the same batches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state

from pca_jax import augment, parallel
from pca_jax.data import pipeline
from pca_jax.evaluate import eval_metrics, evaluate
from pca_jax.models.resnet import create_model


class TrainState(train_state.TrainState):
  batch_stats: Any = None


@dataclasses.dataclass
class InMemoryData:
  """A compressed set held on device: images uint8 [M, H, W, 3], labels int [M]."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int


class Preempted(SystemExit):
  """Raised after SIGTERM once a checkpoint has been written."""


def default_train_config() -> ml_collections.ConfigDict:
  """Defaults = the reference benchmark's hard-label recipe (AdamW 1e-3, wd 0.01, cosine, bs 128)."""
  c = ml_collections.ConfigDict()
  c.epochs = 300
  c.batch_size = 128
  c.optimizer = "adamw"          # "adamw" | "sgd"
  c.lr = 1e-3
  c.scale_lr_by_batch = False     # lr * batch_size / base_batch_size
  c.base_batch_size = 128
  c.weight_decay = 0.01           # conv/linear kernels only; never BN or biases
  c.momentum = 0.9
  c.nesterov = True
  c.schedule = "cosine"           # "cosine" | "step" | "constant"
  c.schedule_unit = "epoch"       # "epoch": lr changes once per epoch as in the reference code
  c.warmup_epochs = 0
  c.step_epochs = (30, 60, 90)
  c.step_gamma = 0.1
  c.label_smoothing = 0.0
  c.label_mode = "hard"           # "hard": one-hot CE; "soft": KL to a teacher on every view
  c.temperature = 20.0            # soft labels: KL(softmax(teacher/T) || softmax(student/T))
  c.cutmix_alpha = 1.0            # soft labels only (the reference soft-label config); 0 = off
  c.crop = "rrc"                  # "patch" | "rrc" | "none"
  c.grid = (1, 1)                 # mosaic grid for crop="patch"
  c.crop_scale = (0.08, 1.0)
  c.crop_ratio = (3 / 4, 4 / 3)
  c.flip = True
  c.image_size = 224              # stored image size (views are this size when resolution=full)
  c.resolution = "full"           # "full": views and eval at image_size (the paper's protocol);
                                  # "patch": views and eval at the cell size image_size / grid;
                                  # "blur": train full, eval on test images down-up resized to the cell
  c.eval_image_size = 0           # 0 = image_size
  c.eval_every_epochs = 50
  c.eval_batch_size = 256
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.log_every_steps = 50
  c.num_threads = 8
  c.num_workers = 0
  c.prefetch = 2                  # Grain input: batches read + copied to the devices ahead
  c.seed = 0
  c.max_steps = 0                 # > 0: stop after this many steps (tests, benchmarks)
  return c


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable[[Any], Any]:
  """Learning rate as a function of the step: warmup then cosine/step/constant."""
  base = cfg.lr * (cfg.batch_size / cfg.base_batch_size if cfg.scale_lr_by_batch else 1.0)
  total_epochs = float(cfg.epochs)
  warm = float(cfg.warmup_epochs)
  if cfg.schedule not in ("cosine", "step", "constant"):
    raise ValueError(f"unknown train.schedule {cfg.schedule!r}; use cosine, step or constant")
  if cfg.schedule_unit not in ("epoch", "step"):
    raise ValueError(f"unknown train.schedule_unit {cfg.schedule_unit!r}; use epoch or step")

  def schedule(step):
    epoch = step / steps_per_epoch
    if cfg.schedule_unit == "epoch":
      epoch = jnp.floor(epoch)
    warm_factor = jnp.minimum(1.0, (epoch + 1.0) / warm) if warm > 0 else 1.0
    if cfg.schedule == "cosine":
      t = jnp.clip((epoch - warm) / max(total_epochs - warm, 1.0), 0.0, 1.0)
      factor = 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    elif cfg.schedule == "step":
      factor = cfg.step_gamma ** jnp.sum(epoch >= jnp.asarray(cfg.step_epochs, jnp.float32))
    else:
      factor = 1.0
    return base * warm_factor * factor
  return schedule


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int):
  schedule = make_schedule(cfg, steps_per_epoch)
  if cfg.optimizer == "adamw":
    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_decay_mask)
  elif cfg.optimizer == "sgd":
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
                     optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov))
  else:
    raise ValueError(f"unknown train.optimizer {cfg.optimizer!r}; use adamw or sgd")
  return tx, schedule


def create_train_state(model, tx, key: jax.Array, image_shape) -> TrainState:
  """Initialises params/batch stats with a dummy batch of one image of image_shape [H, W, C]."""
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *image_shape)), train=False))(key)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats"))


def variables_of(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """How the step turns views into a loss: hard labels, or a teacher's soft labels per view."""
  num_classes: int
  label_smoothing: float = 0.0
  teacher_apply: Callable | None = None   # (variables, views) -> logits, eval mode
  temperature: float = 20.0
  cutmix_alpha: float = 0.0
  teacher_size: int = 0                   # > 0: views are resized to this size for the teacher


def _train_update(state: TrainState, views, labels, weights, spec: LossSpec, teacher_vars, key):
  """One SGD/AdamW update on normalised views; weights mask padded examples out of the loss.

  Soft mode (spec.teacher_apply set): optional CutMix of the views, then the loss is the
  batch-mean KL(softmax(teacher/T) || softmax(student/T)) computed on the very same views (soft
  labels on the fly, as in the SRe2L/RDED evaluation protocol; no T^2 factor, as in their code).
  """
  if spec.teacher_apply is None:
    targets = jax.nn.one_hot(labels, spec.num_classes)
    if spec.label_smoothing:
      targets = optax.smooth_labels(targets, spec.label_smoothing)
  else:
    if spec.cutmix_alpha:
      views = augment.cutmix(key, views, spec.cutmix_alpha)
    teacher_views = views
    if spec.teacher_size and views.shape[1:3] != (spec.teacher_size, spec.teacher_size):
      # e.g. resolution="patch": the teacher labels the view at the resolution it was trained at
      teacher_views = augment.center_resize(views, (spec.teacher_size, spec.teacher_size))
    teacher_logits = jax.lax.stop_gradient(spec.teacher_apply(teacher_vars, teacher_views))
    targets = jax.nn.softmax(teacher_logits / spec.temperature, axis=-1)

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, views,
                                     train=True, mutable=["batch_stats"])
    if spec.teacher_apply is None:
      per_example = optax.softmax_cross_entropy(logits, targets)
    else:
      logp = jax.nn.log_softmax(logits / spec.temperature, axis=-1)
      per_example = jnp.sum(targets * (jnp.log(jnp.maximum(targets, 1e-12)) - logp), axis=-1)
    loss = jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  acc = jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  return state, {"loss": loss, "acc": acc}


def make_train_step(augment_fn, spec: LossSpec, seed: int, mesh):
  """jit(state, images uint8 [B,...], labels [B], teacher_vars) -> (state, metrics).

  The augmentation key is fold_in(seed, step): the step is a pure function of (state, batch).
  """
  base = jax.random.key(seed)
  shard = parallel.batch_sharding(mesh)

  def step(state, images, labels, teacher_vars=None):
    key = jax.random.fold_in(base, state.step)
    k_aug, k_mix = jax.random.split(key)
    views = jax.lax.with_sharding_constraint(augment_fn(k_aug, images), shard)
    return _train_update(state, views, labels, jnp.ones(labels.shape, jnp.float32), spec,
                         teacher_vars, k_mix)
  return jax.jit(step, donate_argnums=(0,))


def make_memory_train_step(augment_fn, spec: LossSpec, seed: int, num_images: int, batch: int,
                           steps_per_epoch: int, mesh):
  """jit(state, all_images, all_labels, teacher_vars) -> (state, metrics), on-device data.

  Epoch e visits permutation(fold_in(seed_data, e)) of the set in `steps_per_epoch` batches; the
  last batch of an epoch is completed with other random images that are masked out of the loss,
  so every stored image gives exactly one augmented view per epoch.
  """
  base = jax.random.key(seed)
  data_key = jax.random.fold_in(base, 1 << 30)
  shard = parallel.batch_sharding(mesh)

  def step(state, all_images, all_labels, teacher_vars=None):
    epoch, j = jnp.divmod(state.step, steps_per_epoch)
    ekey = jax.random.fold_in(data_key, epoch)
    perm = jax.random.permutation(ekey, num_images)
    pos = j * batch + jnp.arange(batch)
    valid = pos < num_images
    filler = jax.random.randint(jax.random.fold_in(ekey, j), (batch,), 0, num_images)
    idx = jax.lax.with_sharding_constraint(jnp.where(valid, perm[jnp.minimum(pos, num_images - 1)],
                                                     filler), shard)
    images, labels = all_images[idx], all_labels[idx]
    key = jax.random.fold_in(base, state.step)
    k_aug, k_mix = jax.random.split(key)
    views = jax.lax.with_sharding_constraint(augment_fn(k_aug, images), shard)
    return _train_update(state, views, labels, valid.astype(jnp.float32), spec, teacher_vars,
                         k_mix)
  return jax.jit(step, donate_argnums=(0,))


RESOLUTIONS = ("full", "patch", "blur")


def view_sizes(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(training view size, eval image size, blur size or 0) for cfg.resolution and cfg.grid."""
  if cfg.resolution not in RESOLUTIONS:
    raise ValueError(f"unknown train.resolution {cfg.resolution!r}; choose one of {RESOLUTIONS}")
  full = cfg.image_size
  rows, cols = int(cfg.grid[0]), int(cfg.grid[1])
  if cfg.resolution == "full":
    return full, cfg.eval_image_size or full, 0
  if rows != cols:
    raise ValueError(f"train.resolution={cfg.resolution!r} needs a square grid to have square "
                     f"cells, got {rows}x{cols}; use a square grid or resolution='full'")
  if full % rows:
    raise ValueError(f"grid {rows}x{cols} does not divide image_size {full}")
  cell = full // rows
  if cell < 4:
    raise ValueError(f"train.resolution={cfg.resolution!r}: cells of {cell}px are too small to "
                     "train on; use a smaller grid or resolution='full'")
  if cfg.resolution == "patch":
    return cell, cell, 0
  return full, cfg.eval_image_size or full, cell


def eval_preprocess(images, eval_size: int, blur_size: int = 0, mean=augment.IMAGENET_MEAN,
                    std=augment.IMAGENET_STD):
  """uint8 test images -> normalised float at eval_size; blur_size > 0 first resizes the images
  down to blur_size and back up (the "blur" evaluation: full size, patch-level detail)."""
  if blur_size:
    images = augment.center_resize(images, (blur_size, blur_size))
  return augment.normalize(augment.center_resize(images, (eval_size, eval_size)), mean, std)


def make_eval_step(eval_size: int, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD,
                   blur_size: int = 0):
  """jit(state, images uint8, labels, mask) -> summed metrics (see eval_preprocess)."""

  def step(state, images, labels, mask):
    x = eval_preprocess(images, eval_size, blur_size, mean, std)
    logits = state.apply_fn(variables_of(state), x, train=False)
    return eval_metrics(logits, labels, mask)
  return jax.jit(step)


class Progress:
  """tqdm bar on a terminal; plain one-line messages (every log interval) otherwise."""

  def __init__(self, total: int, initial: int, desc: str):
    self.tty = sys.stderr.isatty()
    self.total, self.desc, self.t0, self.start = total, desc, time.time(), initial
    self.bar = None
    if self.tty:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

  def update(self, step: int, n: int, info: dict, log: bool):
    if self.bar is not None:
      self.bar.update(n)
      if log:
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in info.items()}, refresh=False)
    elif log:
      done = step - self.start
      rate = done / max(time.time() - self.t0, 1e-9)
      eta = (self.total - step) / rate if rate > 0 else float("nan")
      vals = " ".join(f"{k}={v:.4g}" for k, v in info.items())
      print(f"[{self.desc}] step {step}/{self.total} {vals} eta {eta:.0f}s", flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _append_jsonl(path: Path, row: dict) -> None:
  if jax.process_index() == 0:
    with open(path, "a") as f:
      f.write(json.dumps(row) + "\n")


def _truncate_jsonl(path: Path, max_step: int) -> None:
  """Drops metric rows written after the checkpoint we resume from (they will be redone)."""
  if path.exists() and jax.process_index() == 0:
    rows = [l for l in path.read_text().splitlines() if l.strip()]
    keep = [l for l in rows if json.loads(l).get("step", 0) <= max_step]
    path.write_text("".join(l + "\n" for l in keep))


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, train_data: Any,
          eval_data: Any = None, *, desc: str = "train", final_eval: bool = True,
          teacher: tuple[Callable, Any] | None = None,
          log: Callable[[str], None] = print) -> tuple[TrainState, dict]:
  """Trains config.model on train_data with config.train; returns (final state, metrics).

  train_data: InMemoryData, or a random-access source (Grain pipeline). eval_data: a source for the
  real test/val split (or None). workdir receives checkpoints/ and metrics.jsonl; an existing
  checkpoint there is resumed automatically (a finished run restores and only evaluates).
  final_eval=False skips the end-of-training evaluation (periodic ones still run).
  teacher: (apply_fn(variables, normalised views) -> logits, variables), required when
  config.train.label_mode == "soft".
  Raises Preempted (a SystemExit) after SIGTERM once a checkpoint is written.
  """
  cfg = config.train
  mesh = parallel.make_mesh()
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  in_memory = isinstance(train_data, InMemoryData)
  num_classes = train_data.num_classes
  n = len(train_data.labels)
  n_dev = mesh.devices.size
  if in_memory:
    batch = min(cfg.batch_size, math.ceil(n / n_dev) * n_dev)  # tiny sets: one batch per epoch
    steps_per_epoch = math.ceil(n / batch)
  else:
    batch = cfg.batch_size
    steps_per_epoch = pipeline.train_steps_per_epoch(n, batch)
  parallel.check_batch_size(batch, mesh, "train.batch_size")
  total = steps_per_epoch * cfg.epochs
  if cfg.max_steps:
    total = min(total, cfg.max_steps)

  model = create_model(config.model.name, num_classes, width=config.model.width,
                       stem=config.model.stem, dtype=config.model.dtype)
  tx, schedule = make_optimizer(cfg, steps_per_epoch)
  view_size, eval_size, blur_size = view_sizes(cfg)
  out_size = (view_size, view_size)
  augment_fn = augment.make_train_augment(cfg.crop, out_size, tuple(cfg.grid), tuple(cfg.crop_scale),
                                          tuple(cfg.crop_ratio), cfg.flip)
  state = parallel.replicate(
      create_train_state(model, tx, jax.random.key(cfg.seed), (view_size, view_size, 3)), mesh)

  ckpt_dir = (workdir / "checkpoints").absolute()
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
      max_to_keep=cfg.keep_checkpoints, enable_async_checkpointing=False))
  metrics_path = workdir / "metrics.jsonl"
  start = 0
  if manager.latest_step() is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
    state = parallel.replicate(restored, mesh)
    start = int(jax.device_get(state.step))
    _truncate_jsonl(metrics_path, start)
    log(f"[{desc}] resumed from checkpoint at step {start}/{total}")
  elif metrics_path.exists() and jax.process_index() == 0:
    metrics_path.unlink()

  if cfg.label_mode not in ("hard", "soft"):
    raise ValueError(f"unknown train.label_mode {cfg.label_mode!r}; use hard or soft")
  if cfg.label_mode == "soft" and teacher is None:
    raise ValueError("train.label_mode='soft' needs a teacher (the benchmark's teacher stage)")
  spec = LossSpec(num_classes, cfg.label_smoothing,
                  teacher[0] if cfg.label_mode == "soft" else None, cfg.temperature,
                  cfg.cutmix_alpha if cfg.label_mode == "soft" else 0.0,
                  teacher_size=cfg.image_size)
  teacher_vars = parallel.replicate(teacher[1], mesh) if spec.teacher_apply else None
  if in_memory:
    step_fn = make_memory_train_step(augment_fn, spec, cfg.seed, n, batch, steps_per_epoch, mesh)
    all_images = parallel.replicate(np.asarray(train_data.images), mesh)
    all_labels = parallel.replicate(np.asarray(train_data.labels, np.int32), mesh)
    batches = None
  else:
    step_fn = make_train_step(augment_fn, spec, cfg.seed, mesh)
    batches = parallel.prefetch_to_device(
        pipeline.train_batches(train_data, batch, cfg.image_size, cfg.seed, cfg.epochs,
                               start_step=start, num_threads=cfg.num_threads,
                               num_workers=cfg.num_workers),
        mesh, ("image", "label"), size=cfg.prefetch)
  eval_step = make_eval_step(eval_size, blur_size=blur_size)

  def run_eval():
    local = parallel.check_batch_size(cfg.eval_batch_size, mesh, "train.eval_batch_size")
    return evaluate(eval_step, state, pipeline.ordered_batches(
        eval_data, local, eval_size, config.data.get("eval_crop_fraction", 1.0),
        num_threads=cfg.num_threads), mesh)

  def save(step):
    if manager.latest_step() == step:  # already saved (e.g. SIGTERM right after a periodic save)
      return
    manager.save(step, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()

  stop = {"signal": None}
  previous = None
  if jax.process_index() == 0 and _is_main_thread():
    def on_term(signum, frame):
      stop["signal"] = signum
    previous = signal.signal(signal.SIGTERM, on_term)

  progress = Progress(total, start, desc)
  eval_every = cfg.eval_every_epochs * steps_per_epoch if cfg.eval_every_epochs else 0
  last = {}
  t_last, n_last = time.time(), 0
  t_start = time.time()
  measured_imgs, measured_time = 0, 0.0
  history = []
  try:
    for step in range(start, total):
      if in_memory:
        state, m = step_fn(state, all_images, all_labels, teacher_vars)
      else:
        _, (images, labels) = next(batches)
        state, m = step_fn(state, images, labels, teacher_vars)
      done = step + 1
      n_last += batch
      is_log = done % cfg.log_every_steps == 0 or done == total
      if is_log:
        m = jax.device_get(m)
        dt = time.time() - t_last
        ips = n_last / max(dt, 1e-9)
        if step > start + 1:  # the first interval includes compilation
          measured_imgs += n_last
          measured_time += dt
        last = {"loss": float(m["loss"]), "acc": float(m["acc"]), "lr": float(schedule(step)),
                "img_per_s": ips}
        row = {"step": done, "epoch": done / steps_per_epoch, **last}
        history.append(row)
        _append_jsonl(metrics_path, row)
        t_last, n_last = time.time(), 0
      progress.update(done, 1, {k: last[k] for k in ("loss", "acc")} if last else {}, is_log)
      if eval_data is not None and eval_every and done % eval_every == 0 and done != total:
        ev = run_eval()
        _append_jsonl(metrics_path, {"step": done, "epoch": done / steps_per_epoch,
                                     **{f"eval_{k}": v for k, v in ev.items()}})
        log(f"[{desc}] epoch {done // steps_per_epoch}: eval top1 {ev['top1']:.2f}% "
            f"top5 {ev['top5']:.2f}%")
      if done % cfg.checkpoint_every_steps == 0 and done != total:
        save(done)
      if stop["signal"] is not None:
        save(done)
        progress.close()
        raise Preempted(f"[{desc}] received SIGTERM: checkpoint saved at step {done}; rerun the "
                        "same command to resume")
    save(total)
  finally:
    progress.close()
    if batches is not None:
      batches.close()  # stops the prefetch thread (early stop, SIGTERM, errors)
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  wall = time.time() - t_start
  metrics = {"steps": total, "steps_per_epoch": steps_per_epoch, "batch_size": batch,
             "train_loss": last.get("loss"), "train_acc": last.get("acc"),
             "train_img_per_s": measured_imgs / measured_time if measured_time else None,
             "train_wall_s": wall}
  if eval_data is not None and final_eval:
    ev = run_eval()
    metrics.update({f"eval_{k}": v for k, v in ev.items()})
    _append_jsonl(metrics_path, {"step": total, "epoch": total / steps_per_epoch,
                                 **{f"eval_{k}": v for k, v in ev.items()}})
  return state, metrics


def _is_main_thread() -> bool:
  import threading
  return threading.current_thread() is threading.main_thread()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       train_data: Any, eval_data: Any = None) -> dict:
  """Trains and evaluates; returns the metrics dict (see `train` for the final state)."""
  return train(config, workdir, train_data, eval_data)[1]


def load_variables(workdir: str | os.PathLike) -> dict:
  """{"params", "batch_stats"} of the latest checkpoint in <workdir>/checkpoints (any pca_jax run)."""
  ckpt = (Path(workdir) / "checkpoints").absolute()
  if not ckpt.is_dir():
    raise ValueError(f"no checkpoints in {workdir}; train the model first or fix the path")
  manager = ocp.CheckpointManager(ckpt)
  step = manager.latest_step()
  if step is None:
    raise ValueError(f"no finished checkpoint in {ckpt}; train the model first")
  tree = manager.restore(step, args=ocp.args.StandardRestore())
  return {"params": tree["params"], "batch_stats": tree["batch_stats"]}
