"""The shared base config (paper defaults), its validation, and config fingerprints.

configs/*.py call `base_config()` and override only what differs. Every number the paper fixes is a
field here; the numbers the paper does NOT fix (scoring model/epochs/K, grid, crop scale in a patch)
are fields too, with the defaults argued in the README.

`fingerprint` is the one hash that every cached artifact carries (stage outputs, checkpoints,
benchmark sets and cells): it lives here, not in the runner, because the trainer's checkpoint guard
needs it too and must not import the orchestration layer. This module imports nothing heavy (no
jax): the CLI validates a config before any backend starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Iterable

import ml_collections

STAGES = ("score", "teacher", "tune", "select", "combine", "store", "train", "eval", "benchmark",
          "report")
PCA_STAGES = ("score", "select", "combine", "store", "train", "eval", "report")
SELECT_MODES = ("easy", "hard", "random", "ccs")
SELECT_ORDERS = ("easy", "random")
TUNE_RESOLUTIONS = ("full", "patch")
TUNE_CROPS = ("patch", "rrc")
FITS = ("squash", "center_crop")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
RESOLUTIONS = ("full", "patch", "blur")
SHARD_SET_CHOICES = ("auto", "replicated", "sharded")
MODEL_AXES = ("vmap", "loop")   # how models trained together share a step (parallel.map_models)

# Leaf names that never change what an artifact contains: threads, logging, checkpoint and
# evaluation cadence, batch sizes of evaluation passes, caches, the stage list itself.
IGNORED_FIELDS = frozenset({
    "num_threads", "num_workers", "prefetch", "prefetch_mb", "log_every_steps", "model_axis",
    "checkpoint_every_steps",
    "keep_checkpoints", "eval_every_epochs", "eval_batch_size", "jax_cache_dir", "stages", "force"})


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
  c.prefetch_mb = 1024            # Grain input: host memory of decoded batches read ahead (MiB)
  # The compressed set on the devices: "replicated" (every device holds all of it), "sharded"
  # (each device holds 1/n and draws its part of every batch from it), or "auto" (sharded when
  # the replicated set would take more than a quarter of a device's memory).
  c.shard_set = "auto"
  c.seed = 0
  c.max_steps = 0                 # > 0: stop after this many steps (tests, benchmarks)
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ",".join(PCA_STAGES)
  c.force = False
  c.method = "pca"
  c.jax_cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "pca_jax", "jax")

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"             # "tfds" | "imagefolder" | "demo"
  c.data.tfds_name = "imagenet2012"
  c.data.data_dir = os.environ.get("TFDS_DATA_DIR", "")
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224            # storage and training resolution
  c.data.eval_crop_fraction = 0.875  # Resize(256) + CenterCrop(224)
  c.data.demo_image_size = 16
  c.data.skip_corrupt = False
  c.data.num_threads = 16
  c.data.num_workers = 0
  c.data.prefetch_mb = 1024          # host memory of decoded batches read ahead (MiB)

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet18"
  c.model.width = 64
  c.model.stem = "imagenet"
  c.model.dtype = "float32"
  # torchvision's resnet18 (the reference student) keeps every BatchNorm scale at 1; True zeroes
  # the last one of each residual block (Goyal et al.), as flax's example ResNet does.
  c.model.zero_init_residual = False
  # "torch": convolutions pad k // 2 on each side like torchvision (its weights load exactly);
  # "same": flax's "SAME" (stride-2 3x3 convs shifted a pixel), the layout before issue 17.
  c.model.padding = "torch"

  # Prune: EL2N from K early-trained models on the FULL train set (data_diet style).
  c.score = ml_collections.ConfigDict()
  c.score.kind = "el2n"              # score used for selection: "el2n" | "entropy"
  c.score.num_models = 4             # K, averaged
  c.score.batch_size = 512           # forward pass batch (global)
  c.score.scores_path = ""           # precomputed [N] scores (.npy) instead of training
  c.score.forgetting = False         # also count forgetting events (one correctness pass/epoch)
  c.score.aum = False                # also AUM (negated; margins from the same per-epoch pass)
  # True: the K models train together, one jitted step per decoded batch (one data order, each
  # model its own initialisation and crops, taken on the device): the host decodes epochs x N
  # images instead of K x epochs x N. False: one model after another, each with its own data
  # order and torchvision's crops on the host (the reference). The README measures the two.
  c.score.together = True
  # together: "loop" (K copies of the step in one program: never slower than K steps) or "vmap"
  # (batched kernels: faster for the demo's tiny layers on CPU, 2x slower at 32px width 16)
  c.score.model_axis = "loop"
  c.score.image_size = 0             # train + score the scoring models at this size; 0 = data's
  c.score.train = default_train_config()
  c.score.train.update(dict(
      epochs=10, batch_size=1024, optimizer="sgd", lr=0.1, scale_lr_by_batch=True,
      base_batch_size=256, weight_decay=1e-4, momentum=0.9, nesterov=True, schedule="cosine",
      schedule_unit="step", warmup_epochs=1, crop="rrc", eval_every_epochs=0,
      checkpoint_every_steps=2000, log_every_steps=100))
  # > 0: the learning-rate schedule of a run this many epochs long, of which the scoring models
  # train only the first score.train.epochs (an early checkpoint of a full-length run, where the
  # LR is still high, as data_diet takes EL2N); 0: the schedule ends with training (converged).
  c.score.train.schedule_epochs = 0

  c.select = ml_collections.ConfigDict()
  c.select.ipc = 10
  c.select.mode = "easy"             # reversed EL2N (PCA); "hard" = classic EL2N; "random"; "ccs"
  c.select.score = ""                # "" = score.kind (scores.npy); else a scoring.SCORES name
  c.select.ccs_beta = 0.1            # ccs: the hardest fraction of each class dropped first
  c.select.ccs_strata = 50           # ccs: score bins per class, sampled evenly
  # mode "easy" only: the band (lo, hi) of every class's easiest-first ranking to select from
  # (rank r of n is in it when lo <= (r + 0.5) / n < hi), taken easiest first ("easy") or
  # uniformly at random ("random", seeded); (0, 1) + "easy" = classic easiest-first
  c.select.window = (0.0, 1.0)
  c.select.order = "easy"

  c.combine = ml_collections.ConfigDict()
  c.combine.grid = (2, 2)
  c.combine.fit = "squash"           # whole image resized into its cell (no cropping)

  # Evaluation training: the reference benchmark's hard-label recipe.
  c.train = default_train_config()
  c.train.update(dict(epochs=300, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.01,
                      schedule="cosine", schedule_unit="epoch", crop="patch", crop_scale=(0.08, 1.0),
                      eval_every_epochs=50, checkpoint_every_steps=1000, eval_batch_size=500))

  # The tune stage (add "tune" to config.stages; also the benchmark's pca_auto): a class-stratified
  # val_fraction of the TRAIN split is held out, every candidate set (select.ipc stored images
  # per class) of the search below is built from the rest, trained for `epochs` with config.train
  # and each of `seeds`, and evaluated on the held-out images; the best mean top-1 wins, and ties
  # within tie_tolerance points go to the cheaper set (fewer training FLOPs: smaller views, then
  # the smaller grid). See pca_jax/pca/tune.py.
  c.tune = ml_collections.ConfigDict()
  c.tune.val_fraction = 0.2
  c.tune.grids = ((1, 1), (2, 2))
  c.tune.resolutions = ("full", "patch")      # patch only for square grids > 1
  c.tune.windows = ((0.0, 1.0), (0.0, 0.5), (0.25, 0.75))   # with select.order
  c.tune.prune = (True, False)                # True: by score in a window; False: random images
  c.tune.crops = ("patch",)                   # "patch": inside one cell; "rrc": the whole mosaic
  c.tune.epochs = 100
  c.tune.seeds = (0,)
  c.tune.tie_tolerance = 0.0                  # top-1 points

  # The DC benchmark (stages teacher, benchmark): see pca_jax/dc/.
  c.benchmark = ml_collections.ConfigDict()
  # The reference benchmark's methods (pruning: forgetting, EL2N, AUM, CCS, hardest kept, as
  # published; distillation: SRe2L, CDA, RDED) with random, easiest-first EL2N and PCA. Methods
  # ranking by forgetting / AUM need score.forgetting / score.aum (the benchmark configs set them).
  c.benchmark.methods = ("random,el2n_hard,forgetting_hard,aum_hard,ccs,sre2l,cda,rded,el2n_easy,"
                         "pca")
  c.benchmark.ipcs = (10, 50, 100)
  c.benchmark.label_modes = ("hard", "soft")
  c.benchmark.seeds = (0,)
  c.benchmark.grids = ((1, 1), (2, 2), (3, 3))   # the PCA grid sweep at equal bytes
  c.benchmark.resolutions = ("full",)   # add "patch" (and/or "blur") for mosaic methods
  c.benchmark.external = ""          # "name=/path/imagefolder,name2=/path2"
  c.benchmark.teacher_workdir = ""   # a finished pca_jax train workdir; empty = train one
  c.benchmark.soft_label_bytes_per_value = 2    # fp16, for the storage column
  c.benchmark.teacher_weights = ""   # a torchvision ResNet state_dict (.pth) as the teacher
  # rded (Sun et al. 2024; LINs-lab/RDED ImageNet scripts): mipc random real images per class,
  # num_crop square random-resized crops of each at image_size / factor, the teacher's lowest-loss
  # crop per image, the ipc x factor^2 lowest per class stitched factor x factor.
  c.benchmark.rded_mipc = 300
  c.benchmark.rded_num_crop = 5
  c.benchmark.rded_factor = 2
  # sre2l / cda recovery from the teacher (VILA-Lab/SRe2L recover.sh; ImageNet uses 4,000 iterations)
  c.benchmark.synthesis = ml_collections.ConfigDict()
  c.benchmark.synthesis.iterations = 1000
  c.benchmark.synthesis.lr = 0.25
  c.benchmark.synthesis.betas = (0.5, 0.9)
  c.benchmark.synthesis.r_bn = 0.01
  c.benchmark.synthesis.first_bn_multiplier = 10.0
  c.benchmark.synthesis.jitter = 32            # roll jitter in pixels at 224 px (scaled with size)
  c.benchmark.synthesis.crop_scale = (0.08, 1.0)   # sre2l's crop; cda anneals the minimum
  c.benchmark.synthesis.cda_milestone = 1.0    # cda: fraction of iterations annealing 1.0 -> 0.08
  c.benchmark.synthesis.batch_size = 100       # (ipc index, class) pairs optimised together
  # > 0: every cell also evaluates on the test split every this many epochs; rows then carry
  # top1_best (max over those and the final evaluation, as the reference benchmark reports)
  c.benchmark.eval_every_epochs = 0
  c.benchmark.ccs_score = "aum"      # ccs / pca_ccs: the score CCS stratifies (needs its flag)
  c.benchmark.ccs_beta = 0.1
  c.benchmark.ccs_strata = 50
  c.benchmark.teacher = default_train_config()
  c.benchmark.teacher.update(dict(
      epochs=90, batch_size=1024, optimizer="sgd", lr=0.1, scale_lr_by_batch=True,
      base_batch_size=256, weight_decay=5e-5, schedule="cosine", schedule_unit="step",
      warmup_epochs=2, crop="rrc", eval_every_epochs=10, checkpoint_every_steps=2000,
      log_every_steps=100))
  return c


def sibling_config(config_file: str, name: str):
  """The get_config of <name>.py in the folder of `config_file`, so configs can build on each
  other by path (works from any working directory, with or without an installed package)."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"pca_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


