"""The shared base config (paper defaults), config fingerprints, and the shared field checks.

configs/*.py call `base_config()` and override only what differs. Every number the paper fixes is a
field here; the numbers the paper does NOT fix (scoring model/epochs/K, grid, crop scale in a patch)
are fields too, with the defaults argued in the docs.

`fingerprint` is the one hash that every cached artifact carries (stage outputs, checkpoints,
benchmark sets and cells): it lives here, not in the runner, because the trainer's checkpoint guard
needs it too and must not import the orchestration layer.

This module is the ground floor: it imports no other pca_jax module and no jax, so a config file
loads in a blink. Each block's checks live with the code that owns the block (e.g. the select
block's in pca_jax.selection) and use the helpers at the end of this file; pca_jax.checks composes
them into `validate(config)`.
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

# The data fields that decide which training / evaluation images a stage sees (stage and cache
# fingerprints).
TRAIN_DATA = ("data.source", "data.tfds_name", "data.data_dir", "data.synthetic",
              "data.image_column", "data.label_column", "data.train_split", "data.image_size",
              "data.demo_image_size", "data.skip_corrupt")
EVAL_DATA = ("data.source", "data.tfds_name", "data.data_dir", "data.synthetic",
             "data.image_column", "data.label_column", "data.eval_split",
             "data.eval_crop_fraction", "data.demo_image_size")

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


def use_compile_cache(config) -> None:
  """XLA's persistent compilation cache in config.jax_cache_dir (none when empty): a rerun, or
  another training run of the same shapes, loads its compiled steps instead of compiling them."""
  if config.get("jax_cache_dir"):
    import jax

    from pca_jax import fs
    jax.config.update("jax_compilation_cache_dir", os.fspath(fs.path(config.jax_cache_dir)))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ",".join(PCA_STAGES)
  c.force = False
  c.method = "pca"
  c.jax_cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "pca_jax", "jax")
  # Experiment tracking (pca_jax.tracking): TensorBoard event files under every training run's
  # tensorboard/ (`tensorboard --logdir <workdir>`); wandb_project mirrors them to W&B (optional
  # package; WANDB_MODE=offline keeps the runs on disk). metrics.jsonl is always written.
  c.log = ml_collections.ConfigDict()
  c.log.tensorboard = True
  c.log.wandb_project = ""
  # True: run this config end to end on synthetic data of the real dataset's shape, a few steps
  # per training run, after printing the real run's plan (pca_jax.rehearsal)
  c.rehearse = False
  c.rehearsal = ml_collections.ConfigDict()
  c.rehearsal.classes = 0            # > 0: that many classes of the real sizes; 0: all
  c.rehearsal.image_size = 0         # 0: the smallest size the grids divide as the real one
  c.rehearsal.steps = 2              # steps of every training run, iterations of SRe2L / CDA
  c.rehearsal.width = 0              # > 0: the model at this width (fast rehearsals on a CPU)
  # True: one seed and the largest IPC of the benchmark / tune grids (every method, grid and label
  # mode still runs: the structure, not the repeats); the printed plan still covers every cell
  c.rehearsal.thin = False
  # The rates the plan (printed by the rehearsal, the device check) projects wall times with:
  # ResNet-18 at 224 px on the device, JPEG decoding at 224 px on the host (pca_jax.projection)
  c.plan = ml_collections.ConfigDict()
  c.plan.train_img_per_s = 3000.0
  c.plan.forward_img_per_s = 9000.0
  c.plan.decode_img_per_s_per_core = 300.0
  c.plan.host_cores = 16

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"             # "tfds" | "imagefolder" | "parquet" | "demo"
  c.data.tfds_name = "imagenet2012"
  c.data.data_dir = os.environ.get("TFDS_DATA_DIR", "")
  c.data.train_split = "train"       # imagefolder: a folder; parquet: a shard prefix
  c.data.eval_split = "validation"
  # data.source="parquet" (a Hugging Face dataset directory, data_dir/data/<split>-*.parquet):
  # the image column ({bytes, path} or binary) and the label column (integer class ids or a
  # ClassLabel); "" = "label", else "class_id"
  c.data.image_column = "image"
  c.data.label_column = ""
  c.data.image_size = 224            # storage and training resolution
  c.data.eval_crop_fraction = 0.875  # Resize(256) + CenterCrop(224)
  c.data.demo_image_size = 16
  c.data.skip_corrupt = False
  c.data.num_threads = 16
  c.data.num_workers = 0
  c.data.prefetch_mb = 1024          # host memory of decoded batches read ahead (MiB)
  # data.source="synthetic" (set by the rehearsal, --config.rehearse=True): generated images of
  # a dataset's shape, `of` naming the dataset it stands in for
  c.data.synthetic = ml_collections.ConfigDict(dict(of="", counts=(1,), eval_counts=(1,)))

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet18"        # any of pca_jax.models.MODELS (README, "Other students")
  c.model.width = 64               # ResNets' base channels; other families scale by width / 64
  c.model.stem = "imagenet"
  c.model.dtype = "float32"
  # torchvision's resnet18 (the reference student) keeps every BatchNorm scale at 1; True zeroes
  # the last one of each residual block (Goyal et al.), as flax's example ResNet does. ResNets
  # only: the other families ignore it (a benchmark's students share this block).
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
  # order and torchvision's crops on the host (the reference). docs/scale.md measures the two.
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
  c.benchmark.teacher_weights = ""   # a torchvision state_dict (.pth) of model.name as the teacher
  # Cross-architecture evaluation (the paper's Table 8): every cell runs once per student, names
  # of pca_jax.models.MODELS (resnet18, mobilenet_v2, efficientnet_b0, shufflenet_v2_x1_0,
  # vit_s_16, ...; empty = model.name alone). Sets are built once and shared; the soft-label
  # teacher stays model.name's. Each student keeps model.width / stem / dtype.
  c.benchmark.students = ()
  # Per-student overrides of train fields, the same for every method (a ViT from scratch on a
  # few images per class needs warmup and a smaller LR under AdamW: DeiT's recipe, lr 5e-4 at
  # batch 512 scaled here to the batch of 128 is 1.25e-4; we keep 5e-4 for the short schedules,
  # wd 0.05, 5 warmup epochs).
  c.benchmark.student_overrides = ml_collections.ConfigDict()
  c.benchmark.student_overrides.vit_s_16 = ml_collections.ConfigDict(
      dict(lr=5e-4, weight_decay=0.05, warmup_epochs=5))
  # rded (Sun et al. 2024; LINs-lab/RDED ImageNet scripts): mipc random real images per class,
  # num_crop square random-resized crops of each at image_size / factor, the teacher's lowest-loss
  # crop per image, the ipc x factor^2 lowest per class stitched factor x factor. RDED's ImageNet
  # script draws 300 at IPC 10; 400 lets the default IPCs (up to 100 x 2^2 crops) run.
  c.benchmark.rded_mipc = 400
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
  # top1_best (max over those and the final evaluation; the reference CLI prints every
  # evaluation and reports no best)
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


# ------------------------------------------------------------------------- field checks, shared
# The checks of each config block live beside the code that owns the block (selection, combine,
# training, scoring, data, models, tune, dc); pca_jax.checks composes them. These helpers give
# every block the same one-line messages.
def is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_int(field: str, value, meaning: str = "") -> None:
  """A positive integer, else ValueError "<field> must be a positive integer<meaning>, got ..."."""
  if not is_int(value) or value < 1:
    raise ValueError(f"{field} must be a positive integer{meaning}, got {value!r}")


def check_int_at_least(field: str, value, minimum: int, meaning: str = "") -> None:
  if not is_int(value) or value < minimum:
    raise ValueError(f"{field} must be an integer >= {minimum}{meaning}, got {value!r}")


def check_number(field: str, value, ok, allowed: str) -> None:
  """A finite number with ok(value), else ValueError "<field> must be <allowed>, got ..."."""
  if not is_number(value) or not ok(value):
    raise ValueError(f"{field} must be {allowed}, got {value!r}")


def check_choice(field: str, value, choices, hint: str = "") -> None:
  """value in choices, else ValueError "unknown <field> <value>; choose one of <choices>"."""
  if value not in choices:
    raise ValueError(f"unknown {field} {value!r}; choose one of {tuple(choices)}{hint}")


def check_prefetch_mb(block: str, value) -> None:
  if not is_number(value) or value <= 0:
    raise ValueError(f"{block}.prefetch_mb must be a positive number of MiB (host memory for "
                     f"decoded batches read ahead), got {value!r}")


def check_unit_interval_pair(field: str, pair) -> tuple[float, float]:
  """(lo, hi) with 0 < lo <= hi <= 1 (crop scales), else a one-line ValueError."""
  pair = tuple(pair)
  if len(pair) != 2 or not all(is_number(v) for v in pair) or not 0 < pair[0] <= pair[1] <= 1:
    raise ValueError(f"{field} must satisfy 0 < min <= max <= 1, got {pair}")
  return pair


def uses_tune(config) -> bool:
  """Whether this config runs the tune search: stage tune, or the benchmark's pca_auto."""
  stages = parse_stages(config.stages)
  methods = [m.strip() for m in str(config.benchmark.methods).split(",")]
  return "tune" in stages or ("benchmark" in stages and "pca_auto" in methods)
