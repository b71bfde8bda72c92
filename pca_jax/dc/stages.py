"""The DC benchmark's stages: `teacher` (soft labels, sre2l / cda / rded) and `benchmark`.

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
import time

import numpy as np

from pca_jax import fs, rng
from pca_jax.config import EVAL_DATA, TRAIN_DATA, config_values, fingerprint
from pca_jax.dc import tables
from pca_jax.dc.methods import EXTERNAL, METHODS
from pca_jax.dc.plan import cell_id, method_names, needs_scores, needs_teacher, plan_cells, \
  students, table_student
from pca_jax.tracking import Tracker

TABLES = ("benchmark.csv", "benchmark.md", "benchmark.json", "benchmark.png")


# ---------------------------------------------------------------------------------- the teacher
def _teacher_model(run):
  """config.model for the dataset; a ViT's position embedding at the stored image size (a
  teacher labels views at that size, and torchvision weights load at it)."""
  from pca_jax.models.registry import model_from_config
  return model_from_config(run.config.model, run.train_source.num_classes,
                           run.config.data.image_size)


def teacher_variables(run):
  """The teacher's variables: a torchvision state_dict (benchmark.teacher_weights), a given pca_jax
  run (benchmark.teacher_workdir) or the one the teacher stage trained."""
  from pca_jax.training import load_variables
  bench = run.config.benchmark
  if bench.teacher_weights:
    from pca_jax.models.torch_weights import load_torchvision
    return load_torchvision(bench.teacher_weights, _teacher_model(run))
  return load_variables(bench.teacher_workdir or run.path("teacher"))


def load_teacher(run):
  """(apply_fn on normalised views, variables) of the benchmark's teacher."""
  model = _teacher_model(run)
  return (lambda v, x: model.apply(v, x, train=False)), teacher_variables(run)


def teacher_derived(config) -> dict:
  """What the teacher stage's fingerprint knows of a given teacher: the weights file's size and
  modification time, or a teacher_workdir's checkpoint steps and their newest modification time
  (a teacher replaced in place reruns the stage, and with it every soft-label cell and
  teacher-built set)."""
  weights, workdir = config.benchmark.teacher_weights, config.benchmark.teacher_workdir
  if weights:
    return {"teacher_weights": list(fs.file_stats(weights)) if fs.path(weights).is_file() else None}
  if not workdir:
    return {}
  ckpt = fs.join(workdir, "checkpoints")
  entries = sorted(ckpt.iterdir()) if ckpt.is_dir() else []
  files = [q for p in entries if p.is_dir() for q in p.iterdir() if q.is_file()]
  return {"teacher_checkpoints": [[p.name for p in entries],
                                  max((fs.file_stats(q)[1] for q in files), default=0)]}


def own_teacher_note(config, num_classes: int) -> str:
  """For an ImageNet-sized run with soft labels and no given teacher: the line saying that the
  soft-label rows come from pca_jax's own teacher, not the reference's; else ""."""
  bench, data = config.benchmark, config.data
  imagenet = num_classes >= 1000 or "imagenet2012" in (
      data.tfds_name if data.source == "tfds" else
      data.synthetic.of if data.source == "synthetic" else "")  # a rehearsal: tfds:imagenet2012
  if not imagenet or "soft" not in tuple(bench.label_modes) or bench.teacher_weights or \
      bench.teacher_workdir:
    return ""
  return (f"the soft labels come from pca_jax's own teacher ({bench.teacher.epochs} epochs of "
          f"{config.model.name} trained by the teacher stage), not the reference benchmark's "
          "(torchvision's pretrained ResNet-18): soft rows are not comparable with the paper's; "
          "pass --config.benchmark.teacher_weights=/path/resnet18-f37072fd.pth for those")


def check_teacher(run) -> None:
  """Up front: at most one given teacher, and it exists; an ImageNet-sized run that trains its
  own soft-label teacher says so (own_teacher_note)."""
  bench = run.config.benchmark
  note = own_teacher_note(run.config, run.train_source.num_classes)
  if note:
    run.log(f"[teacher] NOTE: {note}")
  if bench.teacher_weights and bench.teacher_workdir:
    raise ValueError("benchmark.teacher_weights and benchmark.teacher_workdir are both set; give "
                     "one teacher")
  if bench.teacher_weights and not fs.path(bench.teacher_weights).is_file():
    raise ValueError(f"benchmark.teacher_weights {bench.teacher_weights} does not exist; pass the "
                     f"path of a torchvision {run.config.model.name} state_dict (.pth)")
  if bench.teacher_weights:  # a file of another architecture, width or class count: now, not
    teacher_variables(run)   # after the score stage


