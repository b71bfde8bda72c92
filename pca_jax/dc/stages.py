"""The DC benchmark's stages: `teacher` (for soft labels and rded_like) and `benchmark`.

The benchmark runs every planned cell (method x grid x IPC x label mode x seed x resolution): it
builds the method's compressed set (benchmark/sets/<set>/, in the store format), trains the same
student on it with the same schedule (config.train) and evaluates it on the real test/val split
(benchmark/runs/<cell>/row.json). Sets and cells are caches that carry the fingerprint of what
made them (the set: method, budget, data, the score / teacher outputs it read; the cell: its set,
the student's effective config, the evaluation data, the teacher for soft labels); one made under
another fingerprint is removed and rebuilt, never reused.
"""

from __future__ import annotations

import copy
import hashlib
import re

import numpy as np

from pca_jax import fs, rng
from pca_jax.config import config_values, fingerprint
from pca_jax.dc import tables
from pca_jax.dc.methods import EXTERNAL, METHODS, needs_scores
from pca_jax.dc.plan import cell_id, needs_teacher, plan_cells

TABLES = ("benchmark.csv", "benchmark.md", "benchmark.json", "benchmark.png")


# ---------------------------------------------------------------------------------- the teacher
def load_teacher(run):
  """(apply_fn on normalised views, variables) of the benchmark's teacher."""
  from pca_jax.models.resnet import model_from_config
  from pca_jax.training import load_variables
  cfg = run.config
  variables = load_variables(cfg.benchmark.teacher_workdir or run.path("teacher"))
  model = model_from_config(cfg.model, run.train_source.num_classes)
  return (lambda v, x: model.apply(v, x, train=False)), variables


def teacher_derived(config) -> dict:
  """What the teacher stage's fingerprint knows of a given teacher_workdir: its checkpoint steps
  and their newest modification time (a teacher retrained in place reruns the stage, and with it
  every soft-label cell and teacher-built set)."""
  workdir = config.benchmark.teacher_workdir
  if not workdir:
    return {}
  ckpt = fs.join(workdir, "checkpoints")
  entries = sorted(ckpt.iterdir()) if ckpt.is_dir() else []
  files = [q for p in entries if p.is_dir() for q in p.iterdir() if q.is_file()]
  return {"teacher_checkpoints": [[p.name for p in entries],
                                  max((fs.file_stats(q)[1] for q in files), default=0)]}


def stage_teacher(run, stage) -> dict:
  from pca_jax.training import load_variables, train
  cfg = run.config
  if cfg.benchmark.teacher_workdir:
    load_variables(cfg.benchmark.teacher_workdir)  # fail early if unreadable
    return {"teacher_workdir": cfg.benchmark.teacher_workdir}
  mc = run.trainer_config(cfg.benchmark.teacher, rng.derive_seed(cfg.seed, "teacher"))
  _, m = train(mc, run.path("teacher"), run.train_source, run.eval_source, desc="teacher",
               log=run.log, fingerprint=stage.fingerprint)
  run.log(f"[teacher] top-1 {m['eval_top1']:.2f}% on the {cfg.data.eval_split} split")
  return {"eval_top1": m["eval_top1"], "epochs": cfg.benchmark.teacher.epochs}


# ----------------------------------------------------------------------------------- external sets
def external_paths(config) -> dict[str, str]:
  spec = str(config.benchmark.external or "")
  out = {}
  for item in [s for s in spec.split(",") if s.strip()]:
    if "=" not in item:
      raise ValueError(f"benchmark.external item {item!r} must be name=/path/to/imagefolder")
    name, path = item.split("=", 1)
    out[name.strip()] = path.strip()
  return out


def external_derived(config) -> dict:
  """What the benchmark stage's fingerprint knows of external sets: per path, the number, total
  size and newest modification time of its files (a changed set reruns the stage)."""
  out = {}
  for name, path in external_paths(config).items():
    files = fs.files_under(path) if fs.path(path).is_dir() else []
    stats = [fs.file_stats(p) for p in files]
    out[name] = [path, len(stats), sum(size for size, _ in stats),
                 max((mtime for _, mtime in stats), default=0)]
  return {"external": out}


