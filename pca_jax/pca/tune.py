"""The tune stage: grid, resolution and difficulty window chosen per dataset on a validation split.

PCA's fixed choices (2x2 mosaics at full resolution, easiest first) are tuned to 224px ImageNet at
10-100 images per class; elsewhere they can lose to a random subset. The tune stage measures
instead of assuming:

  1. a class-stratified `tune.val_fraction` of the TRAIN split is held out (tune/val_indices.npy,
     seeded); those images are in no candidate set and, in a tuned run, not in the final set
     (the select stage selects from the rest); the test split (data.eval_split) is not read.
     The score stage's models do train on the whole train split, the held-out images included:
     the ranking the windows cut saw them (mild; no candidate stores or trains on them);
  2. every candidate of the search (`candidates`: tune.prune x tune.windows x tune.grids x
     tune.resolutions x tune.crops) builds its set at the run's budget, select.ipc stored images
     of data.image_size per class, from the rest of the train split, exactly as the select and
     combine stages would with those settings (same selection key, so the chosen candidate's set
     IS the final set);
  3. each set trains a fresh student with config.train for tune.epochs, once per tune.seeds, and
     is evaluated eval-mode on the held-out images with the eval stage's preprocessing;
  4. `pick_best`: the best mean validation top-1 wins; candidates within tune.tie_tolerance points
     of it (equal means at the default 0) go to the cheaper one (TIE_RULE).

`tuned_config(run)` is the config with the choice applied (select.mode / window / order,
combine.grid, train.resolution / crop); the select, combine, store, train, eval and report stages
read it, and they need the tune stage when it is in config.stages, so its output id is part of
their fingerprints: a new search reruns every one of them.

The DC benchmark's `pca_auto` runs the same search per IPC and seed (`build_auto_set`).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import time
from typing import Any, Callable, Sequence

import numpy as np

from pca_jax import fs, rng
from pca_jax.config import TRAIN_DATA, config_values, fingerprint, parse_stages

OUTPUTS = ("tune", "tune.json")
RESOLUTIONS = ("full", "patch")   # the student's views: the whole mosaic's size, or one cell's
CROPS = ("patch", "rrc")          # inside one mosaic cell, or of the whole mosaic
# What the candidate runs depend on, besides config.train (search_train_values), the scores and
# the validation split (hashed apart).
SEARCH_FIELDS = (*TRAIN_DATA, "data.eval_crop_fraction", "model", "select.order", "combine.fit",
                 "tune")
# The config.train leaves every candidate overrides (tune.epochs; its own crop, grid, resolution;
# hard labels): the final student's epochs or crop do not rerun the search.
OVERRIDDEN = ("train.epochs", "train.crop", "train.grid", "train.resolution", "train.label_mode")
# The tune stage's fields: the search's, the budget, the score it ranks by, the seed.
FIELDS = ("seed", *SEARCH_FIELDS, "select.ipc", "select.score", "score.kind")


def search_train_values(config) -> dict:
  """config.train's leaves the candidate runs read ({"train.lr": ..., ...}; OVERRIDDEN left out):
  the tune stage's derived fingerprint values."""
  values = config_values(config, ("train",))
  return {k: v for k, v in values.items() if k not in OVERRIDDEN}


TIE_RULE = ("the best mean validation top-1 wins; candidates within tune.tie_tolerance points of "
            "it (equal means at 0) go to the cheapest: fewest training FLOPs per step (smaller "
            "training views: patch resolution before full), then the smaller grid, then the "
            "earlier in the search order")


def tuning(config) -> bool:
  """Whether this run tunes: "tune" is in config.stages (the later stages then use the choice)."""
  return "tune" in parse_stages(config.stages)


# ---------------------------------------------------------------------------------- the block
def _check_search_grid(field: str, grid, size: int, patch: bool) -> None:
  """A grid of the search: (rows, cols) of ints in 1..8 dividing size; cells >= 4 px when
  searched at the patch resolution."""
  from pca_jax.config import is_int
  g = tuple(grid) if isinstance(grid, (list, tuple)) else grid
  if not isinstance(g, tuple) or len(g) != 2 or not all(is_int(x) for x in g) or min(g) < 1 or \
      max(g) > 8:
    raise ValueError(f"{field} entry {g} is out of range; use (rows, cols) between 1 and 8")
  if size % g[0] or size % g[1]:
    raise ValueError(f"{field} entry {g} does not divide data.image_size={size}; use grids that "
                     "divide the image size")
  if g[0] == g[1] > 1 and patch and size // g[0] < 4:
    raise ValueError(f"{field} entry {g}: cells of {size // g[0]}px are too small to train on at "
                     "the patch resolution; drop that grid or 'patch' from tune.resolutions")


