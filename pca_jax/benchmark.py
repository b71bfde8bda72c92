"""The DC benchmark: every compression method at the same image budget, one training protocol,
hard and soft labels, accuracy next to storage.

Methods (budget: IPC stored images of data.image_size per class, so equal bytes of images):
  random         class-balanced random subset (seeded)
  el2n_easy      lowest EL2N first (PCA's prune step alone)     el2n_hard   highest EL2N first
  entropy_easy / entropy_hard                                   (predictive entropy, same models)
  forgetting     most forgetting events first (Toneva et al.; events between epochs of scoring)
  rded_like      RDED-style distillation baseline: random crops of a pool of images per class are
                 scored by the teacher; the most confident crops are stitched rows x cols per image
  pca            easy EL2N + whole-image mosaics + patch-constrained crops (grid sweepable)
  external       any compressed set given as an ImageFolder (e.g. published subsets)
Label modes: hard (one-hot CE) or soft (KL to the teacher's soft labels of every augmented view,
computed on the fly, CutMix). Soft-label storage is reported as if stored per view per epoch.
A finished (method, ipc, grid, label, seed) cell is never recomputed (row.json per cell).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

PRUNE_METHODS = {  # name -> (score file, selection mode)
    "el2n_easy": ("scores_el2n.npy", "easy"), "el2n_hard": ("scores_el2n.npy", "hard"),
    "entropy_easy": ("scores_entropy.npy", "easy"), "entropy_hard": ("scores_entropy.npy", "hard"),
    "forgetting": ("scores_forgetting.npy", "hard"),
}
METHODS = ("random", *PRUNE_METHODS, "rded_like", "pca", "external")
LABEL_MODES = ("hard", "soft")
_CELL_FIELDS = ("methods", "ipcs", "label_modes", "seeds", "grids", "external", "resolutions")


def cell_id(c: dict) -> str:
  g = c["grid"]
  res = c.get("resolution", "full")
  return (f"{c['method']}-ipc{c['ipc']}-g{g[0]}x{g[1]}-{c['label']}-s{c['seed']}"
          + ("" if res == "full" else f"-r{res}"))


def plan_cells(bench, combine_grid: Sequence[int], image_size: int,
               external: dict[str, int] | None = None) -> tuple[list[dict], list[dict]]:
  """All cells to run, and the skipped ones with the reason (grid not dividing the image size).

  Pruning methods store whole images (grid 1x1); rded_like stitches with the PCA grid; pca runs
  every grid in bench.grids; external runs once per given set at its own IPC.
  """
  methods = [m.strip() for m in str(bench.methods).split(",") if m.strip()]
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"unknown benchmark method {m!r}; choose from {','.join(METHODS)}")
  for l in bench.label_modes:
    if l not in LABEL_MODES:
      raise ValueError(f"unknown benchmark label mode {l!r}; use hard and/or soft")
  cells, skipped = [], []
  for method in methods:
    if method == "pca":
      grids = [tuple(g) for g in bench.grids]
    elif method == "rded_like":
      grids = [tuple(combine_grid)]
    else:
      grids = [(1, 1)]
    ipcs = list(bench.ipcs)
    names = [None]
    if method == "external":
      names = sorted((external or {}))
      if not names:
        raise ValueError("method 'external' needs --config.benchmark.external=name=/path/to/imagefolder")
    for name in names:
      for grid in grids:
        if image_size % grid[0] or image_size % grid[1]:
          skipped.append({"method": method, "grid": grid,
                          "reason": f"grid {grid[0]}x{grid[1]} does not divide {image_size}px"})
          continue
        # other resolutions only differ from "full" for mosaics with square cells
        resolutions = [r for r in bench.get("resolutions", ("full",))
                       if r == "full" or (grid[0] == grid[1] > 1)]
        for ipc in ([external[name]] if name else ipcs):
          for label in bench.label_modes:
            for seed in bench.seeds:
              for res in resolutions:
                c = {"method": method if not name else f"external:{name}", "ipc": int(ipc),
                     "grid": (int(grid[0]), int(grid[1])), "label": label, "seed": int(seed)}
                if res != "full":
                  c["resolution"] = res
                cells.append(c)
  return cells, skipped


def soft_label_bytes(num_images: int, epochs: int, num_classes: int, bytes_per_value: int) -> int:
  """Storage of soft labels kept per augmented view: one view per image per epoch."""
  return int(num_images) * int(epochs) * int(num_classes) * int(bytes_per_value)


def aggregate(rows: list[dict]) -> list[dict]:
  """Mean and sample std of top-1 over seeds per (method, grid, ipc, label)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    key = (r["method"], tuple(r["grid"]), int(r["ipc"]), r["label"], r.get("resolution", "full"))
    groups.setdefault(key, []).append(r)
  out = []
  for (method, grid, ipc, label, res), rs in sorted(groups.items()):
    acc = np.array([r["top1"] for r in rs], float)
    out.append({"method": method, "grid": grid, "ipc": ipc, "label": label, "resolution": res,
                "n": len(rs), "train_img_per_s": float(np.mean(
                    [r.get("train_img_per_s") or 0.0 for r in rs])),
                "train_wall_s": float(np.mean([r.get("train_wall_s") or 0.0 for r in rs])),
                "top1_mean": float(acc.mean()), "top1_std": float(acc.std(ddof=1)) if len(rs) > 1
                else 0.0, "bytes_images": rs[0]["bytes_images"],
                "bytes_soft_labels": rs[0]["bytes_soft_labels"],
                "stored_images": rs[0]["stored_images"]})
  return out


