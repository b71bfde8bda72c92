"""The shared base config (paper defaults) and validation with one-line, fixable errors.

configs/*.py call `base_config()` and override only what differs. Every number the paper fixes is a
field here; the numbers the paper does NOT fix (scoring model/epochs/K, grid, crop scale in a patch)
are fields too, with the defaults argued in the README.
"""

from __future__ import annotations

import os

import ml_collections

from pca_jax import train as train_lib

STAGES = ("score", "teacher", "select", "combine", "store", "train", "eval", "benchmark", "report")
PCA_STAGES = ("score", "select", "combine", "store", "train", "eval", "report")
SCORE_KINDS = ("el2n", "entropy")
SELECT_MODES = ("easy", "hard", "random")
FITS = ("squash", "center_crop")


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

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet18"
  c.model.width = 64
  c.model.stem = "imagenet"
  c.model.dtype = "float32"

  # Prune: EL2N from K early-trained models on the FULL train set (data_diet style).
  c.score = ml_collections.ConfigDict()
  c.score.kind = "el2n"              # score used for selection: "el2n" | "entropy"
  c.score.num_models = 4             # K, averaged
  c.score.batch_size = 512           # forward pass batch (global)
  c.score.scores_path = ""           # precomputed [N] scores (.npy) instead of training
  c.score.forgetting = False         # also count forgetting events (one correctness pass/epoch)
  c.score.train = train_lib.default_train_config()
  c.score.train.update(dict(
      epochs=10, batch_size=1024, optimizer="sgd", lr=0.1, scale_lr_by_batch=True,
      base_batch_size=256, weight_decay=1e-4, momentum=0.9, nesterov=True, schedule="cosine",
      schedule_unit="step", warmup_epochs=1, crop="rrc", eval_every_epochs=0,
      checkpoint_every_steps=2000, log_every_steps=100))

  c.select = ml_collections.ConfigDict()
  c.select.ipc = 10
  c.select.mode = "easy"             # reversed EL2N (PCA); "hard" = classic EL2N; "random"

  c.combine = ml_collections.ConfigDict()
  c.combine.grid = (2, 2)
  c.combine.fit = "squash"           # whole image resized into its cell (no cropping)

  # Evaluation training: the reference benchmark's hard-label recipe.
  c.train = train_lib.default_train_config()
  c.train.update(dict(epochs=300, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.01,
                      schedule="cosine", schedule_unit="epoch", crop="patch", crop_scale=(0.08, 1.0),
                      eval_every_epochs=50, checkpoint_every_steps=1000, eval_batch_size=500))

  # The DC benchmark (stages teacher, benchmark): see pca_jax/benchmark.py.
  c.benchmark = ml_collections.ConfigDict()
  c.benchmark.methods = "random,el2n_easy,el2n_hard,entropy_easy,entropy_hard,forgetting,rded_like,pca"
  c.benchmark.ipcs = (10, 50, 100)
  c.benchmark.label_modes = ("hard", "soft")
  c.benchmark.seeds = (0,)
  c.benchmark.grids = ((1, 1), (2, 2), (3, 3))   # the PCA grid sweep at equal bytes
  c.benchmark.resolutions = ("full",)   # add "patch" (and/or "blur") for mosaic methods
  c.benchmark.external = ""          # "name=/path/imagefolder,name2=/path2"
  c.benchmark.teacher_workdir = ""   # a finished pca_jax train workdir; empty = train one
  c.benchmark.soft_label_bytes_per_value = 2    # fp16, for the storage column
  c.benchmark.rded_pool = 300        # random candidate images per class for rded_like
  c.benchmark.rded_crops_per_image = 5
  c.benchmark.rded_crop_scale = (0.25, 1.0)
  c.benchmark.teacher = train_lib.default_train_config()
  c.benchmark.teacher.update(dict(
      epochs=90, batch_size=1024, optimizer="sgd", lr=0.1, scale_lr_by_batch=True,
      base_batch_size=256, weight_decay=5e-5, schedule="cosine", schedule_unit="step",
      warmup_epochs=2, crop="rrc", eval_every_epochs=10, checkpoint_every_steps=2000,
      log_every_steps=100))
  return c


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