def stage_teacher(run, stage) -> dict:
  from pca_jax.training import evaluate, train
  cfg = run.config
  bench = cfg.benchmark
  if bench.teacher_weights or bench.teacher_workdir:
    variables = teacher_variables(run)  # fails early if unreadable or of another architecture
    ev = evaluate(variables, run.eval_source, _teacher_model(run).apply,
                  eval_size=cfg.data.image_size, crop_fraction=cfg.data.eval_crop_fraction,
                  batch_size=bench.teacher.eval_batch_size, num_threads=cfg.data.num_threads)
    given = {"teacher_weights": bench.teacher_weights} if bench.teacher_weights else \
        {"teacher_workdir": bench.teacher_workdir}
    run.log(f"[teacher] given teacher: top-1 {ev['top1']:.2f}% on the {cfg.data.eval_split} split")
    return {**given, "eval_top1": ev["top1"]}
  mc = run.trainer_config(bench.teacher, rng.derive_seed(cfg.seed, "teacher"))
  _, m = train(mc, run.path("teacher"), run.train_source, run.eval_source, desc="teacher",
               log=run.log, fingerprint=stage.fingerprint)
  run.log(f"[teacher] top-1 {m['eval_top1']:.2f}% on the {cfg.data.eval_split} split")
  return {"eval_top1": m["eval_top1"], "epochs": bench.teacher.epochs}


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


def external_class_ids(names: list[str], dataset_names: list[str], what: str,
                       named: bool = True) -> list[int]:
  """The dataset class id of each class of an external set, by name.

  names: the set's class names (ImageFolder folders, or a parquet ClassLabel's names); named=False:
  they are bare integer ids (a parquet class_id without names). A name matches a dataset class of
  the same name, "<id>_<name>" (export_imagefolder's folders) matches id <id> if <name> is that
  class's name, and an all-digit name is a class id. Anything else is a ValueError naming the first
  class that matches nothing: a set whose classes are not the dataset's is never evaluated.
  """
  index = {n: i for i, n in enumerate(dataset_names)}
  ids = []
  for name in names:
    m = re.match(r"^(\d+)_(.*)$", name)
    if named and name in index:
      ids.append(index[name])
    elif named and m and int(m.group(1)) < len(dataset_names) and \
        dataset_names[int(m.group(1))] == m.group(2):
      ids.append(int(m.group(1)))
    elif name.isdigit() and int(name) < len(dataset_names):
      ids.append(int(name))
    else:
      raise ValueError(f"external set {what}: class {name!r} is not a class of the dataset "
                       f"({len(dataset_names)} classes, e.g. {dataset_names[0]!r}); name its "
                       "classes like the dataset's, '<id>_<name>', or by class id")
  return ids


def open_external(run, path: str):
  """(source, dataset class id of each of its classes) of an external compressed set: an ImageFolder
  or a Hugging Face parquet directory (the layout `huggingface-cli download` leaves)."""
  from pca_jax.data.parquet import ParquetSource, is_parquet_dir
  from pca_jax.data.sources import ImageFolderSource
  if is_parquet_dir(path):
    ext = ParquetSource(path)
    names = run.train_source.class_names
    # class_id is the dataset's class index; ClassLabel names (e.g. "tench" where the dataset has
    # "n01440764") are matched only when they are the dataset's names
    named = ext.has_class_names and set(ext.class_names) <= set(names)
    return ext, external_class_ids(ext.class_names if named else
                                   [str(i) for i in range(len(ext.class_names))], names, path,
                                   named=named)
  ext = ImageFolderSource(path)
  return ext, external_class_ids(ext.class_names, run.train_source.class_names, path)