def _check_search_values(tune) -> None:
  """Every value of the search known, and the switches of the right type."""
  from pca_jax.config import check_positive_int, is_int, is_number
  from pca_jax.selection import check_window
  for field in ("grids", "resolutions", "windows", "prune", "crops", "seeds"):
    if not isinstance(tune[field], (list, tuple)) or not tune[field]:
      raise ValueError(f"tune.{field} must be a non-empty tuple, got {tune[field]!r}")
  for r in tune.resolutions:
    if r not in RESOLUTIONS:
      raise ValueError(f"unknown tune.resolutions entry {r!r}; choose from {RESOLUTIONS}")
  for c in tune.crops:
    if c not in CROPS:
      raise ValueError(f"unknown tune.crops entry {c!r}; choose from {CROPS} (patch = inside "
                       "one mosaic cell, rrc = the whole mosaic)")
  for p in tune.prune:
    if not isinstance(p, bool):
      raise ValueError(f"tune.prune entries must be True (by score, in a window) or False "
                       f"(random images), got {p!r}")
  for w in tune.windows:
    check_window(w, "tune.windows entry")
  check_positive_int("tune.epochs", tune.epochs)
  if not all(is_int(s) for s in tune.seeds):
    raise ValueError(f"tune.seeds must be integers, got {tuple(tune.seeds)}")
  if not is_number(tune.tie_tolerance) or tune.tie_tolerance < 0:
    raise ValueError(f"tune.tie_tolerance must be >= 0 (top-1 points), got {tune.tie_tolerance!r}")


def check_tune_block(config) -> None:
  """The tune block (for runs that search: stage tune, or the benchmark's pca_auto): every
  search value known and in range, at least one candidate."""
  from pca_jax.config import is_number
  tune = config.tune
  f = tune.val_fraction
  if not is_number(f) or not 0 < f < 1:
    raise ValueError(f"tune.val_fraction must be a fraction in (0, 1) (the part of every class of "
                     f"the train split held out for validation), got {f!r}")
  _check_search_values(tune)
  patch = "patch" in tuple(tune.resolutions)
  for g in tune.grids:
    _check_search_grid("tune.grids", g, config.data.image_size, patch)
  if not any(r == "full" or (int(g[0]) == int(g[1]) > 1) for g in tune.grids
             for r in tune.resolutions):
    raise ValueError(f"the tune search has no candidate: resolution 'patch' needs a square grid "
                     f"> 1x1, tune.grids={tuple(tuple(g) for g in tune.grids)}; add 'full' to "
                     "tune.resolutions or a square grid to tune.grids")


# ------------------------------------------------------------------------------------ candidates
@dataclasses.dataclass(frozen=True)
class Candidate:
  """One setting of the search. window/order matter only when pruning (else (0, 1), "easy")."""
  prune: bool                 # True: by score inside `window`; False: random images
  window: tuple[float, float]
  order: str                  # select.order inside the window
  grid: tuple[int, int]
  resolution: str             # "full" | "patch"
  crop: str                   # "patch" (inside one cell) | "rrc" (the whole mosaic)

  @property
  def name(self) -> str:
    """e.g. easy0-0.5_g2x2_patch-res_patch-crop; random_g1x1_full-res_patch-crop."""
    sel = f"{self.order}{self.window[0]:g}-{self.window[1]:g}" if self.prune else "random"
    return f"{sel}_g{self.grid[0]}x{self.grid[1]}_{self.resolution}-res_{self.crop}-crop"

  @property
  def cells(self) -> int:
    return self.grid[0] * self.grid[1]

  def view_size(self, image_size: int) -> int:
    """The training view size: the cell at patch resolution, else the stored image size."""
    return image_size // self.grid[0] if self.resolution == "patch" else image_size

  def cost(self, image_size: int) -> tuple[int, int]:
    """The tie-break key: (training view pixels ~ FLOPs per step, grid cells). Every candidate
    stores the same number of images, so its steps are the same; a step's FLOPs scale with the
    view's pixels."""
    return self.view_size(image_size) ** 2, self.cells

  def choice(self) -> dict:
    return {"prune": self.prune, "window": list(self.window), "order": self.order,
            "grid": list(self.grid), "resolution": self.resolution, "crop": self.crop}

  def row(self, index: int, image_size: int, ipc: int) -> dict:
    """The search row's description of this candidate (its results are added by the search)."""
    return {"index": index, "name": self.name, **self.choice(),
            "view_size": self.view_size(image_size), "cost": list(self.cost(image_size)),
            "source_images_per_class": ipc * self.cells}


