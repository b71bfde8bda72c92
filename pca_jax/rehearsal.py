"""--config.rehearse=True: a shipped (or any) config run end to end before GPU hours are spent.

The rehearsal keeps the config as it is (stages, methods, IPCs, grids, seeds, label modes,
models, batch sizes, every check) and changes only the data and the lengths:

  * data: generated images (data.source="synthetic", sources.SyntheticSource) of the real
    dataset's shape: its class count and class sizes (ImageNet: 732-1,300 per class, 1,281,167 in
    all; CIFAR: 5,000 / 500; an ImageFolder, parquet or the demo data: its own labels, read), and
    its eval split's size per class. rehearsal.classes = n > 0 keeps n classes of the real sizes
    (their quantiles, the smallest and the largest included, so every budget check still sees
    the smallest class); 0 keeps them all;
  * images: rehearsal.image_size px (0: the smallest size >= 8 that every grid of the config
    divides exactly when it divides the real size, so the same cells run and the same are
    skipped; cells of >= 4 px where a patch resolution trains on them);
  * lengths: every training run (scoring models, teacher, student, benchmark cells, tune
    candidates) stops after rehearsal.steps steps; SRe2L / CDA recover that many iterations;
  * rehearsal.thin=True: the benchmark's first seed and largest IPC only, the tune stage's first
    seed (every method, grid and label mode still runs once; the CI test of the shipped configs
    uses it to stay within minutes);
  * what the synthetic data cannot stand in for is left out, after its checks: a given teacher
    (weights or workdir; the rehearsal trains its own), external sets, precomputed scores (random
    scores of the synthetic set's length instead).

Before it runs, the rehearsal prints the plan of the REAL config (pca_jax.projection): cells,
images decoded and trained per stage, soft-label bytes, and the projected wall time for the
stated rates (config.plan: device img/s per stage kind, host cores). The plan is written to
<workdir>/rehearsal/plan.md and plan.json.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from pca_jax import fs
from pca_jax.projection import Rates, Shape, plan_markdown, project

# TFDS datasets whose shape is known without the data: (classes, smallest class, largest class,
# train images, eval images per class)
KNOWN_SHAPES = {
    "imagenet2012": (1000, 732, 1300, 1_281_167, 50),
    "cifar10": (10, 5000, 5000, 50_000, 1000),
    "cifar100": (100, 500, 500, 50_000, 100),
}


def spread_counts(classes: int, smallest: int, largest: int, total: int) -> np.ndarray:
  """[classes] class sizes from `smallest` to `largest` summing to `total`: most classes at the
  largest, a linear ramp of small ones from the smallest up (ImageNet's train split: 732 to 1,300
  images, 1,281,167 in all), the small ones spread over the class ids."""
  counts = np.full(classes, largest, np.int64)
  deficit = largest * classes - total
  if deficit <= 0 or smallest >= largest:
    return counts
  k = min(classes, max(1, round(2 * deficit / (largest - smallest))))
  ramp = np.linspace(smallest, largest, k, endpoint=False).round().astype(np.int64)
  extra = int(largest * k - ramp.sum()) - deficit  # > 0: the ramp misses too many images
  i = 0
  while extra and i < 4 * k * (largest - smallest):  # ramp[0] stays the smallest class
    j = 1 + i % max(1, k - 1)
    if extra > 0 and ramp[j] < largest:
      ramp[j], extra = ramp[j] + 1, extra - 1
    elif extra < 0 and ramp[j] > smallest:
      ramp[j], extra = ramp[j] - 1, extra + 1
    i += 1
  counts[np.linspace(0, classes - 1, k).round().astype(np.int64)] = ramp
  return counts


def check_rehearsal_block(config) -> None:
  """config.rehearse (a bool), the rehearsal's numbers and the plan's rates."""
  from pca_jax.config import check_int_at_least, check_number, check_positive_int
  if not isinstance(config.get("rehearse", False), bool):
    raise ValueError(f"rehearse must be True or False, got {config.rehearse!r}")
  r = config.rehearsal
  check_int_at_least("rehearsal.classes", r.classes, 0, " (0 = every class)")
  check_int_at_least("rehearsal.image_size", r.image_size, 0, " (0 = chosen from the grids)")
  check_positive_int("rehearsal.steps", r.steps)
  check_int_at_least("rehearsal.width", r.width, 0, " (0 = the model's)")
  if not isinstance(r.get("thin", False), bool):
    raise ValueError(f"rehearsal.thin must be True or False, got {r.thin!r}")
  if r.image_size and 0 < r.image_size < 4:
    raise ValueError(f"rehearsal.image_size must be 0 or >= 4, got {r.image_size}")
  for field in ("train_img_per_s", "forward_img_per_s", "decode_img_per_s_per_core"):
    check_number(f"plan.{field}", config.plan[field], lambda v: v > 0, "a positive number")
  check_positive_int("plan.host_cores", config.plan.host_cores)


def dataset_shape(config) -> Shape:
  """The shape of the config's dataset: known TFDS shapes from KNOWN_SHAPES, anything else from
  its own labels (the train and eval sources are opened; nothing is decoded)."""
  data = config.data
  if data.source == "tfds":
    if data.tfds_name not in KNOWN_SHAPES:
      raise ValueError(f"--config.rehearse knows the shapes of the TFDS datasets "
                       f"{', '.join(KNOWN_SHAPES)}, not {data.tfds_name!r}; rehearse with the "
                       "data itself as data.source=imagefolder (its labels are read)")
    classes, smallest, largest, total, per_class = KNOWN_SHAPES[data.tfds_name]
    return Shape(f"tfds:{data.tfds_name}", tuple(spread_counts(classes, smallest, largest,
                                                               total).tolist()),
                 classes * per_class)
  from pca_jax.data.load import load_source
  train = load_source(data, data.train_split)
  evaluate = load_source(data, data.eval_split)
  counts = np.bincount(np.asarray(train.labels), minlength=train.num_classes)
  return Shape(train.name.rsplit("/", 1)[0], tuple(int(c) for c in counts), len(evaluate))


def scaled_counts(counts, classes: int) -> np.ndarray:
  """`classes` of the class sizes (all when classes <= 0 or >= their number): evenly spaced
  quantiles of the sorted sizes, the smallest and the largest always among them."""
  counts = np.sort(np.asarray(counts, np.int64))
  if classes <= 0 or classes >= len(counts):
    return np.asarray(counts)
  return counts[np.linspace(0, len(counts) - 1, classes).round().astype(np.int64)]


def _grid_sizes(config) -> set[int]:
  """Every grid side the config may use (combine, the benchmark's sweep and RDED, tune)."""
  sides = {int(g) for g in config.combine.grid}
  sides |= {int(x) for g in config.benchmark.grids for x in g}
  sides |= {int(x) for g in config.tune.grids for x in g}
  sides.add(int(config.benchmark.rded_factor))
  return sides


def rehearsal_image_size(config) -> int:
  """rehearsal.image_size, or the smallest size >= 8 (the real one when that is <= 32) that every
  grid side divides exactly when it divides the real size, with >= 4 px cells for the sides
  that divide it (see the module docstring)."""
  if config.rehearsal.image_size:
    return int(config.rehearsal.image_size)
  real = int(config.data.image_size)
  if real <= 32:
    return real
  sides = _grid_sizes(config)
  for size in range(8, real + 1):
    if all((size % g == 0) == (real % g == 0) and (real % g or size // g >= 4 or g == 1)
           for g in sides):
      return size
  return real


def _placeholder_scores(config, n: int) -> str:
  """A .npy of n random scores in the temp dir (the rehearsal's stand-in for score.scores_path)."""
  import tempfile
  path = os.path.join(tempfile.gettempdir(), f"pca_jax_rehearsal_scores_{n}.npy")
  np.save(path, np.random.default_rng(0).random(n).astype(np.float32))
  return path


def _check_given_paths(config) -> None:
  """What the rehearsal leaves out is still checked: a given teacher and precomputed scores
  exist, external sets are directories."""
  bench = config.benchmark
  for field, value, is_dir in (("benchmark.teacher_weights", bench.teacher_weights, False),
                               ("benchmark.teacher_workdir", bench.teacher_workdir, True),
                               ("score.scores_path", config.score.scores_path, False)):
    if value:
      fs.check_reachable(value)  # an object store answers within PCA_JAX_STORE_TIMEOUT_S
    if value and not (fs.path(value).is_dir() if is_dir else fs.path(value).is_file()):
      raise ValueError(f"{field} {value} does not exist; fix the path (the rehearsal checks it, "
                       "though it runs without it)")
  from pca_jax.dc.stages import external_paths
  for name, path in external_paths(config).items():
    fs.check_reachable(path)
    if not fs.path(path).is_dir():
      raise ValueError(f"benchmark.external set {name!r}: {path} is not a directory")


def rehearsal_config(config, shape: Shape):
  """The config the rehearsal runs: synthetic data of `shape` (scaled to rehearsal.classes),
  rehearsal_image_size, rehearsal.steps per training run (see the module docstring)."""
  r = config.rehearsal
  c = copy.deepcopy(config)
  counts = scaled_counts(shape.counts, int(r.classes))
  per_class = max(1, round(shape.eval_images / shape.num_classes))
  size = rehearsal_image_size(config)
  c.data.source = "synthetic"
  c.data.synthetic.of = shape.name
  c.data.synthetic.counts = tuple(int(x) for x in counts)
  c.data.synthetic.eval_counts = (per_class,) * len(counts)
  if c.score.image_size:
    c.score.image_size = max(4, round(size * c.score.image_size / c.data.image_size))
  c.data.image_size = size
  for block in (c.train, c.score.train, c.benchmark.teacher):
    block.max_steps = int(r.steps)
  c.benchmark.synthesis.iterations = min(int(c.benchmark.synthesis.iterations), int(r.steps))
  c.benchmark.teacher_weights = c.benchmark.teacher_workdir = c.benchmark.external = ""
  if c.score.scores_path:
    c.score.scores_path = _placeholder_scores(c, int(counts.sum()))
  if r.width:
    c.model.width = int(r.width)
  if r.thin:
    c.benchmark.seeds = tuple(c.benchmark.seeds)[:1]
    c.benchmark.ipcs = (max(int(i) for i in c.benchmark.ipcs),)
    c.tune.seeds = tuple(c.tune.seeds)[:1]
  return c


def prepare(config) -> tuple:
  """(the rehearsal's config, the real config's plan as a dict, the plan as Markdown)."""
  _check_given_paths(config)
  shape = dataset_shape(config)
  plan = project(config, shape, Rates.from_config(config.plan))
  rc = rehearsal_config(config, shape)
  counts = rc.data.synthetic.counts
  md = plan_markdown(plan, "Plan of the real run (projected; nothing of it runs here)")
  md += (f"\nRehearsal: {len(counts)} of {shape.num_classes} classes "
         f"({min(counts)}-{max(counts)} images each, {sum(counts)} in all), "
         f"{rc.data.image_size} px synthetic images, {rc.rehearsal.steps} steps per training run"
         f"{f', model width {rc.model.width}' if config.rehearsal.width else ''}"
         f"{_thin_note(rc) if config.rehearsal.thin else ''}.\n")
  return rc, plan, md


def _thin_note(rc) -> str:
  return (f"; thinned (rehearsal.thin): benchmark seed {rc.benchmark.seeds[0]} at IPC "
          f"{rc.benchmark.ipcs[0]} only")


def write_plan(workdir, plan: dict, md: str) -> None:
  """<workdir>/rehearsal/plan.md and plan.json (process 0)."""
  fs.save_text(fs.join(workdir, "rehearsal", "plan.md"), md)
  fs.save_json(fs.join(workdir, "rehearsal", "plan.json"), plan)