def _name(method: str, grid, resolution: str = "full") -> str:
  name = f"{method} {grid[0]}x{grid[1]}" if method == "pca" else method
  return name if resolution == "full" else f"{name} @{resolution}-res"


def _human(nbytes: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if nbytes < 1000 or unit == "TB":
      return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
    nbytes /= 1000.0
  return ""


def markdown_table(agg: list[dict], title: str = "") -> str:
  """Paper-style table: a row per method (and grid), columns IPC x label mode, plus storage."""
  ipcs = sorted({a["ipc"] for a in agg})
  labels = [l for l in LABEL_MODES if any(a["label"] == l for a in agg)]
  by = {(_name(a["method"], a["grid"], a.get("resolution", "full")), a["ipc"], a["label"]): a for a in agg}
  names = []
  for a in agg:
    n = _name(a["method"], a["grid"], a.get("resolution", "full"))
    if n not in names:
      names.append(n)
  head = ["method"] + [f"IPC{i} {l}" for i in ipcs for l in labels]
  lines = [f"## {title}" if title else "", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in names:
    cells = []
    for i in ipcs:
      for l in labels:
        a = by.get((n, i, l))
        cells.append("" if a is None else (f"{a['top1_mean']:.1f} ± {a['top1_std']:.1f}"
                                           if a["n"] > 1 else f"{a['top1_mean']:.1f}"))
    lines.append("| " + " | ".join([n] + cells) + " |")
  lines += ["", "Storage per method at each IPC (images as uint8 arrays; soft labels as fp16, "
            "one per view per epoch):", "", "| IPC | stored images | image bytes | soft-label bytes "
            "| soft / images |", "|---|---|---|---|---|"]
  for i in ipcs:
    a = next((x for x in agg if x["ipc"] == i and not x["method"].startswith("external")), None)
    if a:
      ratio = a["bytes_soft_labels"] / max(a["bytes_images"], 1)
      lines.append(f"| {i} | {a['stored_images']} | {_human(a['bytes_images'])} | "
                   f"{_human(a['bytes_soft_labels'])} | {ratio:.1f}x |")
  return "\n".join(lines) + "\n"


def grid_table(agg: list[dict]) -> str:
  """PCA top-1 vs grid at equal bytes, per IPC and label mode."""
  pca = [a for a in agg if a["method"] == "pca" and a.get("resolution", "full") == "full"]
  if not pca:
    return ""
  grids = sorted({a["grid"] for a in pca})
  lines = ["## PCA grid sweep (equal bytes: a rows x cols mosaic stores rows*cols images)", "",
           "| IPC | labels | " + " | ".join(f"{g[0]}x{g[1]}" for g in grids) + " |",
           "|---|---|" + "---|" * len(grids)]
  for i in sorted({a["ipc"] for a in pca}):
    for l in LABEL_MODES:
      row = {a["grid"]: a for a in pca if a["ipc"] == i and a["label"] == l}
      if row:
        lines.append(f"| {i} | {l} | " + " | ".join(
            f"{row[g]['top1_mean']:.1f}" if g in row else "n/a" for g in grids) + " |")
  return "\n".join(lines) + "\n"


def resolution_table(agg: list[dict]) -> str:
  """Full vs patch (vs blur) resolution per mosaic method: top-1, train throughput, wall time."""
  res = [a for a in agg if a.get("resolution", "full") != "full"]
  if not res:
    return ""
  lines = ["## Resolution: train/eval at full size vs at the patch size (equal bytes)", "",
           "| method | IPC | labels | resolution | top-1 % | train img/s | train wall s |",
           "|---|---|---|---|---|---|---|"]
  keys = sorted({(a["method"], a["grid"], a["ipc"], a["label"]) for a in res})
  for m, g, i, l in keys:
    for a in agg:
      if (a["method"], a["grid"], a["ipc"], a["label"]) == (m, g, i, l):
        lines.append(f"| {_name(m, g)} | {i} | {l} | {a.get('resolution', 'full')} | "
                     f"{a['top1_mean']:.1f} | {a['train_img_per_s']:.0f} | "
                     f"{a['train_wall_s']:.1f} |")
  return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path) -> None:
  from pca_jax.data.atomic import save_text
  fields = ["method", "ipc", "grid", "label", "seed", "resolution", "view_size", "top1", "top5", "stored_images",
            "source_images_per_class", "bytes_images", "bytes_soft_labels", "train_wall_s",
            "train_img_per_s"]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
  w.writeheader()
  for r in sorted(rows, key=lambda r: (r["method"], tuple(r["grid"]), r["ipc"], r["label"],
                                       r["seed"], r.get("resolution", "full"))):
    w.writerow({**r, "grid": f"{r['grid'][0]}x{r['grid'][1]}"})
  save_text(path, buf.getvalue())


def plot(agg: list[dict], path, title: str) -> None:
  """benchmark.png: top-1 vs IPC per method; one panel per label mode."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from pca_jax.data.atomic import write_file
  labels = [l for l in LABEL_MODES if any(a["label"] == l for a in agg)]
  fig, axes = plt.subplots(1, len(labels), figsize=(6.5 * len(labels), 4.5), squeeze=False,
                           sharey=True)
  for ax, l in zip(axes[0], labels):
    names = []
    for a in agg:
      n = _name(a["method"], a["grid"], a.get("resolution", "full"))
      if a["label"] == l and n not in names:
        names.append(n)
    for i, n in enumerate(names):
      pts = sorted((a["ipc"], a["top1_mean"], a["top1_std"]) for a in agg
                   if a["label"] == l and _name(a["method"], a["grid"], a.get("resolution", "full")) == n)
      x, y, e = zip(*pts)
      style = "-o" if n.startswith("pca") else "--s" if n.startswith("external") else "-."
      ax.errorbar(x, y, yerr=e, fmt=style, capsize=3, label=n, color=plt.cm.tab20(i % 20),
                  lw=2 if n.startswith("pca") else 1)
    ax.set_xscale("log")
    ax.set_xticks(sorted({a["ipc"] for a in agg}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("images per class (IPC)")
    ax.set_title(f"{l} labels")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("test top-1 %")
  axes[0][-1].legend(fontsize=7, loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
  plt.close(fig)


# --------------------------------------------------------------------------- building the sets
def config_fingerprint(config) -> str:
  """What every cell's result depends on, minus the lists that enumerate the cells."""
  d = config.to_dict()
  d["benchmark"] = {k: v for k, v in d["benchmark"].items() if k not in _CELL_FIELDS}
  d = {k: d[k] for k in ("seed", "data", "model", "score", "combine", "train", "benchmark")}
  for k in ("num_threads", "num_workers"):
    d["data"].pop(k, None)
  for t in (d["train"], d["score"]["train"], d["benchmark"].get("teacher", {})):
    for k in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "num_threads",
              "eval_every_epochs", "resolution"):
      t.pop(k, None)
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ the runner
def _external_sets(run) -> dict[str, Any]:
  spec = str(run.config.benchmark.external or "")
  out = {}
  for item in [s for s in spec.split(",") if s.strip()]:
    if "=" not in item:
      raise ValueError(f"benchmark.external item {item!r} must be name=/path/to/imagefolder")
    name, path = item.split("=", 1)
    out[name.strip()] = path.strip()
  return out