def candidates(config) -> list[Candidate]:
  """The search, in order: tune.prune x tune.windows (pruned only) x tune.grids x
  tune.resolutions ("patch" for square grids > 1 only) x tune.crops (at 1x1 "patch" and "rrc"
  are the same augmentation, one cell being the whole image: only the first of tune.crops is
  tried). Duplicates are dropped."""
  tune = config.tune
  out: list[Candidate] = []
  for prune in tune.prune:
    windows = [tuple(float(w) for w in win) for win in tune.windows] if prune else [(0.0, 1.0)]
    for window in windows:
      for grid in (tuple(int(g) for g in grid) for grid in tune.grids):
        for res in tune.resolutions:
          if res == "patch" and not grid[0] == grid[1] > 1:
            continue
          for crop in (tune.crops if grid != (1, 1) else tune.crops[:1]):
            c = Candidate(bool(prune), window, config.select.order if prune else "easy", grid,
                          res, crop)
            if c not in out:
              out.append(c)
  return out


def pick_best(rows: Sequence[dict], tolerance: float = 0.0) -> dict:
  """The chosen row (TIE_RULE): among the rows whose val_top1_mean is within `tolerance` points
  of the best, the one with the smallest (cost, index). rows: {"val_top1_mean", "cost",
  "index"} dicts (cost as Candidate.cost, index = position in the search)."""
  if not rows:
    raise ValueError("the tune search has no candidates")
  best = max(float(r["val_top1_mean"]) for r in rows)
  near = [r for r in rows if float(r["val_top1_mean"]) >= best - tolerance]
  return min(near, key=lambda r: (tuple(r["cost"]), int(r["index"])))


# --------------------------------------------------------------------------- the choice, applied
def apply_choice(config, choice: dict):
  """A copy of `config` with a candidate's settings: select.mode ("easy" when pruning, else
  "random"), select.window / select.order, combine.grid, train.resolution, train.crop."""
  c = copy.deepcopy(config)
  c.select.mode = "easy" if choice["prune"] else "random"
  c.select.window = tuple(float(w) for w in choice["window"])
  c.select.order = choice["order"]
  c.combine.grid = tuple(int(g) for g in choice["grid"])
  c.train.resolution = choice["resolution"]
  c.train.crop = choice["crop"]
  return c


def tuned_config(run):
  """The config the stages after tune use: run.config with tune.json's choice applied when
  "tune" is in config.stages, else run.config itself (the default pipeline is unchanged)."""
  if not tuning(run.config):
    return run.config
  return apply_choice(run.config, fs.read_json(run.require("tune.json", "tune"))["choice"])


def selection_pool(run) -> np.ndarray | None:
  """The train examples a tuned run selects from (the train split minus tune/val_indices.npy),
  or None (every example) when the run does not tune."""
  if not tuning(run.config):
    return None
  val = fs.load_npy(run.require("tune/val_indices.npy", "tune"))
  return np.setdiff1d(np.arange(len(run.train_source.labels)), val)


# ---------------------------------------------------------------------------------- the budget
def check_search_budget(config, labels: np.ndarray, num_classes: int, ipc: int,
                        ipc_field: str = "select.ipc") -> None:
  """Up front, from the labels alone: after tune.val_fraction of every class is held out, every
  candidate's ipc x cells images fit in every class (inside its window when pruning). The
  largest budget is checked first, so the error names it."""
  from pca_jax.selection import held_out_counts, window_count
  f = config.tune.val_fraction
  counts = np.bincount(np.asarray(labels), minlength=num_classes)
  held = held_out_counts(counts, f)
  left = counts - held
  for cand in sorted(candidates(config), key=lambda c: -c.cells):
    need = ipc * cand.cells
    have = np.array([window_count(int(n), cand.window) if cand.prune and n else int(n)
                     for n in left])
    if have.min() >= need:
      continue
    c = int(np.argmin(have - need))
    inside = (f" of which the window {cand.window} holds {have[c]}"
              if cand.prune and cand.window != (0.0, 1.0) else "")
    raise ValueError(
        f"tune.val_fraction={f} holds out {held[c]} of class {c}'s {counts[c]} train images, "
        f"leaving {left[c]}{inside}, but candidate {cand.name} needs ipc {ipc} x {cand.cells} "
        f"cells = {need}; lower tune.val_fraction or {ipc_field}, or drop grid "
        f"{cand.grid[0]}x{cand.grid[1]}" + (" / that window" if inside else "") + " from the "
        "search")