def load_external(run, path: str):
  """An external compressed set -> (images uint8 [M, S, S, 3], labels as the source's ids)."""
  from pca_jax.data import pipeline
  ext, mapping = open_external(run, path)
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
  m = METHODS[method]
  upstream = {}
  if m.score:
    upstream["score"] = stage.upstream["score"]["id"]
  if m.teacher:
    upstream["teacher"] = stage.upstream["teacher"]["id"]
  return fingerprint("set", method, int(ipc), list(grid), int(seed) if m.seeded else None,
                     config_values(run.config, (*TRAIN_DATA, "combine.fit", *m.fields,
                                                *(("seed",) if m.seeded else ()))), upstream)


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
              seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """(images, labels, manifest) of one method's compressed set: from benchmark/sets/ if it was
  made under the same fingerprint, else built and written there."""
  from pca_jax.data.store import load_compressed, write_compressed
  from pca_jax.pca.stages import set_manifest
  m = METHODS[method]
  fp = set_fingerprint(run, stage, method, ipc, grid, seed)
  name = f"{method}-ipc{ipc}-g{grid[0]}x{grid[1]}" + (f"-s{seed}" if m.seeded else "")
  path = run.path("benchmark", "sets", name)
  if cache.sets.get(name) == fp:
    cs = load_compressed(path)
    return cs.images, cs.labels, cs.manifest
  if name in cache.sets:
    run.log(f"[benchmark] set {name} was made from other inputs: rebuilding it")
  images, labels, source, *more = m.build(run, ctx, ipc * grid[0] * grid[1], grid, seed)
  extra = dict(more[0]) if more else {}
  stored_grid = extra.pop("grid", grid)  # pca_auto: the grid its search chose
  manifest = set_manifest(run, method, ipc, stored_grid, seed, source, fingerprint=fp, **extra)
  write_compressed(path, images, labels, manifest, class_names=run.train_source.class_names)
  cache.sets[name] = fp
  return images, labels, manifest


# --------------------------------------------------------------------------------------- cells
def cell_trainer_config(run, cell: dict, crop: str):
  """The student's trainer config for one cell: config.train with the cell's crop, grid, labels
  and resolution, periodic evaluation every benchmark.eval_every_epochs (0: final only), and the
  cell's own seed; the cell's student (config.model with its name) with its
  benchmark.student_overrides applied to the train block (the same for every method)."""
  tc = copy.deepcopy(run.config.train)
  tc.crop = crop
  tc.grid = tuple(cell["grid"])
  tc.label_mode = cell["label"]
  tc.resolution = cell.get("resolution", "full")
  tc.eval_every_epochs = int(run.config.benchmark.get("eval_every_epochs", 0))
  student = cell_student(run.config, cell)
  for field, value in (run.config.benchmark.get("student_overrides") or {}).get(student,
                                                                                {}).items():
    tc[field] = value
  mc = run.trainer_config(tc, rng.derive_seed(run.config.seed, "cell", cell["seed"]))
  mc.model.name = student
  return mc


def cell_student(config, cell: dict) -> str:
  """The model a cell trains: its "student", or config.model's."""
  return cell.get("student") or config.model.name


def _periodic_eval(config) -> list:
  """The eval cadence as a fingerprint part under a key that config.IGNORED_FIELDS does not drop
  (the cadence changes a row: top1_best); none at 0, so cells cached before it stay valid."""
  every = int(config.benchmark.get("eval_every_epochs", 0))
  return [{"benchmark_eval_every_epochs": every}] if every else []


def cell_fingerprint(run, teacher_marker: dict | None, set_identity: str, mc, label: str) -> str:
  """What a cell's row is valid under: its set, its trainer config, the eval data and cadence and,
  for soft labels, the teacher stage's id (teacher_marker: that stage's record, stages/teacher.json;
  tools that retrain a finished run's cells read it from there)."""
  teacher = teacher_marker["id"] if label == "soft" else None
  return fingerprint("cell", set_identity, config_values(mc, ("model", "train")),
                     config_values(run.config, EVAL_DATA), teacher, *_periodic_eval(run.config))


def benchmark_derived(config) -> dict:
  """The benchmark stage's derived fingerprint values: the external sets' (external_derived),
  the eval cadence, which IGNORED_FIELDS drops from the `benchmark` field group, so that turning
  it on reruns the stage (and with it every cell, see cell_fingerprint), and, when a method runs
  the tune search (pca_auto), the fields it reads that the stage's fields leave out."""
  every = int(config.benchmark.get("eval_every_epochs", 0))
  searches = [m for m in method_names(config.benchmark) if m in METHODS and METHODS[m].searches]
  search = config_values(config, ("tune", "select.order", "data.eval_crop_fraction")) \
      if searches else {}
  return {**external_derived(config), **({"eval_every_epochs": every} if every else {}),
          **({"search": search} if search else {})}


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