def validate(config) -> None:
  """Raises ValueError naming the field for anything that cannot work."""
  from pca_jax.models.resnet import DTYPES, MODELS
  from pca_jax.data.sources import SOURCES
  from pca_jax.combine import check_grid
  from pca_jax.augment import CROP_KINDS

  parse_stages(config.stages)
  if config.data.source not in SOURCES:
    raise ValueError(f"unknown data.source {config.data.source!r}; choose one of {SOURCES}")
  if config.model.name not in MODELS:
    raise ValueError(f"unknown model.name {config.model.name!r}; choose one of {sorted(MODELS)}")
  if config.model.dtype not in DTYPES:
    raise ValueError(f"unknown model.dtype {config.model.dtype!r}; choose one of {sorted(DTYPES)}")
  if config.model.stem not in ("imagenet", "small"):
    raise ValueError(f"unknown model.stem {config.model.stem!r}; use imagenet or small")
  if config.score.kind not in SCORE_KINDS:
    raise ValueError(f"unknown score.kind {config.score.kind!r}; choose one of {SCORE_KINDS}")
  if config.score.num_models < 1:
    raise ValueError(f"score.num_models must be >= 1, got {config.score.num_models}")
  if config.select.mode not in SELECT_MODES:
    raise ValueError(f"unknown select.mode {config.select.mode!r}; choose one of {SELECT_MODES}")
  if not isinstance(config.select.ipc, int) or config.select.ipc < 1:
    raise ValueError(f"select.ipc must be a positive integer, got {config.select.ipc!r}")
  if config.combine.fit not in FITS:
    raise ValueError(f"unknown combine.fit {config.combine.fit!r}; choose one of {FITS}")
  grid = tuple(config.combine.grid)
  size = config.data.image_size
  if len(grid) != 2 or min(grid) < 1 or max(grid) > 8:
    raise ValueError(f"combine.grid={grid} is out of range; use (rows, cols) between 1 and 8")
  try:
    check_grid(grid, (size, size))
  except ValueError:
    raise ValueError(f"combine.grid={grid} does not divide data.image_size={size}; use an "
                     f"image size that is a multiple of {grid[0]} and {grid[1]}") from None
  for name, tc in (("train", config.train), ("score.train", config.score.train),
                   ("benchmark.teacher", config.benchmark.teacher)):
    if tc.crop not in CROP_KINDS:
      raise ValueError(f"unknown {name}.crop {tc.crop!r}; choose one of {CROP_KINDS}")
    for field in ("epochs", "batch_size", "eval_batch_size", "log_every_steps",
                  "checkpoint_every_steps", "prefetch"):
      if tc[field] < 1:
        raise ValueError(f"{name}.{field} must be >= 1, got {tc[field]}")
    if name == "train" and tc.resolution != "full":
      probe = tc.copy_and_resolve_references()
      probe.image_size, probe.grid = size, tuple(config.combine.grid)
      try:
        train_lib.view_sizes(probe)
      except ValueError as e:
        raise ValueError(f"{e} (combine.grid={tuple(config.combine.grid)}, "
                         f"data.image_size={size})") from None
    if tc.label_mode not in ("hard", "soft"):
      raise ValueError(f"unknown {name}.label_mode {tc.label_mode!r}; use hard or soft")
    if not 0 < tc.crop_scale[0] <= tc.crop_scale[1] <= 1:
      raise ValueError(f"{name}.crop_scale must satisfy 0 < min <= max <= 1, got {tc.crop_scale}")
  if "benchmark" in parse_stages(config.stages):
    from pca_jax.benchmark import plan_cells
    plan_cells(config.benchmark, config.combine.grid, size, {"x": 1})
  if config.data.source == "imagefolder" and not config.data.data_dir:
    raise ValueError("data.source='imagefolder' needs --config.data.data_dir=<root with "
                     f"{config.data.train_split}/ and {config.data.eval_split}/ class folders>")