def check_tune(run) -> None:
  """The tune stage's up-front check (see check_search_budget) at select.ipc."""
  src = run.train_source
  check_search_budget(run.config, src.labels, src.num_classes, run.config.select.ipc)


# ---------------------------------------------------------------------------------- the search
def _digest(array: np.ndarray | None) -> str | None:
  if array is None:
    return None
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def candidate_trainer_config(run, cand: Candidate, seed: int):
  """config.train for one candidate run: tune.epochs, the candidate's crop, grid and resolution,
  hard labels, no periodic evaluation, its own seed."""
  tc = copy.deepcopy(run.config.train)
  tc.epochs = int(run.config.tune.epochs)
  tc.crop, tc.grid, tc.resolution = cand.crop, cand.grid, cand.resolution
  tc.label_mode = "hard"
  tc.eval_every_epochs = 0
  return run.trainer_config(tc, seed)


def _train_and_validate(run, cand: Candidate, data, val_source, workdir, seed: int,
                        run_fp: str) -> float:
  """Val top-1 (%) of a fresh student trained on one candidate set (checkpoints removed after)."""
  from pca_jax.models.registry import model_from_config
  from pca_jax.training import evaluate, train, variables_of
  from pca_jax.training.views import view_sizes
  cfg = run.config
  mc = candidate_trainer_config(run, cand, seed)
  state, _ = train(mc, workdir, data, None, desc=f"tune {cand.name}", final_eval=False,
                   log=run.log, fingerprint=run_fp, save_final=False)
  _, eval_size, blur_size = view_sizes(mc.train)
  model = model_from_config(cfg.model, val_source.num_classes)
  ev = evaluate(variables_of(state), val_source, model.apply, eval_size=eval_size,
                blur_size=blur_size, crop_fraction=cfg.data.eval_crop_fraction,
                batch_size=cfg.train.eval_batch_size, num_threads=cfg.data.num_threads)
  return float(ev["top1"])


def _seed_results(run, cand: Candidate, data, val, out_dir, search_fp: str,
                  seed_tags: Sequence[str | int]) -> tuple[list[float], list[float]]:
  """(val top-1 per tune seed, wall seconds per seed) of one candidate's set: trained and
  validated once per seed, or read back from runs/<candidate>-s<seed>/row.json when it was made
  under the same search fingerprint (an interrupted search resumes without retraining)."""
  cfg = run.config
  tops, walls = [], []
  for s in cfg.tune.seeds:
    wd = out_dir / "runs" / f"{cand.name}-s{s}"
    run_fp = fingerprint(search_fp, cand.name, int(s))
    row_path = wd / "row.json"
    done = fs.read_json(row_path) if row_path.exists() else {}
    if done.get("fingerprint") != run_fp:
      t1 = time.time()
      # the same student seed for every candidate: a paired comparison (same initialisation,
      # data-order and augmentation streams), and one compiled step per view shape
      seed = rng.derive_seed(cfg.seed, "tune", *seed_tags, int(s))
      top1 = _train_and_validate(run, cand, data, val, wd, seed, run_fp)
      done = {"val_top1": top1, "wall_s": time.time() - t1, "fingerprint": run_fp}
      fs.save_json(row_path, done)
      fs.remove(wd / "checkpoints")  # the score is kept; the model is not needed again
    tops.append(float(done["val_top1"]))
    walls.append(float(done["wall_s"]))
  return tops, walls