def _load_external(run, path: str):
  """An ImageFolder compressed set -> (images uint8 [M,S,S,3], labels mapped to the source's ids)."""
  import re
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
  idx = np.arange(len(ext))
  images = np.concatenate([b for b, _ in pipeline.iter_images(ext, idx, size, 256,
                                                              fit="center_crop")])
  labels = np.asarray([mapping[l] for l in ext.labels], np.int32)
  return images, labels


def _teacher(run):
  """(apply_fn on normalised views, variables) of the benchmark's teacher."""
  from pca_jax import train
  from pca_jax.models.resnet import create_model
  cfg = run.config
  wd = cfg.benchmark.teacher_workdir or run.path("teacher")
  variables = train.load_variables(wd)
  model = create_model(cfg.model.name, run.train_source.num_classes, cfg.model.width,
                       cfg.model.stem, cfg.model.dtype)
  return (lambda v, x: model.apply(v, x, train=False)), variables


def needs_teacher(bench) -> bool:
  methods = str(bench.methods)
  return "soft" in tuple(bench.label_modes) or "rded_like" in methods


def stage_teacher(run, log) -> dict:
  from pca_jax import train
  cfg = run.config
  if not needs_teacher(cfg.benchmark):
    return {"skipped": "no soft labels and no rded_like: no teacher needed"}
  if cfg.benchmark.teacher_workdir:
    train.load_variables(cfg.benchmark.teacher_workdir)  # fail early if unreadable
    return {"teacher_workdir": cfg.benchmark.teacher_workdir}
  mc = run.model_config(cfg.benchmark.teacher, seed_offset=999)
  _, m = train.train(mc, run.path("teacher"), run.train_source, run.eval_source, desc="teacher",
                     log=log)
  log(f"[teacher] top-1 {m['eval_top1']:.2f}% on the {cfg.data.eval_split} split")
  return {"eval_top1": m["eval_top1"], "epochs": cfg.benchmark.teacher.epochs}