def _cell_data(run, stage, ctx, cache, cell, externals) -> tuple[np.ndarray, np.ndarray, dict]:
  """(images, labels, manifest) of a cell's compressed set, built (or taken from the cache) for
  it; external sets have an empty manifest here."""
  method = cell["method"]
  if method.startswith(f"{EXTERNAL}:"):
    return (*externals[method.split(":", 1)[1]], {})
  return build_set(run, stage, ctx, cache, method, cell["ipc"], cell["grid"], cell["seed"])


def run_cell(run, stage, ctx, cache, cell, externals, teacher_fn) -> tuple[dict, bool]:
  """(row, cached): trains and evaluates one cell, or returns its row if it was made under the
  same fingerprint (checked before the set is built or loaded: a cached IPC100 cell at 224px
  reads no 15 GB set)."""
  from pca_jax.training import InMemoryData, train
  from pca_jax.training.views import view_sizes
  cfg = run.config
  cid = cell_id(cell)
  set_identity, crop = _cell_set(run, stage, cell, externals)
  mc = cell_trainer_config(run, cell, crop)
  fp = cell_fingerprint(run, stage.upstream.get("teacher"), set_identity, mc, cell["label"])
  out = run.path("benchmark", "runs", cid.replace(":", "_"))
  cached = cache.rows.get(out.name)
  if cached is not None:
    if cached.get("fingerprint") == fp:  # rows from before the student axis have no "student"
      return {"student": cell_student(cfg, cell), **cached}, True
    fs.remove(out / "row.json")  # made from other inputs: the trainer drops its stale checkpoints
  images, labels, manifest = _cell_data(run, stage, ctx, cache, cell, externals)
  grid, search = tuple(cell["grid"]), manifest.get("tune")
  if search:  # pca_auto: the student trains as its search chose (the set's identity fixes the
    # choice, so the fingerprint above, of the set identity and the planned config, keys it)
    choice = search["choice"]
    grid = tuple(choice["grid"])
    mc = cell_trainer_config(run, {**cell, "grid": grid, "resolution": choice["resolution"]},
                             choice["crop"])
  num_classes = run.train_source.num_classes
  _, m = train(mc, out, InMemoryData(images, labels, num_classes), run.eval_source, desc=cid,
               log=run.log, teacher=teacher_fn() if cell["label"] == "soft" else None,
               fingerprint=fp, save_final=False)
  # best of the periodic evaluations (kept in metrics.jsonl across a resume) and the final one
  history = out / "metrics.jsonl"
  evals = tables.periodic_evals(history.read_text() if history.exists() else "", m["steps"])
  best, best_epoch = tables.best_top1(
      evals + [{"epoch": m["steps"] / m["steps_per_epoch"], "eval_top1": m["eval_top1"]}])
  best_epoch = float(best_epoch)
  n_images = int(len(images))
  external = cell["method"].startswith(EXTERNAL)
  per_class = None if external else cell["ipc"] * grid[0] * grid[1]
  row = {**cell, "student": cell_student(cfg, cell), "grid": list(cell["grid"]),
         "top1": m["eval_top1"], "top5": m["eval_top5"],
         "top1_best": best,
         "top1_best_epoch": int(best_epoch) if best_epoch.is_integer() else round(best_epoch, 3),
         "stored_images": n_images, "source_images_per_class": per_class,
         "bytes_images": int(images[0].nbytes) * n_images,
         "bytes_soft_labels": tables.soft_label_bytes(n_images, mc.train.epochs, num_classes,
                                                      cfg.benchmark.soft_label_bytes_per_value),
         "train_wall_s": m["train_wall_s"], "train_img_per_s": m["train_img_per_s"],
         "resolution": cell.get("resolution", "full"), "view_size": view_sizes(mc.train)[0],
         "fingerprint": fp}
  if search:
    row.update(chosen=choice["name"], chosen_grid=list(grid),
               chosen_resolution=choice["resolution"], chosen_crop=choice["crop"],
               chosen_val_top1=choice["val_top1_mean"], search_wall_s=search["search_wall_s"])
  _track_cell(out, cfg, cid, row, m["steps"])
  fs.save_json(out / "row.json", row)
  return row, False