def load_external(run, path: str):
  """An ImageFolder compressed set -> (images uint8 [M,S,S,3], labels mapped to the source's ids)."""
  from pca_jax.data import pipeline
  from pca_jax.data.sources import ImageFolderSource
  ext = ImageFolderSource(path)
  names = run.train_source.class_names
  folders = ext.class_names
  if set(folders) <= set(names):
    mapping = [names.index(f) for f in folders]
  elif all(re.match(r"^\d+_", f) for f in folders):  # export_imagefolder's "<id>_<name>"
    mapping = [int(f.split("_", 1)[0]) for f in folders]
  elif len(folders) == len(names):
    mapping = list(range(len(names)))  # same count: assume the same sorted order
  else:
    raise ValueError(f"external set {path} has {len(folders)} class folders that do not match the "
                     f"{len(names)} classes of the dataset; name folders like the dataset's classes")
  size = run.config.data.image_size
  images = np.concatenate([b for b, _ in pipeline.iter_images(ext, np.arange(len(ext)), size, 256,
                                                              fit="center_crop")])
  labels = np.asarray([mapping[label] for label in ext.labels], np.int32)
  return images, labels


# ---------------------------------------------------------------------------------------- sets
class SetContext:
  """What a method's build function may read: this run's scores and (lazily) its teacher."""

  def __init__(self, run):
    self.run = run
    self._teacher = None

  def scores(self, name: str) -> np.ndarray:
    return fs.load_npy(self.run.require(f"scores_{name}.npy", "score"))

  def teacher(self):
    if self._teacher is None:
      self._teacher = load_teacher(self.run)
    return self._teacher


def set_fingerprint(run, stage, method: str, ipc: int, grid, seed: int) -> str:
  """A set depends on its method, budget and seed (if seeded), the training data, how images are
  fit into cells, the method's own fields, and the ids of the score / teacher outputs it read."""
  from pca_jax.pca import TRAIN_DATA
  m = METHODS[method]
  upstream = {}
  if m.score:
    upstream["score"] = stage.upstream["score"]["id"]
  if m.teacher:
    upstream["teacher"] = stage.upstream["teacher"]["id"]
  return fingerprint("set", method, int(ipc), list(grid), int(seed) if m.seeded else None,
                     config_values(run.config, (*TRAIN_DATA, "combine.fit", *m.fields)), upstream)


class BenchmarkCache:
  """The fingerprints of the sets and the rows of the cells already in benchmark/, read once when
  the stage starts (before any process writes), so that every process of a multi-process run
  takes the same cached / rebuild decisions while process 0 writes."""

  def __init__(self, run):
    self.sets: dict[str, str | None] = {}
    self.rows: dict[str, dict] = {}
    for kind, store in (("sets", self.sets), ("runs", self.rows)):
      root = run.path("benchmark", kind)
      for d in sorted(root.iterdir()) if root.is_dir() else []:
        f = d / ("manifest.json" if kind == "sets" else "row.json")
        if f.is_file():
          content = fs.read_json(f)
          store[d.name] = content.get("fingerprint") if kind == "sets" else content