def _rded_crops(run, teacher, idx, labels, seed, per_class):
  """The per_class most teacher-confident random crops of each class, from the pool `idx`.

  Two streaming passes over the pool (bounded memory at ImageNet scale): the first computes the
  teacher's p(label | crop) of every crop, the second regenerates only the chosen crops from the
  same keys. Returns (crops uint8 [C * per_class, S, S, 3], labels), by class.
  """
  import jax
  import jax.numpy as jnp
  from pca_jax import augment
  from pca_jax.data import pipeline
  bench = run.config.benchmark
  size = run.config.data.image_size
  k = int(bench.rded_crops_per_image)
  chunk = 256
  apply_fn, variables = teacher
  key = jax.random.key(seed)

  def crops_of(ckey, imgs):
    rep = jnp.repeat(imgs, k, axis=0)
    boxes = augment.sample_rrc_boxes(ckey, rep.shape[0], size, size, tuple(bench.rded_crop_scale))
    return augment.crop_and_resize(rep, boxes, (size, size))

  @jax.jit
  def confidence(ckey, imgs, labs):
    logits = apply_fn(variables, augment.normalize(crops_of(ckey, imgs)))
    return jax.nn.softmax(logits, -1)[jnp.arange(logits.shape[0]), jnp.repeat(labs, k)]

  crops_u8 = jax.jit(lambda ckey, imgs: jnp.clip(jnp.round(crops_of(ckey, imgs)), 0, 255)
                     .astype(jnp.uint8))

  def chunks():
    return enumerate(pipeline.iter_images(run.train_source, idx, size, chunk, fit="center_crop",
                                          num_threads=run.config.data.num_threads))

  conf = np.concatenate([np.asarray(confidence(jax.random.fold_in(key, c), imgs, lab))
                         for c, (imgs, lab) in chunks()])
  crop_labels = np.repeat(labels, k)
  chosen = rded_like_select(np.arange(len(conf)), conf, crop_labels, per_class)[0]
  out = np.zeros((len(chosen), size, size, 3), np.uint8)
  where = {int(g): i for i, g in enumerate(chosen)}  # global crop id -> output row
  per_chunk = chunk * k
  for c, (imgs, _) in chunks():
    wanted = [g for g in range(c * per_chunk, c * per_chunk + len(imgs) * k) if g in where]
    if wanted:
      crops = np.asarray(crops_u8(jax.random.fold_in(key, c), imgs))
      for g in wanted:
        out[where[g]] = crops[g - c * per_chunk]
  return out, crop_labels[chosen]