def select_score(config) -> str:
  """The score the select stage ranks by: select.score, or score.kind when that is empty."""
  return config.select.get("score", "") or config.score.kind


def cells(config) -> int:
  return int(config.combine.grid[0]) * int(config.combine.grid[1])


def parse_stages(stages: str) -> list[str]:
  names = [s.strip() for s in str(stages).split(",") if s.strip()]
  bad = [s for s in names if s not in STAGES]
  if bad:
    raise ValueError(f"unknown stage {bad[0]!r} in config.stages; choose from {','.join(STAGES)}")
  if not names:
    raise ValueError(f"config.stages is empty; use e.g. {','.join(STAGES)}")
  return [s for s in STAGES if s in names]  # always run in pipeline order


# ------------------------------------------------------------------------------------ fingerprints
def _plain(value: Any) -> Any:
  """ConfigDicts, tuples, numpy scalars -> JSON-able dicts, lists, numbers; ignored leaves dropped."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in sorted(value.items()) if k not in IGNORED_FIELDS}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "item") and callable(value.item):  # numpy scalars
    return value.item()
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def config_values(config, fields: Iterable[str]) -> dict[str, Any]:
  """{dotted leaf path: value} of the given config fields (dotted paths; a group is expanded to
  its leaves), without the IGNORED_FIELDS. The flat form lets a changed artifact name its fields."""
  out: dict[str, Any] = {}

  def walk(prefix: str, value: Any) -> None:
    if isinstance(value, dict):
      for k, v in value.items():
        walk(f"{prefix}.{k}", v)
    else:
      out[prefix] = value
  for field in fields:
    obj = config
    for part in field.split("."):
      obj = obj[part]
    if field.split(".")[-1] not in IGNORED_FIELDS:
      walk(field, _plain(obj))
  return out


def fingerprint(*parts: Any) -> str:
  """The one fingerprint: a 16-hex-digit SHA-256 of the parts' canonical JSON (config groups,
  config_values dicts, upstream fingerprints, ...). Ignored fields inside config groups are dropped."""
  text = json.dumps(_plain(list(parts)), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """The dotted fields whose values differ between two config_values dicts."""
  return sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))


# -------------------------------------------------------------------------------------- validation
def _check_prefetch_mb(block: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not \
      (math.isfinite(value) and value > 0):
    raise ValueError(f"{block}.prefetch_mb must be a positive number of MiB (host memory for "
                     f"decoded batches read ahead), got {value!r}")


def _check_train(name: str, tc, full_dataset: bool) -> None:
  """A training config block: every number in range, every choice known."""
  _check_prefetch_mb(name, tc.get("prefetch_mb", 1024))
  from pca_jax.augment import CROP_KINDS
  if tc.crop not in CROP_KINDS:
    raise ValueError(f"unknown {name}.crop {tc.crop!r}; choose one of {CROP_KINDS}")
  if full_dataset and tc.crop == "patch":
    raise ValueError(f"{name}.crop='patch' crops inside mosaic cells, but {name} trains on the full "
                     "dataset; use rrc or none")
  for field in ("epochs", "batch_size", "eval_batch_size", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints", "prefetch", "base_batch_size"):
    if not isinstance(tc[field], int) or tc[field] < 1:
      raise ValueError(f"{name}.{field} must be a positive integer, got {tc[field]!r}")
  if not (isinstance(tc.lr, (int, float)) and math.isfinite(tc.lr) and tc.lr > 0):
    raise ValueError(f"{name}.lr must be a positive number, got {tc.lr!r}")
  for field, ok, allowed in (("weight_decay", lambda v: v >= 0, ">= 0"),
                             ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
                             ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
                             ("warmup_epochs", lambda v: v >= 0, ">= 0"),
                             ("cutmix_alpha", lambda v: v >= 0, ">= 0"),
                             ("max_steps", lambda v: v >= 0, ">= 0 (0 = no limit)"),
                             ("temperature", lambda v: v > 0, "> 0")):
    if not ok(tc[field]):
      raise ValueError(f"{name}.{field} must be {allowed}, got {tc[field]!r}")
  if tc.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown {name}.optimizer {tc.optimizer!r}; use adamw or sgd")
  if tc.schedule not in SCHEDULES:
    raise ValueError(f"unknown {name}.schedule {tc.schedule!r}; use cosine, step or constant")
  if tc.schedule_unit not in ("epoch", "step"):
    raise ValueError(f"unknown {name}.schedule_unit {tc.schedule_unit!r}; use epoch or step")
  if tc.label_mode not in ("hard", "soft"):
    raise ValueError(f"unknown {name}.label_mode {tc.label_mode!r}; use hard or soft")
  if tc.get("shard_set", "auto") not in SHARD_SET_CHOICES:
    raise ValueError(f"unknown {name}.shard_set {tc.shard_set!r}; choose one of {SHARD_SET_CHOICES}")
  if tc.resolution not in RESOLUTIONS:
    raise ValueError(f"unknown {name}.resolution {tc.resolution!r}; choose one of {RESOLUTIONS}")
  scale, ratio = tuple(tc.crop_scale), tuple(tc.crop_ratio)
  if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"{name}.crop_scale must satisfy 0 < min <= max <= 1, got {scale}")
  if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"{name}.crop_ratio must satisfy 0 < min <= max, got {ratio}")


def _check_score_training(score) -> None:
  """score.together / model_axis / image_size and score.train.schedule_epochs."""
  if not isinstance(score.get("together", False), bool):
    raise ValueError(f"score.together must be True or False, got {score.together!r}")
  if score.get("model_axis", "vmap") not in MODEL_AXES:
    raise ValueError(f"unknown score.model_axis {score.model_axis!r}; choose one of {MODEL_AXES}")
  size = score.get("image_size", 0)
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise ValueError(f"score.image_size must be an integer >= 0 (0 = data.image_size), got "
                     f"{size!r}")
  nominal = score.train.get("schedule_epochs", 0)
  if isinstance(nominal, bool) or not isinstance(nominal, int) or nominal < 0 or \
      0 < nominal < score.train.epochs:
    raise ValueError(f"score.train.schedule_epochs must be 0 (the schedule ends with training) "
                     f"or an integer >= score.train.epochs={score.train.epochs} (the length of "
                     f"the nominal run the scoring models stop early in), got {nominal!r}")


def _check_ccs(block: str, beta, strata) -> None:
  """CCS parameters: the hard cutoff beta in [0, 1) and the number of strata (an int >= 1)."""
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
    raise ValueError(f"{block}.ccs_beta must be a fraction in [0, 1) (the hardest part of each "
                     f"class dropped before stratifying), got {beta!r}")
  if isinstance(strata, bool) or not isinstance(strata, int) or strata < 1:
    raise ValueError(f"{block}.ccs_strata must be a positive integer, got {strata!r}")


def _check_score_name(field: str, name: str, score_config) -> None:
  """A score some stage reads: a scoring.SCORES name whose config flag (if any) is on."""
  from pca_jax.scoring import SCORES
  if name not in SCORES:
    raise ValueError(f"unknown {field} {name!r}; choose one of {tuple(SCORES)}")
  flag = SCORES[name].requires
  if flag and not score_config[flag]:
    raise ValueError(f"{field}={name!r} needs --config.score.{flag}=True (the score stage "
                     f"computes {name} only then)")


def _check_synthesis(syn) -> None:
  """benchmark.synthesis (sre2l / cda): every number in range."""
  for field in ("iterations", "batch_size"):
    if not isinstance(syn[field], int) or isinstance(syn[field], bool) or syn[field] < 1:
      raise ValueError(f"benchmark.synthesis.{field} must be a positive integer, got "
                       f"{syn[field]!r}")
  if not isinstance(syn.jitter, int) or syn.jitter < 0:
    raise ValueError(f"benchmark.synthesis.jitter must be an integer >= 0 (pixels at 224 px), "
                     f"got {syn.jitter!r}")
  for field, ok, allowed in (("lr", lambda v: v > 0, "> 0"), ("r_bn", lambda v: v >= 0, ">= 0"),
                             ("first_bn_multiplier", lambda v: v >= 0, ">= 0"),
                             ("cda_milestone", lambda v: 0 < v <= 1, "in (0, 1]")):
    value = syn[field]
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
      raise ValueError(f"benchmark.synthesis.{field} must be {allowed}, got {value!r}")
  betas, scale = tuple(syn.betas), tuple(syn.crop_scale)
  if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
    raise ValueError(f"benchmark.synthesis.betas must be two numbers in [0, 1), got {betas}")
  if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"benchmark.synthesis.crop_scale must satisfy 0 < min <= max <= 1, got "
                     f"{scale}")


def _check_tune(config, grid_ok) -> None:
  """The tune block: every search value known and in range, at least one candidate.

  grid_ok(field, grid) raises for a grid that does not fit data.image_size."""
  from pca_jax.selection import check_window
  tune = config.tune
  f = tune.val_fraction
  if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
    raise ValueError(f"tune.val_fraction must be a fraction in (0, 1) (the part of every class of "
                     f"the train split held out for validation), got {f!r}")
  for field in ("grids", "resolutions", "windows", "prune", "crops", "seeds"):
    if not isinstance(tune[field], (list, tuple)) or not tune[field]:
      raise ValueError(f"tune.{field} must be a non-empty tuple, got {tune[field]!r}")
  for g in tune.grids:
    grid_ok("tune.grids", tuple(g) if isinstance(g, (list, tuple)) else g)
  for r in tune.resolutions:
    if r not in TUNE_RESOLUTIONS:
      raise ValueError(f"unknown tune.resolutions entry {r!r}; choose from {TUNE_RESOLUTIONS}")
  for c in tune.crops:
    if c not in TUNE_CROPS:
      raise ValueError(f"unknown tune.crops entry {c!r}; choose from {TUNE_CROPS} (patch = "
                       "inside one mosaic cell, rrc = the whole mosaic)")
  for p in tune.prune:
    if not isinstance(p, bool):
      raise ValueError(f"tune.prune entries must be True (by score, in a window) or False "
                       f"(random images), got {p!r}")
  for w in tune.windows:
    check_window(w, "tune.windows entry")
  for field in ("epochs",):
    if isinstance(tune[field], bool) or not isinstance(tune[field], int) or tune[field] < 1:
      raise ValueError(f"tune.{field} must be a positive integer, got {tune[field]!r}")
  if any(isinstance(s, bool) or not isinstance(s, int) for s in tune.seeds):
    raise ValueError(f"tune.seeds must be integers, got {tuple(tune.seeds)}")
  t = tune.tie_tolerance
  if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
    raise ValueError(f"tune.tie_tolerance must be >= 0 (top-1 points), got {t!r}")
  if not any(r == "full" or (int(g[0]) == int(g[1]) > 1) for g in tune.grids
             for r in tune.resolutions):
    raise ValueError(f"the tune search has no candidate: resolution 'patch' needs a square grid "
                     f"> 1x1, tune.grids={tuple(tuple(g) for g in tune.grids)}; add 'full' to "
                     "tune.resolutions or a square grid to tune.grids")


def uses_tune(config) -> bool:
  """Whether this config runs the tune search: stage tune, or the benchmark's pca_auto."""
  stages = parse_stages(config.stages)
  methods = [m.strip() for m in str(config.benchmark.methods).split(",")]
  return "tune" in stages or ("benchmark" in stages and "pca_auto" in methods)