def _track_cell(out, cfg, cid: str, row: dict, steps: int) -> None:
  """benchmark/top1 and benchmark/best_top1 of a cell, with its identity as hparams
  (TensorBoard's HPARAMS tab; W&B's config and summary)."""
  tracker = Tracker(out, cfg.get("log"), name=cid)
  try:
    tracker.result({k: (row[k] if not isinstance(row[k], list) else "x".join(map(str, row[k])))
                    for k in ("method", "ipc", "label", "seed", "grid", "resolution", "student")
                    if k in row},
                   {"benchmark/top1": row["top1"], "benchmark/best_top1": row["top1_best"]},
                   steps)
  finally:
    tracker.close()


def check_benchmark(run) -> None:
  """Up front: the plan is valid, every score a method reads is computed, every external set
  exists."""
  from pca_jax.scoring import SCORES
  cfg = run.config
  for name in method_names(cfg.benchmark):
    score = METHODS[name].score_name(cfg) if name in METHODS else None
    flag = SCORES[score].requires if score else None
    if flag and not cfg.score[flag]:
      raise ValueError(f"benchmark method {name} ranks by {score} scores, which the score stage "
                       f"computes only with --config.score.{flag}=True")
  for name, path in external_paths(cfg).items():
    if not fs.path(path).is_dir():
      raise ValueError(f"benchmark.external set {name!r}: {path} is not a directory; pass "
                       "name=/path/to/imagefolder or name=/path/to/parquet_download")
    open_external(run, path)  # columns, classes: fail before any stage runs
  cells, _ = plan_cells(cfg.benchmark, cfg.combine.grid, cfg.data.image_size,
                        {name: 1 for name in external_paths(cfg)}, cfg.model.name)
  from pca_jax.pca.tune import check_search_budget
  src = run.train_source
  for ipc in sorted({c["ipc"] for c in cells if c["method"] in METHODS and
                     METHODS[c["method"]].searches}):
    check_search_budget(cfg, src.labels, src.num_classes, ipc, "benchmark.ipcs")


def benchmark_needs(config) -> tuple[str, ...]:
  return (("score",) if needs_scores(config.benchmark) else ()) + \
      (("teacher",) if needs_teacher(config.benchmark) else ())


def _eta(seconds: float) -> str:
  return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _run_cells(run, stage, cells: list[dict], skipped: list[dict], externals) -> list[dict]:
  """Every planned cell that fits the data (cached ones are read back), one line per cell with
  its top-1, its time and the ETA of the stage (the mean time of the cells trained so far times
  the cells left). Cells needing more distinct images per class than the smallest class has are
  added to `skipped`."""
  ctx, cache = SetContext(run), BenchmarkCache(run)
  run.barrier("pca_jax_benchmark_cache_read")  # nobody writes before every process has read
  smallest = int(np.bincount(run.train_source.labels).min())
  rows, trained_s, trained = [], 0.0, 0
  for i, cell in enumerate(cells):
    need = cell["ipc"] * cell["grid"][0] * cell["grid"][1]
    if cell["method"] in METHODS and not METHODS[cell["method"]].fits(smallest, need):
      skipped.append({**cell, "reason": f"needs {need} images per class, smallest class has "
                                        f"{smallest}"})
      continue
    t0 = time.time()
    row, cached = run_cell(run, stage, ctx, cache, cell, externals, ctx.teacher)
    rows.append(row)
    wall = time.time() - t0
    if not cached:
      trained_s, trained = trained_s + wall, trained + 1
    left = len(cells) - i - 1
    eta = f"; ETA {_eta(trained_s / trained * left)}" if trained and left else ""
    best = (f" (best {row['top1_best']:.2f}% at epoch {row['top1_best_epoch']})"
            if row.get("top1_best") is not None and row["top1_best"] != row["top1"] else "")
    run.log(f"[benchmark] {i + 1}/{len(cells)} {cell_id(cell)}: top-1 {row['top1']:.2f}%{best}, "
            + ("cached" if cached else f"{wall:.1f} s") + eta)
  return rows


def _not_run_lines(skipped: list[dict]) -> list[str]:
  """One line per (method, grid, ipc) that did not run, whatever the label modes and seeds."""
  lines = []
  for s in skipped:
    line = (f"- {s['method']} grid {s['grid'][0]}x{s['grid'][1]}"
            + (f" IPC {s['ipc']}" if "ipc" in s else "") + f": {s['reason']}")
    if line not in lines:
      lines.append(line)
  return lines