def build_set(run, stage, ctx: SetContext, cache: BenchmarkCache, method: str, ipc: int, grid,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of one method's compressed set: from benchmark/sets/ if it was made under
  the same fingerprint, else built and written there."""
  from pca_jax.data.store import load_compressed, write_compressed
  from pca_jax.pca.stages import set_manifest
  m = METHODS[method]
  fp = set_fingerprint(run, stage, method, ipc, grid, seed)
  name = f"{method}-ipc{ipc}-g{grid[0]}x{grid[1]}" + (f"-s{seed}" if m.seeded else "")
  path = run.path("benchmark", "sets", name)
  if cache.sets.get(name) == fp:
    cs = load_compressed(path)
    return cs.images, cs.labels
  if name in cache.sets:
    run.log(f"[benchmark] set {name} was made from other inputs: rebuilding it")
  images, labels, source = m.build(run, ctx, ipc * grid[0] * grid[1], grid, seed)
  manifest = set_manifest(run, method, ipc, grid, seed, source, fingerprint=fp)
  write_compressed(path, images, labels, manifest, class_names=run.train_source.class_names)
  cache.sets[name] = fp
  return images, labels


# --------------------------------------------------------------------------------------- cells
def cell_trainer_config(run, cell: dict, crop: str):
  """The student's trainer config for one cell: config.train with the cell's crop, grid, labels
  and resolution, no periodic evaluation, and the cell's own seed."""
  tc = copy.deepcopy(run.config.train)
  tc.crop = crop
  tc.grid = tuple(cell["grid"])
  tc.label_mode = cell["label"]
  tc.resolution = cell.get("resolution", "full")
  tc.eval_every_epochs = 0
  return run.trainer_config(tc, rng.derive_seed(run.config.seed, "cell", cell["seed"]))


def cell_fingerprint(run, stage, set_identity: str, mc, label: str) -> str:
  from pca_jax.pca import EVAL_DATA
  teacher = stage.upstream["teacher"]["id"] if label == "soft" else None
  return fingerprint("cell", set_identity, config_values(mc, ("model", "train")),
                     config_values(run.config, EVAL_DATA), teacher)


def _external_digest(images: np.ndarray, labels: np.ndarray) -> str:
  return fingerprint("external", np.asarray(labels).tolist(),
                     hashlib.sha256(np.ascontiguousarray(images)).hexdigest())


def _cell_set(run, stage, cell, externals) -> tuple[str, str]:
  """(identity of the cell's compressed set, the student's crop on it), without loading it."""
  method = cell["method"]
  if method.startswith(f"{EXTERNAL}:"):
    return _external_digest(*externals[method.split(":", 1)[1]]), "rrc"
  return (set_fingerprint(run, stage, method, cell["ipc"], cell["grid"], cell["seed"]),
          METHODS[method].crop)


def _cell_data(run, stage, ctx, cache, cell, externals) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of a cell's compressed set, built (or taken from the cache) for it."""
  method = cell["method"]
  if method.startswith(f"{EXTERNAL}:"):
    return externals[method.split(":", 1)[1]]
  return build_set(run, stage, ctx, cache, method, cell["ipc"], cell["grid"], cell["seed"])


def run_cell(run, stage, ctx, cache, cell, externals, teacher_fn) -> dict:
  """Trains and evaluates one cell, or returns its row if it was made under the same fingerprint
  (checked before the set is built or loaded: a cached IPC100 cell at 224px reads no 15 GB set)."""
  from pca_jax.training import InMemoryData, train
  from pca_jax.training.views import view_sizes
  cfg = run.config
  cid = cell_id(cell)
  set_identity, crop = _cell_set(run, stage, cell, externals)
  mc = cell_trainer_config(run, cell, crop)
  fp = cell_fingerprint(run, stage, set_identity, mc, cell["label"])
  out = run.path("benchmark", "runs", cid.replace(":", "_"))
  cached = cache.rows.get(out.name)
  if cached is not None:
    if cached.get("fingerprint") == fp:
      return cached
    fs.remove(out / "row.json")  # made from other inputs: the trainer drops its stale checkpoints
  images, labels = _cell_data(run, stage, ctx, cache, cell, externals)
  run.log(f"[benchmark] cell {cid}")
  num_classes = run.train_source.num_classes
  _, m = train(mc, out, InMemoryData(images, labels, num_classes), run.eval_source, desc=cid,
               log=run.log, teacher=teacher_fn() if cell["label"] == "soft" else None,
               fingerprint=fp)
  n_images = int(len(images))
  external = cell["method"].startswith(EXTERNAL)
  per_class = None if external else cell["ipc"] * cell["grid"][0] * cell["grid"][1]
  row = {**cell, "grid": list(cell["grid"]), "top1": m["eval_top1"], "top5": m["eval_top5"],
         "stored_images": n_images, "source_images_per_class": per_class,
         "bytes_images": int(images[0].nbytes) * n_images,
         "bytes_soft_labels": tables.soft_label_bytes(n_images, mc.train.epochs, num_classes,
                                                      cfg.benchmark.soft_label_bytes_per_value),
         "train_wall_s": m["train_wall_s"], "train_img_per_s": m["train_img_per_s"],
         "resolution": mc.train.resolution, "view_size": view_sizes(mc.train)[0],
         "fingerprint": fp}
  fs.save_json(out / "row.json", row)
  run.log(f"[benchmark] {cid}: top-1 {row['top1']:.2f}%")
  return row


def check_benchmark(run) -> None:
  """Up front: the plan is valid, every score a method reads is computed, every external set
  exists."""
  from pca_jax.dc.plan import method_names
  from pca_jax.scoring import SCORES
  cfg = run.config
  for name in method_names(cfg.benchmark):
    score = METHODS[name].score if name in METHODS else None
    flag = SCORES[score].requires if score else None
    if flag and not cfg.score[flag]:
      raise ValueError(f"benchmark method {name} ranks by {score} scores, which the score stage "
                       f"computes only with --config.score.{flag}=True")
  for name, path in external_paths(cfg).items():
    if not fs.path(path).is_dir():
      raise ValueError(f"benchmark.external set {name!r}: {path} is not a directory; pass "
                       "name=/path/to/imagefolder")
  plan_cells(cfg.benchmark, cfg.combine.grid, cfg.data.image_size,
             {name: 1 for name in external_paths(cfg)})


def benchmark_needs(config) -> tuple[str, ...]:
  return (("score",) if needs_scores(config.benchmark) else ()) + \
      (("teacher",) if needs_teacher(config.benchmark) else ())


def stage_benchmark(run, stage) -> dict:
  """Runs every planned cell (cached ones are reused); writes the tables and the plot."""
  cfg = run.config
  bench = cfg.benchmark
  externals = {name: load_external(run, p) for name, p in external_paths(cfg).items()}
  ext_ipc = {name: int(np.bincount(labels).max()) for name, (_, labels) in externals.items()}
  cells, skipped = plan_cells(bench, cfg.combine.grid, cfg.data.image_size, ext_ipc)
  ctx = SetContext(run)
  cache = BenchmarkCache(run)
  run.barrier("pca_jax_benchmark_cache_read")  # nobody writes before every process has read
  smallest = int(np.bincount(run.train_source.labels).min())
  rows = []
  for i, cell in enumerate(cells):
    need = cell["ipc"] * cell["grid"][0] * cell["grid"][1]
    if cell["method"] in METHODS and not METHODS[cell["method"]].fits(smallest, need):
      skipped.append({**cell, "reason": f"needs {need} images per class, smallest class has "
                                        f"{smallest}"})
      continue
    run.log(f"[benchmark] {i + 1}/{len(cells)}: {cell_id(cell)}")
    rows.append(run_cell(run, stage, ctx, cache, cell, externals, ctx.teacher))

  agg = tables.aggregate(rows)
  title = f"DC benchmark: {run.train_source.name}, {cfg.model.name} (width {cfg.model.width}), " \
          f"{cfg.train.epochs} epochs, test top-1 %"
  md = tables.markdown_table(agg, title) + "\n" + tables.grid_table(agg) + "\n" + \
      tables.resolution_table(agg)
  if skipped:
    lines = []
    for s in skipped:  # one line per (method, grid, ipc), whatever the label modes and seeds
      line = (f"- {s['method']} grid {s['grid'][0]}x{s['grid'][1]}"
              + (f" IPC {s['ipc']}" if "ipc" in s else "") + f": {s['reason']}")
      if line not in lines:
        lines.append(line)
    md += "\nNot run:\n\n" + "\n".join(lines) + "\n"
  md += (f"\nSeeds: {list(bench.seeds)} (mean ± sample std when > 1). Soft labels: KL to the "
         f"teacher at T={cfg.train.temperature} on every view, CutMix alpha "
         f"{cfg.train.cutmix_alpha}. Every method trains the same student with the same schedule; "
         "pca uses patch-constrained crops, the others RandomResizedCrop of the stored image.\n")
  tables.write_csv(rows, run.path("benchmark.csv"))
  fs.save_text(run.path("benchmark.md"), md)
  fs.save_json(run.path("benchmark.json"), {"rows": rows, "aggregate": agg, "skipped": skipped})
  if agg:
    tables.plot(agg, run.path("benchmark.png"), title)
  run.log(f"[benchmark] {len(rows)} cells -> {run.path('benchmark.md')}")
  return {"cells": len(rows), "skipped": len(skipped)}