def search(run, out_dir, *, ipc: int, scores: np.ndarray | None, val_idx: np.ndarray,
           select_seed: int, seed_tags: Sequence[str | int] = (),
           log: Callable[[str], None] | None = None) -> dict:
  """Builds, trains and validates every candidate; returns {"rows", "choice", "indices",
  "search_wall_s"}.

  out_dir receives sets/<candidate>.npy (the source indices of its set, by class) and
  runs/<candidate>-s<seed>/ (metrics.jsonl, row.json: see _seed_results). scores: [N] over the
  whole train split (None when no candidate prunes); val_idx: the held-out indices;
  select_seed: the selection key's seed (random candidates, order "random"); seed_tags: what
  makes the students' seeds differ from other searches (the benchmark's IPC and seed).
  `indices` holds the chosen candidate's source indices.
  """
  import jax
  from pca_jax.data import pipeline
  from pca_jax.data.sources import IndexSubset
  from pca_jax.selection import select_by_block
  from pca_jax.training import InMemoryData

  log, cfg, out_dir, src = log or run.log, run.config, fs.path(out_dir), run.train_source
  labels, size = np.asarray(src.labels), int(cfg.data.image_size)
  pool = np.setdiff1d(np.arange(len(labels)), val_idx)
  val = IndexSubset(src, val_idx, name=f"{src.name} (tune validation)")
  search_fp = fingerprint("tune search", config_values(cfg, SEARCH_FIELDS),
                          search_train_values(cfg), int(ipc),
                          list(seed_tags), int(select_seed), _digest(scores), _digest(val_idx))
  cands = candidates(cfg)
  rows, indices, trained = [], {}, {}
  t_search = time.time()
  for i, cand in enumerate(cands):
    t0 = time.time()
    idx = select_by_block(apply_choice(cfg, cand.choice()).select,
                          scores if cand.prune else None, labels, ipc * cand.cells,
                          jax.random.key(select_seed), src.num_classes, pool)
    indices[cand.name] = idx
    fs.save_npy(out_dir / "sets" / f"{cand.name}.npy", idx)
    # the same set trained the same way (e.g. windows (0, 1) and (0, 0.5) in easiest-first order
    # when the budget fits in the easier half): the same student, so its result is reused
    same = (_digest(idx), cand.grid, cand.resolution, cand.crop)
    if same in trained:
      earlier = trained[same]
      rows.append({**earlier, "index": i, "name": cand.name, **cand.choice(),
                   "same_as": earlier["name"], "wall_s": time.time() - t0})
      log(f"[tune] {i + 1}/{len(cands)} {cand.name}: the set of {earlier['name']}, val top-1 "
          f"{earlier['val_top1_mean']:.2f}% (not trained again)")
      continue
    images, set_labels = pipeline.mosaics_from_source(src, idx, cand.grid, size, cfg.combine.fit,
                                                      cfg.data.num_threads)
    build_s = time.time() - t0
    tops, walls = _seed_results(run, cand, InMemoryData(images, set_labels, src.num_classes),
                                val, out_dir, search_fp, seed_tags)
    row = {**cand.row(i, size, ipc), "stored_images": int(len(images)),
           "seeds": [int(s) for s in cfg.tune.seeds], "val_top1": tops,
           "val_top1_mean": float(np.mean(tops)), "wall_s": build_s + float(np.sum(walls))}
    rows.append(row)
    trained[same] = row
    log(f"[tune] {i + 1}/{len(cands)} {cand.name}: val top-1 {row['val_top1_mean']:.2f}% "
        f"({row['wall_s']:.1f}s)")
  choice = pick_best(rows, float(cfg.tune.tie_tolerance))
  for r in rows:
    r["chosen"] = r["name"] == choice["name"]
  return {"rows": rows, "choice": choice, "indices": indices[choice["name"]],
          "search_wall_s": time.time() - t_search}


def search_csv(rows: Sequence[dict]) -> str:
  """search.csv: one line per candidate, the val top-1 of every seed in its own column."""
  seeds = rows[0]["seeds"] if rows else []
  fields = ["index", "name", "prune", "window_lo", "window_hi", "order", "grid", "resolution",
            "crop", "view_size", *[f"val_top1_s{s}" for s in seeds], "val_top1_mean", "wall_s",
            "chosen"]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
  w.writeheader()
  for r in rows:
    w.writerow({**r, "window_lo": r["window"][0], "window_hi": r["window"][1],
                "grid": f"{r['grid'][0]}x{r['grid'][1]}",
                **{f"val_top1_s{s}": t for s, t in zip(seeds, r["val_top1"])}})
  return buf.getvalue()


def search_markdown(tune: dict) -> list[str]:
  """The search table of results.md, from tune.json's content."""
  lines = ["| candidate | prune | window | grid | resolution | crops | val top-1 % per seed | "
           "mean | wall s |", "|---|---|---|---|---|---|---|---|---|"]
  for r in tune["candidates"]:
    mark = "**" if r["chosen"] else ""
    window = f"{r['window'][0]:g}-{r['window'][1]:g} {r['order']}" if r["prune"] else "-"
    lines.append(
        f"| {mark}{r['name']}{mark} | {'score' if r['prune'] else 'random'} | {window} | "
        f"{r['grid'][0]}x{r['grid'][1]} | {r['resolution']} | {r['crop']} | "
        f"{' / '.join(f'{t:.1f}' for t in r['val_top1'])} | {mark}{r['val_top1_mean']:.2f}{mark}"
        f" | {r['wall_s']:.1f} |")
  return lines