def _benchmark_markdown(run, agg, rows, skipped, title: str, full_top1, why: str) -> str:
  """benchmark.md: the tables, what did not run, notes on the teacher and the protocol."""
  cfg = run.config
  every = int(cfg.benchmark.get("eval_every_epochs", 0))
  parts = [tables.markdown_table(agg, title), tables.best_table(agg, every),
           tables.dd_ranking_table(agg, full_top1, why), tables.grid_table(agg),
           tables.resolution_table(agg), tables.search_table(rows)]
  md = "\n".join(p for p in parts if p)
  if skipped:
    md += "\nNot run:\n\n" + "\n".join(_not_run_lines(skipped)) + "\n"
  note = own_teacher_note(cfg, run.train_source.num_classes)
  if note:
    md += f"\n**Note:** {note}.\n"
  return md + (
      f"\nSeeds: {list(cfg.benchmark.seeds)} (mean ± sample std when > 1). Soft labels: KL to "
      f"the teacher at T={cfg.train.temperature} on every view, CutMix alpha "
      f"{cfg.train.cutmix_alpha}. Every method trains the same student with the same schedule; "
      "pca, pca_<prune> and combine_random use patch-constrained crops, pca_auto the crops its "
      "search chose, the others RandomResizedCrop of the stored image.\n")


def _overrides_note(cfg) -> str:
  """The per-student train overrides in force, e.g. "vit_s_16: lr=0.0005, warmup_epochs=5"."""
  listed = set(students(cfg.benchmark, cfg.model.name))
  parts = [f"{name}: " + ", ".join(f"{k}={v}" for k, v in fields.items())
           for name, fields in (cfg.benchmark.get("student_overrides") or {}).items()
           if name in listed and fields]
  return "; ".join(parts)


def stage_benchmark(run, stage) -> dict:
  """Runs every planned cell (cached ones are reused); writes the tables and the plot."""
  cfg = run.config
  externals = {name: load_external(run, p) for name, p in external_paths(cfg).items()}
  ext_ipc = {name: int(np.bincount(labels).max()) for name, (_, labels) in externals.items()}
  cells, skipped = plan_cells(cfg.benchmark, cfg.combine.grid, cfg.data.image_size, ext_ipc,
                              cfg.model.name)
  rows = _run_cells(run, stage, cells, skipped, externals)
  # DD-Ranking's full-data accuracy: the teacher's (same model, full train split, same test split)
  teacher = stage.upstream.get("teacher")
  full_top1 = ((teacher or {}).get("summary") or {}).get("eval_top1")
  why = ("" if full_top1 is not None else
         "no teacher in this run: hard labels only and no method reads one" if teacher is None
         else "the teacher stage recorded no test top-1 for its given teacher")
  rows = tables.with_dd_ranking(rows, full_top1)
  agg = tables.aggregate(rows)
  title = f"DC benchmark: {run.train_source.name}, {cfg.model.name} (width {cfg.model.width}), " \
          f"{cfg.train.epochs} epochs, final test top-1 % (after the last epoch)"
  tables.write_csv(rows, run.path("benchmark.csv"))
  names = students(cfg.benchmark, cfg.model.name)
  first = table_student(cfg.benchmark, cfg.model.name)
  if first != cfg.model.name:
    title = title.replace(f"{cfg.model.name} (width", f"{first} (width", 1)
  main = [a for a in agg if a["student"] == first]
  md = _benchmark_markdown(run, main, [r for r in rows if r["student"] == first],
                           skipped, title, full_top1, why)
  if len(names) > 1:
    md += "\n" + tables.student_table(agg, names, cfg.model.name, _overrides_note(cfg))
  fs.save_text(run.path("benchmark.md"), md)
  fs.save_json(run.path("benchmark.json"), {
      "rows": rows, "aggregate": agg, "skipped": skipped,
      "eval_every_epochs": int(cfg.benchmark.get("eval_every_epochs", 0)),
      "dd_ranking": {"accuracy": tables.DD_RANKING_ACCURACY, "full_data_top1": full_top1,
                     "full_data_missing": why}})
  if agg:
    tables.plot(agg, run.path("benchmark.png"), title, names)
  run.log(f"[benchmark] {len(rows)} cells -> {run.path('benchmark.md')}")
  return {"cells": len(rows), "skipped": len(skipped)}