def validate(config) -> None:
  """Raises ValueError naming the field for anything that cannot work (no data is read here)."""
  from pca_jax.models.resnet import DTYPES, MODELS
  from pca_jax.data.sources import SOURCES
  from pca_jax.combine import check_grid
  from pca_jax.scoring import SCORES, SELECTION_SCORES
  from pca_jax.training.views import view_sizes

  stages = parse_stages(config.stages)
  if config.data.source not in SOURCES:
    raise ValueError(f"unknown data.source {config.data.source!r}; choose one of {SOURCES}")
  if config.model.name not in MODELS:
    raise ValueError(f"unknown model.name {config.model.name!r}; choose one of {sorted(MODELS)}")
  if config.model.dtype not in DTYPES:
    raise ValueError(f"unknown model.dtype {config.model.dtype!r}; choose one of {sorted(DTYPES)}")
  from pca_jax.models.resnet import PADDINGS
  if config.model.get("padding", "torch") not in PADDINGS:
    raise ValueError(f"unknown model.padding {config.model.padding!r}; choose one of {PADDINGS} "
                     "(torch: torchvision's layout; same: checkpoints made before it)")
  if config.model.stem not in ("imagenet", "small"):
    raise ValueError(f"unknown model.stem {config.model.stem!r}; use imagenet or small")
  if not isinstance(config.model.width, int) or config.model.width < 1:
    raise ValueError(f"model.width must be a positive integer, got {config.model.width!r}")
  size = config.data.image_size
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"data.image_size must be a positive integer, got {size!r}")
  _check_prefetch_mb("data", config.data.get("prefetch_mb", 1024))
  if not 0 < config.data.eval_crop_fraction <= 1:
    raise ValueError(f"data.eval_crop_fraction must be in (0, 1], got "
                     f"{config.data.eval_crop_fraction!r}")
  if config.score.kind not in SELECTION_SCORES:
    raise ValueError(f"unknown score.kind {config.score.kind!r}; choose one of "
                     f"{tuple(SELECTION_SCORES)}")
  for field in ("num_models", "batch_size"):
    if not isinstance(config.score[field], int) or config.score[field] < 1:
      raise ValueError(f"score.{field} must be a positive integer, got {config.score[field]!r}")
  _check_score_training(config.score)
  if config.select.mode not in SELECT_MODES:
    raise ValueError(f"unknown select.mode {config.select.mode!r}; choose one of {SELECT_MODES}")
  if not isinstance(config.select.ipc, int) or config.select.ipc < 1:
    raise ValueError(f"select.ipc must be a positive integer, got {config.select.ipc!r}")
  if config.select.score:
    _check_score_name("select.score", config.select.score, config.score)
    if config.score.scores_path and config.select.mode != "random":
      raise ValueError(f"select.score={config.select.score!r} reads the score stage's own "
                       "scores, but score.scores_path is set; leave select.score empty to select "
                       "by the precomputed scores")
  _check_ccs("select", config.select.ccs_beta, config.select.ccs_strata)
  from pca_jax.selection import check_window
  window = check_window(config.select.window, "select.window")
  if config.select.order not in SELECT_ORDERS:
    raise ValueError(f"unknown select.order {config.select.order!r}; choose one of "
                     f"{SELECT_ORDERS}")
  if config.select.mode != "easy" and (window != (0.0, 1.0) or config.select.order != "easy"):
    raise ValueError(f"select.window={window} / select.order={config.select.order!r} refine "
                     f"select.mode='easy' (the easiest-first ranking); with "
                     f"select.mode={config.select.mode!r} leave them at (0.0, 1.0) and 'easy'")
  if config.combine.fit not in FITS:
    raise ValueError(f"unknown combine.fit {config.combine.fit!r}; choose one of {FITS}")
  grid = tuple(config.combine.grid)
  if len(grid) != 2 or min(grid) < 1 or max(grid) > 8:
    raise ValueError(f"combine.grid={grid} is out of range; use (rows, cols) between 1 and 8")
  try:
    check_grid(grid, (size, size))
  except ValueError:
    raise ValueError(f"combine.grid={grid} does not divide data.image_size={size}; use an "
                     f"image size that is a multiple of {grid[0]} and {grid[1]}") from None
  for name, tc, full_dataset in (("train", config.train, False),
                                 ("score.train", config.score.train, True),
                                 ("benchmark.teacher", config.benchmark.teacher, True)):
    _check_train(name, tc, full_dataset)
  if config.train.resolution != "full":
    probe = config.train.copy_and_resolve_references()
    probe.image_size, probe.grid = size, grid
    try:
      view_sizes(probe)
    except ValueError as e:
      raise ValueError(f"{e} (combine.grid={grid}, data.image_size={size})") from None
  if uses_tune(config):
    def grid_ok(field, g):
      if not isinstance(g, tuple) or len(g) != 2 or not all(
          isinstance(x, int) and not isinstance(x, bool) for x in g) or min(g) < 1 or max(g) > 8:
        raise ValueError(f"{field} entry {g} is out of range; use (rows, cols) between 1 and 8")
      if size % g[0] or size % g[1]:
        raise ValueError(f"{field} entry {g} does not divide data.image_size={size}; use grids "
                         "that divide the image size")
      if g[0] == g[1] > 1 and "patch" in tuple(config.tune.resolutions) and size // g[0] < 4:
        raise ValueError(f"{field} entry {g}: cells of {size // g[0]}px are too small to train "
                         "on at the patch resolution; drop that grid or 'patch' from "
                         "tune.resolutions")
    _check_tune(config, grid_ok)
  if "benchmark" in stages:
    from pca_jax.dc.plan import plan_cells
    plan_cells(config.benchmark, grid, size, {"x": 1})
    for field in ("rded_mipc", "rded_num_crop", "rded_factor", "soft_label_bytes_per_value"):
      value = config.benchmark[field]
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"benchmark.{field} must be an integer >= 1, got {value!r}")
    _check_synthesis(config.benchmark.synthesis)
    every = config.benchmark.eval_every_epochs
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
      raise ValueError(f"benchmark.eval_every_epochs must be an integer >= 0 (0 = final "
                       f"evaluation only), got {every!r}")
    if config.benchmark.ccs_score not in SCORES:
      raise ValueError(f"unknown benchmark.ccs_score {config.benchmark.ccs_score!r}; choose one "
                       f"of {tuple(SCORES)}")
    _check_ccs("benchmark", config.benchmark.ccs_beta, config.benchmark.ccs_strata)
  if config.data.source == "imagefolder" and not config.data.data_dir:
    raise ValueError("data.source='imagefolder' needs --config.data.data_dir=<root with "
                     f"{config.data.train_split}/ and {config.data.eval_split}/ class folders>")