# ----------------------------------------------------------------------------------- the stage
def tune_needs(config) -> tuple[str, ...]:
  """The score stage when some candidate prunes."""
  return ("score",) if any(config.tune.prune) else ()


def stage_tune(run, stage) -> dict:
  """Holds out the validation split, runs the search, writes tune/search.csv and tune.json."""
  import jax
  from pca_jax.config import select_score
  from pca_jax.pca.score import selection_scores
  from pca_jax.selection import validation_split

  cfg = run.config
  labels = np.asarray(run.train_source.labels)
  val_idx = validation_split(labels, cfg.tune.val_fraction,
                             jax.random.key(rng.derive_seed(cfg.seed, "tune val")))
  fs.save_npy(run.path("tune", "val_indices.npy"), val_idx)
  pruned = any(cfg.tune.prune)
  scores = selection_scores(run, cfg) if pruned else None
  # the select stage's key: the chosen candidate's set is the set the select stage builds
  result = search(run, run.path("tune"), ipc=cfg.select.ipc, scores=scores, val_idx=val_idx,
                  select_seed=rng.derive_seed(cfg.seed, "select"))
  choice = result["choice"]
  fs.save_text(run.path("tune", "search.csv"), search_csv(result["rows"]))
  out = {"val_fraction": cfg.tune.val_fraction, "val_examples": int(len(val_idx)),
         "train_examples": int(len(labels) - len(val_idx)), "ipc": cfg.select.ipc,
         "score": select_score(cfg) if pruned else None, "epochs": cfg.tune.epochs,
         "seeds": list(cfg.tune.seeds), "tie_tolerance": cfg.tune.tie_tolerance,
         "tie_rule": TIE_RULE, "candidates": result["rows"], "choice": choice,
         "search_wall_s": result["search_wall_s"]}
  fs.save_json(run.path("tune.json"), out)
  run.log(f"[tune] chose {choice['name']} (val top-1 {choice['val_top1_mean']:.2f}%) of "
          f"{len(result['rows'])} candidates in {result['search_wall_s']:.1f}s")
  return {"choice": choice["name"], "val_top1": choice["val_top1_mean"],
          "candidates": len(result["rows"]), "val_examples": out["val_examples"],
          "search_wall_s": result["search_wall_s"]}


# ------------------------------------------------------------------------- the benchmark's set
def build_auto_set(run, scores: np.ndarray, ipc: int, seed: int) -> tuple[Any, ...]:
  """The benchmark's pca_auto set at `ipc` for benchmark seed `seed`: its own validation split
  and search (benchmark/tune/pca_auto-ipc<ipc>-s<seed>/), then the chosen candidate's set.
  Returns (images, labels, source indices, manifest extras: the stored grid and the search)."""
  import jax
  from pca_jax.data import pipeline
  from pca_jax.selection import validation_split

  cfg = run.config
  out_dir = run.path("benchmark", "tune", f"pca_auto-ipc{ipc}-s{seed}")
  src = run.train_source
  val_idx = validation_split(src.labels, cfg.tune.val_fraction,
                             jax.random.key(rng.derive_seed(cfg.seed, "pca_auto val", seed)))
  fs.save_npy(out_dir / "val_indices.npy", val_idx)
  result = search(run, out_dir, ipc=ipc, scores=scores, val_idx=val_idx,
                  select_seed=rng.derive_seed(cfg.seed, "pca_auto set", seed),
                  seed_tags=("pca_auto", int(ipc), int(seed)))
  choice, idx = result["choice"], result["indices"]
  fs.save_text(out_dir / "search.csv", search_csv(result["rows"]))
  images, labels = pipeline.mosaics_from_source(src, idx, tuple(choice["grid"]),
                                                cfg.data.image_size, cfg.combine.fit,
                                                cfg.data.num_threads)
  tune = {"choice": choice, "search_wall_s": result["search_wall_s"],
          "val_fraction": cfg.tune.val_fraction, "val_examples": int(len(val_idx)),
          "val_indices": f"benchmark/tune/{out_dir.name}/val_indices.npy",
          "candidates": [{k: r[k] for k in ("name", "val_top1", "val_top1_mean", "wall_s")}
                         for r in result["rows"]]}
  return images, labels, idx, {"grid": list(choice["grid"]), "tune": tune}