def rded_like_select(crops: np.ndarray, conf: np.ndarray, crop_labels: np.ndarray,
                     per_class: int) -> tuple[np.ndarray, np.ndarray]:
  """The per_class most teacher-confident crops of each class (ties: lower index), by class."""
  out_idx = []
  for c in np.unique(crop_labels):
    idx = np.flatnonzero(crop_labels == c)
    if idx.size < per_class:
      raise ValueError(f"class {int(c)} has only {idx.size} candidate crops for {per_class}; "
                       "raise benchmark.rded_crops_per_image or benchmark.rded_pool")
    order = np.lexsort((idx, -conf[idx]))
    out_idx.append(idx[order[:per_class]])
  out_idx = np.concatenate(out_idx)
  return crops[out_idx], crop_labels[out_idx]


def build_set(run, method: str, ipc: int, grid, seed: int, teacher_fn) -> Path:
  """The compressed set of one method in the store format (cached under benchmark/sets/)."""
  import jax
  from pca_jax.combine import make_mosaics
  from pca_jax.data import pipeline
  from pca_jax.data.store import write_compressed
  from pca_jax.selection import select_per_class
  cfg = run.config
  seeded = method in ("random", "rded_like")
  name = f"{method}-ipc{ipc}-g{grid[0]}x{grid[1]}" + (f"-s{seed}" if seeded else "")
  path = run.path("benchmark", "sets", name.replace(":", "_"))
  if (path / "manifest.json").exists():
    return path
  src = run.train_source
  labels = src.labels
  per_class = ipc * grid[0] * grid[1]
  size = cfg.data.image_size
  manifest = {"method": method, "ipc": ipc, "grid": list(grid), "seed": seed,
              "source": {"name": src.name, "split": cfg.data.train_split}, "image_size": size}
  if method == "rded_like":
    pool = select_per_class(None, labels, min(int(cfg.benchmark.rded_pool),
                                              int(np.bincount(labels).min())),
                            "random", key=jax.random.key(seed + 7919))
    chosen, chosen_labels = _rded_crops(run, teacher_fn(), pool, labels[pool], seed, per_class)
    mosaics, mlabels = make_mosaics(chosen, chosen_labels, tuple(grid), (size, size))
    mosaics = np.asarray(mosaics)
    manifest["source_indices"] = pool
  else:
    if method == "random":
      idx = select_per_class(None, labels, per_class, "random", key=jax.random.key(seed))
    else:
      score_file, mode = ("scores_el2n.npy", "easy") if method == "pca" else PRUNE_METHODS[method]
      scores = np.load(run.require(score_file, "score"))
      idx = select_per_class(scores, labels, per_class, mode, num_classes=src.num_classes)
    mosaics, mlabels = pipeline.mosaics_from_source(src, idx, tuple(grid), size, cfg.combine.fit,
                                                    cfg.data.num_threads)
    manifest["source_indices"] = idx
  write_compressed(path, mosaics, mlabels, manifest, class_names=src.class_names)
  return path


def _sized(tc, cfg):
  t = copy.deepcopy(tc)
  t.image_size = cfg.data.image_size
  return t


def run_benchmark(run, log) -> dict:
  """Runs every planned cell that has no up-to-date row.json; writes the tables and the plot."""
  import shutil
  from pca_jax import train
  from pca_jax.data.atomic import save_json, save_text
  from pca_jax.data.store import load_compressed
  cfg = run.config
  bench = cfg.benchmark
  externals = _external_sets(run)
  ext_data = {name: _load_external(run, p) for name, p in externals.items()}
  ext_ipc = {name: int(np.bincount(l).max()) for name, (_, l) in ext_data.items()}
  cells, skipped = plan_cells(bench, cfg.combine.grid, cfg.data.image_size, ext_ipc)
  fp = config_fingerprint(cfg)
  teacher_cache = {}

  def teacher_fn():
    if "t" not in teacher_cache:
      teacher_cache["t"] = _teacher(run)
    return teacher_cache["t"]

  num_classes = run.train_source.num_classes
  rows = []
  for i, cell in enumerate(cells):
    cid = cell_id(cell)
    out = run.path("benchmark", "runs", cid.replace(":", "_"))
    row_path = out / "row.json"
    if row_path.exists():
      row = json.loads(row_path.read_text())
      if row.get("fingerprint") == fp:
        rows.append(row)
        continue
      shutil.rmtree(out)  # made with another config: its checkpoints are stale
    min_count = int(np.bincount(run.train_source.labels).min())
    need = cell["ipc"] * cell["grid"][0] * cell["grid"][1]
    if not cell["method"].startswith("external") and cell["method"] != "rded_like" and \
        need > min_count:
      skipped.append({**cell, "reason": f"needs {need} images per class, smallest class has "
                                        f"{min_count}"})
      continue
    log(f"[benchmark] cell {i + 1}/{len(cells)}: {cid}")
    if cell["method"].startswith("external:"):
      images, labels = ext_data[cell["method"].split(":", 1)[1]]
      manifest = {"num_images": len(images)}
    else:
      cs = load_compressed(build_set(run, cell["method"], cell["ipc"], cell["grid"], cell["seed"],
                                     teacher_fn))
      images, labels, manifest = cs.images, cs.labels, cs.manifest
    tc = copy.deepcopy(cfg.train)
    tc.crop = "patch" if cell["method"] == "pca" else "rrc"
    tc.grid = tuple(cell["grid"])
    tc.label_mode = cell["label"]
    tc.resolution = cell.get("resolution", "full")
    tc.eval_every_epochs = 0
    mc = run.model_config(tc, seed_offset=100 + cell["seed"])
    _, m = train.train(mc, out, train.InMemoryData(images, labels, num_classes),
                       run.eval_source, desc=cid, log=log,
                       teacher=teacher_fn() if cell["label"] == "soft" else None)
    m_images = int(len(images))
    row = {**cell, "grid": list(cell["grid"]), "top1": m["eval_top1"], "top5": m["eval_top5"],
           "stored_images": m_images,
           "source_images_per_class": need if not cell["method"].startswith("external") else None,
           "bytes_images": int(images[0].nbytes) * m_images,
           "bytes_soft_labels": soft_label_bytes(m_images, tc.epochs, num_classes,
                                                 bench.soft_label_bytes_per_value),
           "train_wall_s": m["train_wall_s"], "train_img_per_s": m["train_img_per_s"],
           "resolution": tc.resolution, "view_size": train.view_sizes(_sized(tc, cfg))[0],
           "fingerprint": fp}
    save_json(row_path, row)
    log(f"[benchmark] {cid}: top-1 {row['top1']:.2f}%")
    rows.append(row)

  agg = aggregate(rows)
  title = f"DC benchmark: {run.train_source.name}, {cfg.model.name} (width {cfg.model.width}), " \
          f"{cfg.train.epochs} epochs, test top-1 %"
  md = markdown_table(agg, title) + "\n" + grid_table(agg) + "\n" + resolution_table(agg)
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
  write_csv(rows, run.path("benchmark.csv"))
  save_text(run.path("benchmark.md"), md)
  save_json(run.path("benchmark.json"), {"rows": rows, "aggregate": agg, "skipped": skipped})
  if agg:
    plot(agg, run.path("benchmark.png"), title)
  log(f"[benchmark] {len(rows)} cells -> {run.path('benchmark.md')}")
  return {"cells": len(rows), "skipped": len(skipped)}
